"""Per-step solver overhead, model excluded, vs the diffusers counterpart, on CPU.

Each solver samples (1, 4, 32, 32) latents over a 50-step grid with a zero-cost model (the
network returns a precomputed tensor), so the time is the solver's own work: grid/coefficient
setup, parametrisation conversion and the update. The floor is a bare ``x = a*x + b*out``
loop. Timings interleave the contenders and report medians over repeats; ratios come from
one run on one machine.

    .venv/bin/python benchmarks/solver_overhead.py [--steps 50] [--repeats 30] [--out benchmarks/results/solver_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import diffusers
import solverzoo as sz

SHAPE = (1, 4, 32, 32)
KW = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _const_net(out):
    return lambda x, t, **c: out


def ours(name, steps, out, **opts):
    """(setup, loop): setup builds the grid and the solver's plan; loop samples."""
    sched = sz.get_schedule("ddpm", **KW)
    den = sz.Model(_const_net(out), "epsilon", sched).denoiser()
    solver = sz.get_solver(name)

    def setup():
        grid = sz.get_grid("leading")(sched, steps)
        return grid, solver.plan(sched, grid, **opts)

    def loop(state):
        grid, plan = state
        with torch.no_grad():
            return solver.loop(den, torch.zeros(SHAPE), grid, plan)
    return setup, loop


def peer(cls, steps, out, **cfg):
    sched = cls(**KW, **cfg)

    def setup():
        sched.set_timesteps(steps)  # also resets the scheduler's multistep state
        return sched

    def loop(sched):
        x = torch.zeros(SHAPE)
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.scale_model_input(x, t)  # part of every diffusers sampling loop (identity or a rescale)
                x = sched.step(out, t, x).prev_sample
        return x
    return setup, loop


def floor(steps, out):
    def loop(_):
        x = torch.zeros(SHAPE)
        for _ in range(steps):
            x = (x * 0.99).add_(out, alpha=0.01)
        return x
    return (lambda: None), loop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/solver_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    n = args.steps
    pairs = {
        "ddim": (ours("ddim", n, out), peer(diffusers.DDIMScheduler, n, out, clip_sample=False, timestep_spacing="leading")),
        "dpmpp_2m": (ours("dpmpp_2m", n, out), peer(diffusers.DPMSolverMultistepScheduler, n, out, timestep_spacing="leading")),
        "unipc": (ours("unipc", n, out), peer(diffusers.UniPCMultistepScheduler, n, out, timestep_spacing="leading")),
        "euler": (ours("euler", n, out), peer(diffusers.EulerDiscreteScheduler, n, out, timestep_spacing="leading")),
    }
    fns = {"floor": floor(n, out), **{f"{k}/solverzoo": v[0] for k, v in pairs.items()},
           **{f"{k}/diffusers": v[1] for k, v in pairs.items()}}
    for setup, loop in fns.values():  # warm up
        loop(setup())
    per_step = {k: [] for k in fns}
    setup_s = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, (setup, loop) in fns.items():
            t0 = time.perf_counter()
            state = setup()
            t1 = time.perf_counter()
            loop(state)
            t2 = time.perf_counter()
            setup_s[k].append(t1 - t0)
            per_step[k].append((t2 - t1) / n)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    med_setup = {k: statistics.median(v) for k, v in setup_s.items()}
    rows = []
    for k in pairs:
        o, p = med[f"{k}/solverzoo"], med[f"{k}/diffusers"]
        rows.append({"solver": k, "solverzoo_us_per_step": o * 1e6, "diffusers_us_per_step": p * 1e6,
                     "ratio_to_diffusers": o / p, "solverzoo_over_floor": o / med["floor"],
                     "diffusers_over_floor": p / med["floor"], "target_ratio_max": 0.25, "meets_target": o / p <= 0.25,
                     "solverzoo_setup_us": med_setup[f"{k}/solverzoo"] * 1e6,
                     "diffusers_setup_us": med_setup[f"{k}/diffusers"] * 1e6})
    result = {"benchmark": "solver_overhead", "shape": SHAPE, "steps": n, "repeats": args.repeats,
              "what": "median per-step time of the sampling loop with a zero-cost model (setup timed separately: "
                      "grid + plan for solverzoo, set_timesteps for diffusers)",
              "floor_us_per_step": med["floor"] * 1e6, "rows": rows,
              "versions": {"solverzoo": sz.__version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
                           "python": platform.python_version()},
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": 1,
              "command": "python benchmarks/solver_overhead.py --steps %d --repeats %d" % (n, args.repeats)}
    print(f"floor (axpby): {med['floor'] * 1e6:.1f} us/step")
    print(f"{'solver':<10} {'solverzoo us':>13} {'diffusers us':>13} {'ratio':>7} {'ours/floor':>11} {'peer/floor':>11} {'setup us (ours/peer)':>22}")
    for r in rows:
        print(f"{r['solver']:<10} {r['solverzoo_us_per_step']:>13.1f} {r['diffusers_us_per_step']:>13.1f} "
              f"{r['ratio_to_diffusers']:>7.3f} {r['solverzoo_over_floor']:>11.1f} {r['diffusers_over_floor']:>11.1f}"
              f" {r['solverzoo_setup_us']:>10.0f}/{r['diffusers_setup_us']:<10.0f}"
              f"{'' if r['meets_target'] else '   (misses the 0.25 target)'}")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
