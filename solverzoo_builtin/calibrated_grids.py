"""Calibrated time grids: ``gits`` (Chen et al., 2024) and ``oss`` (Pei et al., 2025).

Each is a grid plugin with two ways in:

* ``key=NAME``: a grid calibrated earlier and saved (``solverzoo.calibrate.save_calibrated``, or
  ``solverzoo optimise-grid`` for the Powell optimiser), checked against the schedule;
* ``backbone=NAME``: calibrate now on that registered backbone's calibration set (its world's
  calibration prompts and seeds; memoised in this process), for ``solver`` with ``criterion``
  (``mean`` / ``median``) on ``space`` (``latent`` / ``decoded``).

For a model that is not a registered backbone, call the library directly:
``solverzoo.calibrate_dp.gits(Problem(calibration_set(model, shape, cond=...), "ddim"), steps)``
and pass the times as ``grid: {name: explicit, times: [...]}`` or save them by key.
"""
from __future__ import annotations

import functools

import torch

from solverzoo import hookimpl, time_grid
from solverzoo.timegrid import GridError


@functools.lru_cache(maxsize=64)
def _calibrate(method: str, backbone: str, steps: int, solver: str, n: int, guidance: str, scale: float, criterion: str,
               space: str, fine_steps: int, extra: tuple) -> tuple[float, ...]:
    from solverzoo.backbone import load_backbone
    from solverzoo.calibrate import Problem, from_backbone
    from solverzoo.calibrate_dp import gits, oss

    bb = load_backbone(backbone)
    cal = from_backbone(bb, n=n, guidance=guidance, scale=scale, space=space)
    problem = Problem(cal, solver, criterion=criterion)
    fn = gits if method == "gits" else oss
    return tuple(float(t) for t in fn(problem, steps, fine_steps=fine_steps, **dict(extra))["times"])


def _grid(method: str, schedule, steps: int, key: str, backbone: str, extra: dict, **kw) -> torch.Tensor:
    if key and backbone:
        raise GridError(f"{method}: pass key=NAME (a saved grid) or backbone=NAME (calibrate now), not both")
    if key:
        from solverzoo.saved_grids import grid_for

        return grid_for(schedule, steps, key)
    if not backbone:
        raise GridError(f"{method} calibrates a grid for one model: pass backbone=NAME (a registered backbone) or "
                        f"key=NAME (a saved calibrated grid); for any other model use solverzoo.calibrate_dp.{method}")
    from solverzoo.backbone import load_backbone
    from solverzoo.saved_grids import schedule_signature

    have, want = schedule_signature(load_backbone(backbone).model.schedule), schedule_signature(schedule)
    if have != want:
        raise GridError(f"{method}: backbone {backbone!r} has schedule {have}, but the grid is asked for {want}")
    times = _calibrate(method, backbone, int(steps), extra=tuple(sorted(extra.items())), **kw)
    return torch.tensor(times, dtype=torch.float64)


@time_grid("gits")
def gits(schedule, steps, *, key: str = "", backbone: str = "", solver: str = "ddim", n: int = 64, guidance: str = "none",
         scale: float = 1.0, criterion: str = "mean", space: str = "latent", fine_steps: int = 60, coeff: float = 1.1):
    """GITS (Chen et al., 2024): DP over a fine grid on the teacher trajectory's local truncation errors."""
    return _grid("gits", schedule, steps, key, backbone, {"coeff": float(coeff)}, solver=solver, n=int(n),
                 guidance=guidance, scale=float(scale), criterion=criterion, space=space, fine_steps=int(fine_steps))


@time_grid("oss")
def oss(schedule, steps, *, key: str = "", backbone: str = "", solver: str = "ddim", n: int = 64, guidance: str = "none",
        scale: float = 1.0, criterion: str = "mean", space: str = "latent", fine_steps: int = 40, student: str = "ddim"):
    """OSS (Pei et al., 2025): optimal stepsize by DP that carries the student solver's own states."""
    return _grid("oss", schedule, steps, key, backbone, {"student": student}, solver=solver, n=int(n),
                 guidance=guidance, scale=float(scale), criterion=criterion, space=space, fine_steps=int(fine_steps))


@hookimpl
def register_grids(register):
    register(gits)
    register(oss)
