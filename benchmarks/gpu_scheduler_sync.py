"""No host-device synchronisation per step: SolverzooScheduler's ``step`` on CUDA.

Runs a pipeline-style loop (``set_timesteps``; per timestep ``scale_model_input``, a tiny random
UNet2DModel, ``step``) on CUDA for several solvers. Every ``scale_model_input`` and ``step`` call
runs under ``torch.cuda.set_sync_debug_mode("error")``, so one synchronising call (``.item()``, a
device-to-host copy, ``nonzero`` ...) inside the scheduler raises; the network is called outside
that mode (its own syncs, if any, are not the scheduler's). A second pass counts the syncs the
whole loop makes in ``"warn"`` mode (network included), for information. It also checks that the
CUDA result equals ``sz.sample`` on the same wrapped network.

Case ``ddpm (CPU generator)`` is informational: the zoo draws step noise on the generator's device
(so CPU-seeded noise is the same on every device) and moves it, a host-to-device copy per step;
pass a CUDA generator to avoid it.

Needs only torch, diffusers and solverzoo; finishes in well under 60 s on one GPU.

    python benchmarks/gpu_scheduler_sync.py
"""
from __future__ import annotations

import json
import sys
import time
import warnings

import torch

CASES = (("dpmpp_2m", "karras", "none"), ("heun", "karras", "none"), ("unipc", None, "none"), ("rk4", "trailing", "none"),
         ("euler_ancestral", "trailing", "cuda"), ("dpmpp_2m_sde", "karras", "cuda"), ("ddpm", None, "cpu"))


def _loop(sched, unet, x, gen, strict: bool):
    """The pipeline loop; scheduler calls under sync-debug 'error' when strict."""
    for t in sched.timesteps:
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            inp = sched.scale_model_input(x, t)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        out = unet(inp, t).sample
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            x = sched.step(out, t, x, generator=gen).prev_sample
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return x


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_scheduler_sync", "skipped": "CUDA is not available"}))
        return 0
    import diffusers

    import solverzoo as sz
    from solverzoo.diffusers import SolverzooScheduler, diffusers_model

    dev = torch.device("cuda")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                                 norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval().to(dev)
    base = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                   set_alpha_to_one=True)
    rows, ok = [], True
    t_start = time.perf_counter()
    for solver, grid, gen_kind in CASES:
        sched = SolverzooScheduler.from_config(base.config, solver=solver, grid=grid)
        sched.set_timesteps(10, device=dev)
        make_gen = {"none": lambda: None, "cuda": lambda: torch.Generator(dev).manual_seed(1),
                    "cpu": lambda: torch.Generator().manual_seed(1)}[gen_kind]
        x = torch.randn((2, 4, 16, 16), generator=torch.Generator(dev).manual_seed(0), device=dev)
        row = {"solver": solver, "grid": grid or "base", "generator": gen_kind, "evaluations": len(sched.timesteps)}
        with torch.no_grad():
            try:
                ours = _loop(sched, unet, x, make_gen(), strict=gen_kind != "cpu")
                row["scheduler_syncs"] = 0 if gen_kind != "cpu" else "not checked (CPU generator)"
            except RuntimeError as exc:
                row["scheduler_syncs"] = f"ERROR: {exc}".splitlines()[0]
                ok = False
                rows.append(row)
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    sched.set_timesteps(10, device=dev)
                    _loop(sched, unet, x, make_gen(), strict=False)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            row["whole_loop_sync_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
            den = diffusers_model(unet, base.config).denoiser()
            ref = sz.sample(solver, den, x, sched._grid, generator=make_gen()).x
            row["max_abs_diff_vs_sz_sample"] = float((ours - ref).abs().max())
        rows.append(row)
    result = {"benchmark": "gpu_scheduler_sync", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "rows": rows, "wall_s": round(time.perf_counter() - t_start, 1),
              "passed": ok}
    for r in rows:
        print(r)
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
