"""Per-step cost of SolverzooScheduler in a diffusers-pipeline loop vs ``sz.sample``, same model, one run.

Both contenders sample (1, 3, 16, 16) images with a tiny random UNet2DModel on CPU (one thread)
over the same grid with the same solver:

* ``sample``: the zoo's own path: ``sz.get_grid`` + ``sz.sample`` on the wrapped network
  (``solverzoo.diffusers.diffusers_model``);
* ``scheduler``: what a diffusers pipeline runs: ``set_timesteps`` then, per timestep,
  ``scale_model_input``, the network, ``step`` (a fresh run each repeat; the tape recorded for
  this shape is reused across runs, as in a pipeline called repeatedly).

Contenders run interleaved (order alternating each repeat, garbage collector paused while timing)
on the thread's CPU clock. Reported: the median per-step time of each, and the median of the
per-repeat ratio scheduler / sample with a distribution-free 95% interval (order statistics of
the paired ratios). Target: ratio at most 1.25.

    .venv/bin/python benchmarks/scheduler_overhead.py [--steps 20] [--repeats 30] \
        [--out benchmarks/results/scheduler_overhead.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time

import diffusers
import torch

import solverzoo as sz
from solverzoo.diffusers import SolverzooScheduler, diffusers_model

SHAPE = (1, 3, 16, 16)
TARGET = 1.25
CASES = (("dpmpp_2m", "karras", {}), ("heun", "karras", {}), ("unipc", None, {}), ("euler_ancestral", "trailing", {}))


def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                                 norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()


def contenders(unet, base, solver, grid, opts, steps):
    sched = SolverzooScheduler.from_config(base.config, solver=solver, grid=grid, solver_options=opts)
    sched.set_timesteps(steps)
    model = diffusers_model(unet, base.config)
    den = model.denoiser()
    zoo_grid = sched._grid  # the same grid for both

    def pipeline_loop():
        g = torch.Generator().manual_seed(0)
        sched.set_timesteps(steps)
        x = torch.randn(SHAPE, generator=g) * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(sched.scale_model_input(x, t), t).sample
                x = sched.step(out, t, x, generator=g).prev_sample
        return x

    def zoo():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SHAPE, generator=g)
        grid_t = sz.get_grid("explicit")(model.schedule, len(zoo_grid) - 1, times=tuple(zoo_grid.tolist()))
        with torch.no_grad():
            return sz.sample(solver, den, x, grid_t, generator=g, **opts).x
    evals = len(sched.timesteps)
    return pipeline_loop, zoo, evals


def measure(a, b, evals, repeats):
    for f in (a, b):
        for _ in range(3):
            f()
    diff = float((a() - b()).abs().max())
    ta, tb = [], []
    for r in range(repeats):
        gc.collect()
        gc.disable()
        try:
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                f = (a, b)[which]
                t0 = time.thread_time()
                f()
                (ta, tb)[which].append((time.thread_time() - t0) / evals)
        finally:
            gc.enable()
    ratios = sorted(x / y for x, y in zip(ta, tb))
    n = len(ratios)
    k = max(0, int(math.floor(n / 2 - 1.96 * math.sqrt(n) / 2)))  # order-statistic CI of the median
    return {"scheduler_us_per_eval": statistics.median(ta) * 1e6, "sample_us_per_eval": statistics.median(tb) * 1e6,
            "ratio_median": statistics.median(ratios), "ratio_ci95": [ratios[k], ratios[min(n - 1, n - 1 - k)]],
            "max_abs_difference": diff}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/scheduler_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    unet = _unet()
    base = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                   set_alpha_to_one=True)
    rows = []
    print(f"{'solver':<16} {'grid':<9} {'evals':>5} {'scheduler us':>13} {'sample us':>10} {'ratio':>6}  95% interval"
          "   max|diff|")
    for solver, grid, opts in CASES:
        a, b, evals = contenders(unet, base, solver, grid, opts, args.steps)
        res = measure(a, b, evals, args.repeats)
        res.update(solver=solver, grid=grid or "base (DDIM leading)", evals=evals, meets_target=res["ratio_median"] <= TARGET)
        rows.append(res)
        lo, hi = res["ratio_ci95"]
        print(f"{solver:<16} {str(grid):<9} {evals:>5} {res['scheduler_us_per_eval']:>13.1f} {res['sample_us_per_eval']:>10.1f} "
              f"{res['ratio_median']:>6.3f}  [{lo:.3f}, {hi:.3f}]  {res['max_abs_difference']:.2g}"
              f"{'' if res['meets_target'] else f'  (misses the {TARGET} target)'}")
    result = {"benchmark": "scheduler_overhead", "shape": SHAPE, "steps": args.steps, "repeats": args.repeats,
              "what": "median thread-CPU time per model evaluation: SolverzooScheduler in a pipeline-style loop "
                      "(set_timesteps, scale_model_input, UNet, step) vs sz.get_grid + sz.sample on the same wrapped UNet; "
                      "ratio = per-repeat paired scheduler / sample, median and order-statistic 95% interval",
              "target": f"ratio <= {TARGET}", "rows": rows, "load_average_1_5_15_min": list(os.getloadavg()),
              "versions": {"solverzoo": sz.__version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
                           "python": platform.python_version()},
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": 1,
              "command": f"python benchmarks/scheduler_overhead.py --steps {args.steps} --repeats {args.repeats}"}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
