"""Conformance checks for time-grid plugins (built-in or third-party), by registered name.

Like the solver checks in :mod:`solverzoo.testing.conformance` (which lists these in ``CHECKS``),
each raises ``AssertionError`` saying what was expected and what came out. They apply to grids that
run without options (not ``explicit`` times, or a calibrated grid that needs a key or a backbone).
"""
from __future__ import annotations

import numpy as np
import torch

from solverzoo.registry import registry
from solverzoo.timegrid import validate_grid

GRID_SCHEDULES: tuple[tuple[str, dict], ...] = (
    ("vp", {}), ("ddpm", {}), ("ddpm", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    ("ddpm", {"beta_schedule": "cosine"}), ("ddpm", {"rescale_zero_terminal_snr": True}), ("edm", {}), ("flow", {}),
    ("flow", {"shift": 3.0}))
"""Every schedule family the zoo ships, with the variants a grid most often trips on."""

GRID_STEPS = (1, 2, 7, 50)


def _fail(name: str, what: str) -> AssertionError:
    return AssertionError(f"grid {name!r}: {what}")


def check_grid_every_schedule(name: str) -> None:
    """``steps + 1`` valid times (finite, strictly decreasing, inside the schedule) for 1, 2, 7 and
    50 steps on every shipped schedule, including cosine and zero-terminal-SNR DDPM and shifted flow."""
    fn = registry.get("grid", name)
    for family, opts in GRID_SCHEDULES:
        sched = registry.get("schedule", family)(**opts)
        for steps in GRID_STEPS:
            try:
                validate_grid(fn(sched, steps), sched, steps=steps, name=name)
            except Exception as exc:  # noqa: BLE001 - report which case failed
                raise _fail(name, f"{steps} step(s) on {family}{opts or ''}: {type(exc).__name__}: {exc}") from None


def check_grid_pure(name: str) -> None:
    """A grid is a pure function: the same call gives the same times, whatever was asked before, and
    the schedule is left unchanged."""
    fn = registry.get("grid", name)
    for family in ("ddpm", "flow"):
        sched = registry.get("schedule", family)()
        before = sched.describe()
        a = fn(sched, 7)
        fn(sched, 50)
        b = fn(sched, 7)
        if not torch.equal(a, b):
            raise _fail(name, f"two calls with 7 steps on {family} differ: {a.tolist()} vs {b.tolist()}")
        if sched.describe() != before:
            raise _fail(name, f"changed the schedule it was given: {before} -> {sched.describe()}")


def check_grid_converges(name: str, coarse: int = 4, fine: int = 32) -> None:
    """DDIM on the grid approaches the exact solution of the Gaussian-mixture ODE as the step count
    grows (median error at ``fine`` steps below half the error at ``coarse`` steps), on a VP and a
    flow schedule: the grid refines where it should, whatever its spacing."""
    from solverzoo.calibrate import Problem, calibration_set
    from solverzoo.testbeds import GaussianMixture

    mix = GaussianMixture.default(dim=4, seed=0)
    fn = registry.get("grid", name)
    for family, prediction in (("vp", "epsilon"), ("flow", "velocity")):
        sched = registry.get("schedule", family)()
        model = mix.model(sched, prediction)
        cal = calibration_set(model, (4,), seeds=range(32), cond={"label": torch.arange(32) % 3}, exact=True)
        problem = Problem(cal, "ddim", criterion="median")
        e = [problem.score(problem.errors(fn(sched, k).numpy())) for k in (coarse, fine)]
        if not (np.isfinite(e).all() and e[1] < 0.5 * e[0]):
            raise _fail(name, f"median DDIM error {e[0]:.3g} at {coarse} steps, {e[1]:.3g} at {fine} steps on {family}: "
                              "it should fall below half as the grid is refined")
