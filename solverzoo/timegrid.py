"""Time grids: pure functions ``(schedule, steps, **options) -> Tensor`` of ``steps + 1``
strictly decreasing times in the schedule's own units, ending where sampling ends
(``schedule.t_zero`` for a final step to sigma = 0)."""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from solverzoo.schedules import NoiseSchedule


class GridError(ValueError):
    """A time grid that no solver can step on."""


class TimeGrid:
    """A registered time-grid function with argument checking and output validation."""

    def __init__(self, name: str, fn: Callable[..., Tensor]):
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__
        sig = inspect.signature(fn)
        self._options = {p.name: p.default for p in list(sig.parameters.values())[2:]}

    def __call__(self, schedule: NoiseSchedule, steps: int, **options) -> Tensor:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise GridError(f"steps must be a positive integer, got {steps!r}")
        if options:
            valid = self.options()
            unknown = sorted(set(options) - set(valid))
            if unknown:
                raise TypeError(f"grid {self.name!r} has no option(s) {unknown}; valid options: {valid or 'none'}")
        grid = self.fn(schedule, steps, **options)
        return validate_grid(grid, schedule, steps=steps, name=self.name)

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def info(self) -> dict:
        return {"name": self.name, "options": {k: repr(v) for k, v in self.options().items()},
                "description": self.description}


def time_grid(name: str) -> Callable[[Callable], TimeGrid]:
    """Decorator that turns a grid function into a :class:`TimeGrid`."""
    return lambda fn: TimeGrid(name, fn)


def validate_grid(grid, schedule: NoiseSchedule | None = None, *, steps: int | None = None, name: str = "grid") -> Tensor:
    """Check a grid and return it as a float64 CPU tensor; raise :class:`GridError` with the
    reason otherwise. Host-side, called once before sampling."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.requires_grad:
        grid = grid.detach()
    if grid.device.type != "cpu":
        grid = grid.cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise GridError(f"{name}: a grid is a 1-D tensor of at least 2 times (start and end), got shape {tuple(grid.shape)}")
    if steps is not None and grid.numel() != steps + 1:
        raise GridError(f"{name}: asked for {steps} steps but the grid has {grid.numel()} points")
    gl = grid.tolist()  # the common case checked on Python floats: cheaper than array ops on a short grid
    lo_g, hi_g = gl[-1], gl[0]
    if math.isfinite(lo_g) and math.isfinite(hi_g) and all(a > b for a, b in zip(gl, gl[1:])):
        # strictly decreasing between finite ends: every time is finite, the extremes are the ends
        if schedule is not None:
            lo, hi = min(schedule.t_zero, schedule.t_max), max(schedule.t_zero, schedule.t_max)
            tol = 1e-9 * max(1.0, abs(hi - lo))
            if lo_g < lo - tol or hi_g > hi + tol:
                raise GridError(f"{name}: times must lie in the schedule's range [{lo:g}, {hi:g}], got [{lo_g:g}, {hi_g:g}]")
        return grid
    g = grid.numpy()  # the failing case: locate the fault on the numpy view
    if not np.isfinite(g).all():
        raise GridError(f"{name}: the grid contains NaN or inf: {g.tolist()}")
    bad = np.flatnonzero(g[1:] >= g[:-1])
    if bad.size:
        k = int(bad[0])
        raise GridError(
            f"{name}: times must be strictly decreasing (noisy to clean), but t[{k}]={g[k]:g} "
            f"<= t[{k + 1}]={g[k + 1]:g}; (duplicate steps often come from rounding too many "
            f"steps onto a discrete schedule)")
    if schedule is not None:
        lo, hi = min(schedule.t_zero, schedule.t_max), max(schedule.t_zero, schedule.t_max)
        tol = 1e-9 * max(1.0, abs(hi - lo))
        if g.min() < lo - tol or g.max() > hi + tol:
            raise GridError(f"{name}: times must lie in the schedule's range [{lo:g}, {hi:g}], got [{g.min():g}, {g.max():g}]")
    return grid


# -- sigma-space grids ------------------------------------------------------------------------
# A sigma-space grid (karras, exponential, kl_optimal, ...) is a list of noise levels in one of two
# coordinates, both monotone functions of the half log-SNR lambda = log(alpha / sigma), so every
# schedule maps them to its own time through ``schedule.t_of_lam`` (its own inverse):
#   "ve":   sigma_ve = sigma / alpha = exp(-lambda)             (k-diffusion's / EDM's sigma, in [0, inf))
#   "flow": u = sigma / (alpha + sigma) = sigmoid(-lambda)        (rectified flow's sigma, in [0, 1])
# "auto" picks "flow" on a flow path (alpha + sigma == 1, any shift) and "ve" elsewhere: what ComfyUI
# does (its schedulers run on the model's own sigmas, which are the flow sigma for flow models).
SIGMA_SPACES = ("auto", "ve", "flow")
VE_SIGMA_CAP = 1e4
"""Largest VE sigma a grid starts from: ``alpha(t_max) == 0`` (rectified flow, zero terminal SNR)
makes the VE sigma at ``t_max`` infinite."""


def is_flow_path(schedule: NoiseSchedule) -> bool:
    """True when ``alpha(t) + sigma(t) == 1`` along the schedule (checked at 9 times to 1e-12)."""
    t = torch.linspace(schedule.t_zero, schedule.t_max, 9, dtype=torch.float64)
    a, s = schedule.alpha_sigma(t)
    return bool(torch.all((a + s - 1.0).abs() <= 1e-12))


def resolve_space(schedule: NoiseSchedule, space: str, name: str = "grid") -> str:
    """``"ve"`` or ``"flow"`` for the ``space`` option of a sigma-space grid (see :data:`SIGMA_SPACES`)."""
    if space not in SIGMA_SPACES:
        raise GridError(f"{name}: space must be one of {SIGMA_SPACES} ('ve': sigma / alpha, 'flow': "
                        f"sigma / (alpha + sigma), 'auto': flow on flow paths, ve elsewhere), got {space!r}")
    if space == "auto":
        return "flow" if is_flow_path(schedule) else "ve"
    return space


def grid_sigma(schedule: NoiseSchedule, t, space: str) -> Tensor:
    """The noise level of time(s) ``t`` in ``space`` (``"ve"`` or ``"flow"``), float64."""
    a, s = schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
    return s / a if space == "ve" else s / (a + s)


def sigma_range(schedule: NoiseSchedule, space: str, sigma_min: float | None = None,
                sigma_max: float | None = None, name: str = "grid") -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` in ``space``: the schedule's ``t_min`` and ``t_max`` unless given
    (a VE sigma_max is capped at :data:`VE_SIGMA_CAP`)."""
    smin = float(grid_sigma(schedule, schedule.t_min, space)) if sigma_min is None else float(sigma_min)
    smax = float(grid_sigma(schedule, schedule.t_max, space)) if sigma_max is None else float(sigma_max)
    if space == "ve":
        smax = min(smax, VE_SIGMA_CAP)
    if not 0 < smin < smax:
        raise GridError(f"{name}: need 0 < sigma_min < sigma_max, got sigma_min={smin:g}, sigma_max={smax:g} ({space} space)")
    return smin, smax


def times_of_sigmas(schedule: NoiseSchedule, sigmas, space: str, name: str = "grid", rtol: float = 1e-6) -> Tensor:
    """Map noise levels in ``space`` to the schedule's times through its own log-SNR inverse.

    Zero maps to ``t_zero``; a level at the top of the schedule's range (within ``rtol``) maps to
    ``t_max`` exactly; a level beyond the schedule's range is a :class:`GridError`."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).clone()
    top = float(grid_sigma(schedule, schedule.t_max, space))
    cap = min(top, VE_SIGMA_CAP) if space == "ve" else top
    if bool((sig < 0).any()) or bool((sig > cap * (1 + rtol)).any()):
        raise GridError(f"{name}: noise levels must lie in [0, {cap:g}] ({space} sigma of this schedule), "
                        f"got [{float(sig.min()):g}, {float(sig.max()):g}]; lower sigma_max or use another schedule")
    if space == "ve":
        t = schedule.t_of_sigma_ve(sig.clamp_min(1e-300))
    else:
        u = sig.clamp(1e-300, 1.0)
        t = schedule.t_of_lam(torch.log1p(-u) - torch.log(u))
    t = torch.where(sig == 0, torch.full_like(t, schedule.t_zero), t)
    t = torch.where(sig >= top * (1 - rtol), torch.full_like(t, schedule.t_max), t)
    return t.clamp(min(schedule.t_zero, schedule.t_max), max(schedule.t_zero, schedule.t_max))
