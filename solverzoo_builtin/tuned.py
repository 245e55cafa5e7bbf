"""The ``tuned`` pseudo-solver: runs the recommendation of ``solverzoo tune`` (a JSON file).

``solver=tuned`` with option ``file=PATH`` reads the recommendation and, for the NFE budget (option
``nfe``, or else the step count of the grid it is given, so ``--steps 10`` means "the NFE-10
recommendation"), runs the recommended solver with its options on the recommended grid: the explicit
times saved in the file, which must start and end where the given grid does (the same ODE interval;
the given grid's interior points are replaced). So ``solverzoo sample``, ``solverzoo bench`` and every
caller of :func:`solverzoo.sample` pick the tuned grid too, with no change of their own; the NFE they
report is counted on the model calls, as always.

Without a file, ``tuned`` is the zoo default it was compared against (``dpmpp_2m`` on the grid it is
given) and warns that no recommendation was used.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from solverzoo import Solver, hookimpl
from solverzoo.registry import registry
from solverzoo.timegrid import GridError, validate_grid
from solverzoo.tune import DEFAULT_SOLVER, Choice, resolve


@dataclass(frozen=True)
class TunedPlan:
    """What the loop runs: the recommended solver, its plan, and the recommended grid."""

    solver: Solver
    plan: Any
    grid: torch.Tensor
    choice: Choice | None


class Tuned(Solver):
    """Tuned — the per-model recommendation of ``solverzoo tune``: its solver, grid and options per NFE budget.

    Options:
        file: the recommendation file (``solverzoo tune --out FILE``); empty: the zoo default
            (``dpmpp_2m`` on the given grid), with a warning.
        nfe: the NFE budget whose recommendation to run (0: the given grid's step count).
    """

    name = "tuned"
    order = 2
    evals_per_step = 1

    def plan(self, schedule, grid, *, file: str = "", nfe: int = 0) -> TunedPlan:
        if not file:
            warnings.warn("solver 'tuned' got no recommendation file (option file=PATH, written by `solverzoo tune`): "
                          f"running the zoo default {DEFAULT_SOLVER!r} on the given grid", UserWarning, stacklevel=3)
            inner = registry.get("solver", DEFAULT_SOLVER)
            return TunedPlan(inner, inner.plan(schedule, grid), grid, None)
        budget = int(nfe) if nfe else len(grid) - 1
        choice = resolve(str(file), budget, schedule)
        times = validate_grid(torch.tensor(choice.times, dtype=torch.float64), schedule, name=f"tuned grid (NFE {budget})")
        g0, g1 = float(grid[0]), float(grid[-1])
        if abs(float(times[0]) - g0) > 1e-9 * max(1.0, abs(g0)) or abs(float(times[-1]) - g1) > 1e-9 * max(1.0, abs(g1)):
            raise GridError(f"the recommendation in {file} runs from t={float(times[0]):g} to t={float(times[-1]):g}, but the "
                            f"grid given runs from t={g0:g} to t={g1:g}: sample on the grid it was tuned on (the model's "
                            "default grid) or tune for this interval")
        inner = registry.get("solver", choice.solver)
        inner.check_options(choice.options)
        return TunedPlan(inner, inner.plan(schedule, times, **choice.options), times, choice)

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        return plan.solver.loop(denoiser, x, plan.grid, plan.plan, generator=generator, callback=callback)

    def declared_order(self, **options) -> int:
        if not options.get("file") or not options.get("nfe"):
            return self.order
        choice = resolve(str(options["file"]), int(options["nfe"]))
        return registry.get("solver", choice.solver).declared_order(**choice.options)


@hookimpl
def register_solvers(register):
    register(Tuned())
