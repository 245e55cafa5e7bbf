"""Sampling images from a backbone: the code behind ``solverzoo sample`` and the evaluations."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from solverzoo import seeds as seed_policy
from solverzoo.backbone import Backbone
from solverzoo.guidance import GuidedDenoiser
from solverzoo.noise import generators
from solverzoo.registry import registry
from solverzoo.sampling import initial_noise, sample


class UnmetNeedsError(ValueError):
    """The solver / grid asks for something the model cannot provide."""


@dataclass
class Generated:
    images: Tensor  # (B, C, H, W) in [-1, 1]
    latents: Tensor
    nfe: int
    wall_s: float
    sampling_s: float
    reference: Tensor | None = None  # DOP853 solve of the same ODE from the same noise (reference=True)
    backbone_evals: float = 0.0  # full-network-equivalent evaluations per sample actually computed (= nfe without a cache)
    reference_s: float = 0.0  # time of the reference solves (an exact metric's cost, not sampling)
    times: Tensor | None = None  # the time grid the solver ran on (its first and last times fix the ODE's interval)


def check_needs(bb: Backbone, solver, grid: Tensor) -> None:
    a0 = float(bb.model.schedule.alpha(grid[:1].to(torch.float64))[0])
    if bb.model.prediction == "epsilon" and "x0" in solver.needs:
        if a0 == 0.0:
            raise UnmetNeedsError(
                f"solver {solver.name!r} needs x0 at the first grid time, where alpha = 0 and the epsilon-prediction "
                f"model {bb.name!r} cannot give it; start the grid below t_max (e.g. the 'karras' or 'logsnr' grid)")
        if a0 < 1e-3:
            import warnings

            warnings.warn(f"the grid starts where alpha = {a0:.1e}: an epsilon-prediction model's x0 = (x - sigma eps) / alpha "
                          f"amplifies its error {1 / a0:.0f}x there (e.g. the cosine schedule's last timestep); "
                          "consider a grid that starts lower, such as 'leading'", stacklevel=3)


def generate(bb: Backbone, prompts: Sequence, *, solver: str = "dpmpp_2m", steps: int = 20, grid: str | None = None,
             grid_options: dict | None = None, guidance: str | None = "cfg", scale: float = 4.0,
             negative_prompts: Sequence | None = None, seeds: Sequence[int] | None = None, device: str = "cpu",
             solver_options: dict | None = None, batch_size: int = 64, progress: bool = False,
             reference: bool = False, cache: str | None = None, cache_options: dict | None = None) -> Generated:
    """Sample one image per prompt with per-sample seeds (``seeds[i]`` for image i: its starting
    noise, and :func:`solverzoo.seeds.step_noise_seed` of it for a stochastic solver's steps);
    ``cache`` names a registered cache (a fresh session per batch)."""
    t0 = time.perf_counter()
    solver_obj = registry.get("solver", solver)
    grid_name = grid or bb.default_grid
    opts = dict(bb.default_grid_options if grid is None else {}, **(grid_options or {}))
    times = registry.get("grid", grid_name)(bb.model.schedule, steps, **opts)
    check_needs(bb, solver_obj, times)
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    outs, refs, nfe, samp, evals, ref_s = [], [], 0, 0.0, 0.0, 0.0
    starts = range(0, len(prompts), batch_size)
    if progress:
        import sys

        from tqdm import tqdm

        starts = tqdm(starts, desc="cell", unit="batch", leave=False, file=sys.stderr)
    for i in starts:
        p = list(prompts[i:i + batch_size])
        s = seeds[i:i + batch_size]
        neg = None if negative_prompts is None else list(negative_prompts[i:i + batch_size])
        conds = {k: {kk: vv.to(device) for kk, vv in c.items()} for k, c in bb.conds(p, neg).items()}
        if guidance is None:
            den = bb.model.denoiser(conds["cond"])
        else:
            den = GuidedDenoiser(bb.model, registry.get("guidance", guidance)(scale=scale), conds)
        x = initial_noise(bb.model.schedule, times[0], (len(p),) + tuple(bb.latent_shape), generators(s), device=device)
        step_gens = generators([seed_policy.step_noise_seed(k) for k in s])
        with torch.no_grad():
            res = sample(solver_obj, den, x, times, generator=step_gens, cache=cache, cache_options=cache_options,
                         **(solver_options or {}))
        outs.append(res.x)
        evals += res.backbone_evals * len(p) / len(prompts)
        nfe = res.nfe  # per batch: identical for every batch
        if reference:  # the same (guided) ODE, same start and end, solved to high precision
            t_ref = time.perf_counter()
            # the plain network: a harness timing wrapper (``__wrapped__``) must not count this as sampling
            plain = getattr(bb.model.net, "__wrapped__", bb.model.net)
            with torch.no_grad():
                refs.append(sample("dop853", den.with_net(plain), x.double(), times).x.to(res.x.dtype))
            ref_s += time.perf_counter() - t_ref
        samp += res.wall_s
    lat = torch.cat(outs)
    images = torch.cat([bb.decode(lat[i:i + 256]) for i in range(0, len(lat), 256)])
    return Generated(images, lat, nfe, time.perf_counter() - t0, samp, torch.cat(refs) if refs else None, evals, ref_s,
                     times)


def _denoiser(bb: Backbone, prompts: Sequence, guidance: str | None, scale: float, device: str):
    """The (guided) denoiser of ``prompts``, as :func:`generate` builds it."""
    conds = {k: {kk: vv.to(device) for kk, vv in c.items()} for k, c in bb.conds(list(prompts)).items()}
    if guidance is None:
        return bb.model.denoiser(conds["cond"])
    return GuidedDenoiser(bb.model, registry.get("guidance", guidance)(scale=scale), conds)


def converged_solve(bb: Backbone, prompts: Sequence, *, seeds: Sequence[int], guidance: str | None, scale: float,
                    t_start: float, t_end: float, method: str = "dop853", options: dict | None = None,
                    device: str = "cpu", batch_size: int = 64) -> tuple[Tensor, dict]:
    """The converged solve of the same (guided) probability-flow ODE a cell integrates, from the
    same starting noise (``seeds[i]``, :func:`solverzoo.sampling.initial_noise` at ``t_start``) and
    prompts, to ``t_end``, batch by batch (:func:`solverzoo.bench.converged.solve`).

    ``options``: ``rtol``/``atol`` for ``"dop853"``; ``steps``, ``spacing`` and ``dtype``
    (``"float32"``/``"float64"``; a float64 solve of a network runs a float64 copy of it) for a
    fixed-step solver. ``spacing="auto"``: uniform in log-SNR where it is finite at both ends,
    else uniform in t.

    Returns:
        ``(latents, info)``: ``info`` aggregates the batches (``own_error_rms`` over all
        elements, ``own_error_median`` over samples, ``nfe`` per sample, ``wall_s``) and keeps
        ``own_error_per_sample``.
    """
    import copy
    import math

    from solverzoo.bench import converged

    opts = dict(options or {})
    dtype = {"float32": torch.float32, "float64": torch.float64}[opts.pop("dtype", "float64")]
    if method != "dop853" and opts.get("spacing", "auto") == "auto":
        lam = bb.model.schedule.lam(torch.tensor([t_start, t_end], dtype=torch.float64))
        opts["spacing"] = "logsnr" if bool(torch.isfinite(lam).all()) else "linspace"
    net = bb.model.net
    plain = getattr(net, "__wrapped__", net)  # never a harness timing wrapper
    if dtype == torch.float64 and isinstance(plain, torch.nn.Module):
        plain = copy.deepcopy(plain).double()
    t0 = time.perf_counter()
    xs, per, sq, nfe, parts = [], [], 0.0, 0, []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i:i + batch_size]), list(seeds[i:i + batch_size])
        den = _denoiser(bb, p, guidance, scale, device).with_net(plain)
        x = initial_noise(bb.model.schedule, torch.tensor(float(t_start), dtype=torch.float64),
                          (len(p),) + tuple(bb.latent_shape), generators(s), device=device)
        with torch.no_grad():
            xr, info = converged.solve(den, x, float(t_start), float(t_end), method=method, dtype=dtype, **opts)
        xs.append(xr.float())
        per.extend(info.get("own_error_per_sample", [math.nan] * len(p)))
        sq += float(info.get("own_error_rms", math.nan)) ** 2 * len(p)
        nfe = info["nfe"]
        parts.append(info)
    first = parts[0]
    per_part = ("wall_s", "own_error_rms", "own_error_median", "own_error_per_sample", "nfe")
    info = {k: v for k, v in first.items() if k not in per_part}
    info.update(nfe=nfe, own_error_rms=math.sqrt(sq / len(prompts)), own_error_median=float(torch.tensor(per).median()),
                own_error_per_sample=[float(v) for v in per], dtype=str(dtype).replace("torch.", ""),
                wall_s=time.perf_counter() - t0, batch_size=batch_size)
    return torch.cat(xs), info


DEFAULT_CONVERGED = {"method": "dpmpp_3m", "steps": 24, "spacing": "auto", "dtype": "float32", "observed_order": True,
                     "exact_method": "dop853", "rtol": 1e-10, "atol": 1e-10}
"""``metrics.converged`` when a config has none: DOP853 at tight tolerances on exact (analytic)
worlds, else a fixed-step solver at ``steps`` and ``2 * steps`` steps (step doubling)."""


def converged_plan(bb, m: dict) -> tuple[str, dict]:
    """The converged solve's method and options under ``metrics.converged`` (``m``): DOP853 on exact worlds."""
    c = {**DEFAULT_CONVERGED, **(m.get("converged") or {})}
    if bb.world.exact:
        return c["exact_method"], {"rtol": float(c["rtol"]), "atol": float(c["atol"])}
    return c["method"], {"steps": int(c["steps"]), "spacing": c["spacing"], "dtype": c["dtype"],
                         "observed_order": bool(c.get("observed_order", True))}


def converged_label(info: dict) -> str:
    """One line naming a converged solve's method and settings (its record's ``converged_method``)."""
    if info.get("method") == "dop853":
        return f"dop853 rtol={info.get('rtol'):g} atol={info.get('atol'):g} float64"
    return (f"{info.get('method')} {info.get('steps')} steps (step-doubled from {int(info.get('steps', 0)) // 2}, "
            f"order used {float(info.get('order_used', info.get('order', 0))):.2f}), {info.get('spacing')} spacing, "
            f"{info.get('dtype', 'float64')}")
