"""The solver contract.

A solver is split in two so that its sampling loop never touches the host:

* :meth:`Solver.plan` runs once, on the host, in float64: it reads the explicit time grid
  and the schedule and precomputes every per-step coefficient (Python floats), choosing
  lower orders where the grid demands it (warm-up, a final step to sigma = 0, ...).
* :meth:`Solver.loop` is the sampling loop: tensor arithmetic with those coefficients and
  denoiser calls only; no ``.item()``, no branching on tensor values, so it traces with
  ``torch.compile(fullgraph=True)``.

:meth:`Solver.sample` is ``loop(plan(...))``. Solvers are stateless: multistep history lives
in local variables of ``loop``. Solvers never build their own grid and never take a step count.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import Tensor

from solverzoo.model import Denoiser
from solverzoo.noise import Generators
from solverzoo.schedules import NoiseSchedule

Callback = Callable[[dict], None]


class Solver:
    """Base class of every solver.

    Class attributes (the capability contract):
        name: registry name.
        order: declared order of accuracy of the deterministic method (see :meth:`declared_order`).
        stochastic: True for SDE samplers (see :meth:`is_stochastic`).
        evals_per_step: denoiser evaluations per grid step (nominal; the final step may use fewer).
        needs: predictions the solver reads from the denoiser (``x0``, ``eps``).
        adaptive: True for adaptive-step reference solvers, which ignore interior grid points.
    """

    name: str = "solver"
    order: int = 1
    stochastic: bool = False
    evals_per_step: int = 1
    needs: tuple[str, ...] = ("x0", "eps")
    adaptive: bool = False

    # -- the two halves --------------------------------------------------------------------
    def plan(self, schedule: NoiseSchedule, grid: Tensor, **options) -> Any:
        """Precompute everything the loop needs from the grid (host, float64)."""
        raise NotImplementedError

    def loop(self, denoiser: Denoiser, x: Tensor, grid: Tensor, plan: Any, *,
             generator: Generators = None, callback: Callback | None = None) -> Tensor:
        """Run the sampling loop from ``x`` at ``grid[0]`` to ``grid[-1]``."""
        raise NotImplementedError

    # -- the public entry ------------------------------------------------------------------
    def sample(self, denoiser: Denoiser, x: Tensor, grid: Tensor, *, generator: Generators = None,
               callback: Callback | None = None, **options) -> Tensor:
        """Sample from ``x`` (at time ``grid[0]``) along the explicit ``grid``.

        Args:
            denoiser: ``(x, t) -> Prediction`` with a ``schedule`` attribute.
            x: the starting state, e.g. ``sigma(grid[0]) * noise``.
            grid: 1-D float tensor of strictly decreasing times in the schedule's units.
            generator: a ``torch.Generator`` or one per sample (stochastic solvers draw their
                step noise from it; per-sample generators make samples batch-size independent).
            callback: called after every step with ``{"i", "t", "x", "x0"}``.
            **options: the solver's options (the keyword arguments of :meth:`plan`).
        """
        self.check_options(options)
        return self.loop(denoiser, x, grid, self.plan(denoiser.schedule, grid, **options),
                         generator=generator, callback=callback)

    __call__ = sample

    # -- capabilities ----------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The solver's options and their defaults (the keyword-only arguments of ``plan``)."""
        cls = type(self)
        if "_options" not in cls.__dict__:  # computed once per class
            sig = inspect.signature(self.plan)
            cls._options = {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        return dict(cls._options)

    def check_options(self, options: dict) -> None:
        valid = self.options()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"solver {self.name!r} has no option(s) {unknown}; valid options: {valid or 'none'}")

    def declared_order(self, **options) -> int:
        return self.order

    def is_stochastic(self, **options) -> bool:
        return self.stochastic

    @property
    def kind(self) -> str:
        return "sde" if self.stochastic else "ode"

    @property
    def description(self) -> str:
        doc = inspect.getdoc(type(self)) or ""
        return doc.splitlines()[0] if doc else ""

    def info(self) -> dict:
        return {"name": self.name, "order": self.order, "stochastic": self.stochastic,
                "evals_per_step": self.evals_per_step, "needs": list(self.needs),
                "adaptive": self.adaptive, "options": {k: repr(v) for k, v in self.options().items()},
                "description": self.description}

    def __repr__(self) -> str:
        return f"<solver {self.name} order={self.order} {'SDE' if self.stochastic else 'ODE'}>"
