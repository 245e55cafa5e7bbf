"""Optimised time grids: choose where a solver's steps fall for one model, solver and NFE.

:func:`optimise_grid` minimises, on a calibration set (its own seeds and prompts, never the
benchmark's), the mean endpoint error of ``solver`` on ``steps`` steps against a reference
solve of the same (guided) probability-flow ODE from the same noise: DOP853 for analytic
backbones, a many-step run of a second-order solver otherwise. This is the criterion of
"Align Your Steps" (Sabour et al., 2024) and GITS (Chen et al., 2024) in its plainest form:
the discrepancy to a fine reference trajectory at the end point, optimised directly for the
solver that will use the grid.

The grid's interior points are ``t_i = t_start - u_i (t_start - t_end)`` with
``u = cumsum(softmax(theta))``, so every candidate is strictly decreasing with the start and
end of the base grid; ``theta`` starts at the best built-in grid (its exact image) and is
refined with Powell's derivative-free method. The result is saved as JSON (times in float64,
the objective before and after, the calibration set and versions) and served by the
``optimised`` grid plugin by key: ``grid: {name: optimised, key: gmm-dpmpp_2m-none}``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from solverzoo.calibrate import Problem, from_backbone, optimise, unit_theta, unit_times
from solverzoo.saved_grids import save, schedule_signature
from solverzoo.seeds import CALIBRATION_SEED
from solverzoo.timegrid import GridError

BUILTIN_CANDIDATES = ("karras", "logsnr", "flow_shift", "linspace", "trailing", "leading")


# the parametrisation and the problem live in the library (any model, not only backbones)
_times, _theta = unit_times, unit_theta


class Calibration(Problem):
    """The calibration problem of a registered backbone: its world's calibration prompts and seeds,
    optional guidance, DOP853 references on exact (analytic) backbones and Heun ones otherwise, both
    stopping at ``t_min`` and taking the final jump explicitly (see :mod:`solverzoo.calibrate`)."""

    def __init__(self, bb, solver: str, *, guidance: str | None, scale: float, n: int, batch: int = 256,
                 reference_steps: int = 200, device: str = "cpu", space: str = "latent", criterion: str = "mean",
                 solver_options: dict | None = None, max_reference_evals: int = 100_000):
        cal = from_backbone(bb, n=n, guidance=guidance, scale=scale, space=space, batch=batch, device=device)
        super().__init__(cal, solver, solver_options=solver_options, criterion=criterion, reference_steps=reference_steps,
                         max_reference_evals=max_reference_evals)
        self.bb, self.space = bb, space


def _scored_candidates(cal: Calibration, bb, k: int, base_grid: str) -> list[tuple]:
    """``(score, median, grid, options, times)`` of each candidate built-in grid, best first."""
    from solverzoo.registry import registry

    default = (bb.default_grid, dict(bb.default_grid_options))
    if base_grid == "auto":
        cands = [(g, {}) for g in BUILTIN_CANDIDATES] + [default]
    else:
        cands = [default] if base_grid == "default" else [(base_grid, {})]
    scored = []
    for g, opts in cands:
        try:
            times = registry.get("grid", g)(bb.model.schedule, int(k), **opts).numpy()
        except (GridError, ValueError):
            continue
        e = cal.errors(times)
        scored.append((cal.score(e), float(np.median(e)), g, opts, times))
    if not scored:
        raise GridError(f"no starting grid {base_grid!r} gives a {k}-step grid on this backbone's schedule")
    return sorted(scored, key=lambda s: s[0])


def optimise_grid(backbone: str, solver: str, steps: Sequence[int], *, guidance: str | None = None, scale: float = 1.0,
                  base_grid: str = "auto", n: int = 256, max_evals: int = 300, key: str | None = None,
                  out_dir: str | Path | None = None, device: str = "cpu", space: str = "latent", criterion: str = "mean",
                  solver_options: dict | None = None, max_reference_evals: int = 100_000,
                  log=print) -> tuple[Path, dict]:
    """Optimise grids for ``solver`` on ``backbone`` at each step count; save them under ``key``.
    ``criterion`` is ``mean`` or ``median`` of the per-sample errors; a reference solve that needs
    more than ``max_reference_evals`` model evaluations stops with an EvaluationBudgetError."""
    from solverzoo import __version__
    from solverzoo.backbone import load_backbone

    bb = load_backbone(backbone, device)
    guidance = None if guidance in (None, "none") else guidance
    key = key or f"{backbone}-{solver}-{guidance or 'none'}{'' if guidance is None else f'{scale:g}'}"
    cal = Calibration(bb, solver, guidance=guidance, scale=scale, n=n, device=device, space=space, criterion=criterion,
                      solver_options=solver_options, max_reference_evals=max_reference_evals)
    data = {"key": key, "backbone": backbone, "backbone_weights": bb.weights_id, "solver": solver,
            "guidance": guidance or "none", "scale": float(scale) if guidance else 1.0,
            "schedule": schedule_signature(bb.model.schedule), "grids": {}, "runs": {},
            "criterion": f"{criterion} over the calibration set of the RMS endpoint error vs the reference solve ({space} space)",
            "solver_options": dict(solver_options or {}),
            "calibration": {"n": n, "noise_seeds": f"{CALIBRATION_SEED} + i", "prompts": "world draw, seed "
                            f"{CALIBRATION_SEED}", "reference": cal.reference_kind + ", to t_min then the final jump"}}
    for k in steps:
        t0 = time.perf_counter()
        scored = _scored_candidates(cal, bb, int(k), base_grid)
        best, best_median, g, opts, times = scored[0]
        res = optimise(cal, times, max_evals=max_evals)
        data["grids"][str(int(k))] = [float(v) for v in res["times"]]
        data["runs"][str(int(k))] = {
            "base_grid": g, "base_grid_options": opts, "base_times": [float(v) for v in times],
            "builtin_scores": {s[2] + (f"({', '.join(f'{a}={b}' for a, b in sorted(s[3].items()))})" if s[3] else ""):
                               {f"{criterion}_error": s[0], "median_error": s[1]} for s in scored},
            f"{criterion}_error_before": best, f"{criterion}_error_after": res["score_after"],
            "median_error_before": best_median, "median_error_after": res["median_after"],
            "objective_evals": res["evals"], "seconds": round(time.perf_counter() - t0, 1)}
        r = data["runs"][str(int(k))]
        log(f"{key} {k} steps: base {g} {criterion} error {best:.4g} -> {res['score_after']:.4g} "
            f"(median {best_median:.4g} -> {r['median_error_after']:.4g}) in {r['objective_evals']} evaluations, "
            f"{r['seconds']} s")
    data["versions"] = {"solverzoo": __version__, "torch": torch.__version__}
    data["command"] = (f"solverzoo optimise-grid --backbone {backbone} --solver {solver} --steps {' '.join(map(str, steps))} "
                       f"--guidance {guidance or 'none'} --scale {scale:g} --n {n} --max-evals {max_evals} "
                       f"--space {space} --key {key}")
    path = save(data, out_dir or (Path.home() / ".cache" / "solverzoo" / "grids"))
    return path, data
