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
