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

Signatures are part of the contract and are checked when a solver is registered
(:func:`signature_errors`): ``plan(self, schedule, grid, *, opt=default, ...)`` takes exactly
two positional parameters and declares every option keyword-only with a default (the options
are what :meth:`Solver.options` lists and :meth:`Solver.sample` forwards); ``loop`` has
exactly the base class's signature.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

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
        renoise: True when the loop continues from ``pred.renoised(x)`` after each denoiser call at
            ``x`` (or forms its steps with ``pred.lin`` only), so guidance that renoises with another
            prediction than the guided one (``cfg_pp``) steers it; running such guidance with a solver
            that does not declare it is an error (:func:`check_renoise`), never a silently unguided run.
        verify_nfes: the NFE ladder on which ``solverzoo verify`` and the conformance order check measure
            the empirical order (None: :data:`solverzoo.testing.verify.DEFAULT_NFES`, 16 to 256); set it
            for a method whose asymptotic regime starts later on the testbed, and say why where it is set.
    """

    name: str = "solver"
    order: int = 1
    stochastic: bool = False
    evals_per_step: int = 1
    needs: tuple[str, ...] = ("x0", "eps")
    adaptive: bool = False
    renoise: bool = False
    verify_nfes: tuple[int, ...] | None = None

    # -- the two halves --------------------------------------------------------------------
    def plan(self, schedule: NoiseSchedule, grid: Tensor, **options) -> Any:
        """Precompute everything the loop needs from the grid (host, float64).

        Subclasses declare their options keyword-only, each with a default:
        ``def plan(self, schedule, grid, *, eta: float = 0.0)``. No other positional parameter
        and no ``**kwargs``: registration rejects them (see :func:`signature_errors`).

        Args:
            schedule: the denoiser's noise schedule.
            grid: the explicit time grid (1-D, strictly decreasing).
            **options: stands for the subclass's keyword-only options.

        Returns:
            Anything the loop needs (typically tuples of Python floats).
        """
        raise NotImplementedError

    def loop(self, denoiser: Denoiser, x: Tensor, grid: Tensor, plan: Any, *,
             generator: Generators = None, callback: Callback | None = None) -> Tensor:
        """Run the sampling loop from ``x`` at ``grid[0]`` to ``grid[-1]``.

        Subclasses keep exactly this signature (parameter names, kinds and defaults).

        Args:
            denoiser: ``(x, t) -> Prediction``.
            x: the state at ``grid[0]``.
            grid: the explicit time grid the plan was made for.
            plan: what :meth:`plan` returned.
            generator: step-noise generator(s) for stochastic solvers.
            callback: called after every step with ``{"i", "t", "x", "x0"}``.

        Returns:
            The state at ``grid[-1]``.
        """
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
        check_renoise(self, denoiser)
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
                "adaptive": self.adaptive, "renoise": self.renoise, "options": {k: repr(v) for k, v in self.options().items()},
                "description": self.description}

    def __repr__(self) -> str:
        return f"<solver {self.name} order={self.order} {'SDE' if self.stochastic else 'ODE'}>"


def check_renoise(solver: Solver, denoiser) -> None:
    """Raise when ``denoiser`` renoises with another prediction than its guided one (CFG++) and
    ``solver`` does not declare that it continues from the renoised state (``renoise = True``)."""
    if getattr(denoiser, "renoise", False) and not getattr(solver, "renoise", False):
        name = getattr(getattr(denoiser, "guidance", None), "name", type(denoiser).__name__)
        raise ValueError(
            f"guidance {name!r} renoises with the unconditional prediction (CFG++), and solver {solver.name!r} does "
            "not declare that it honours that (Solver.renoise is False), so the run would not be what you asked for; "
            "use a solver that declares renoise = True (solverzoo plugins --json lists it: ddim, euler, "
            "euler_ancestral, heun, ...) or plain cfg with this solver")


# -- signature checks (run by the registry when a solver is registered) -------------------------
_PLAN_HINT = "declare it as `def plan(self, schedule, grid, *, my_option=default, ...)`"
_LOOP_HINT = ("declare it exactly as `def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None)` "
              "(the signature of solverzoo.Solver.loop)")


def _shape(fn: Callable) -> list[tuple[str, Any, Any]]:
    """``(name, kind, default)`` of each parameter, annotations ignored."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _plan_errors(cls: type) -> list[str]:
    if cls.plan is Solver.plan:
        return [f"plan is not implemented; {_PLAN_HINT}"]
    params = list(inspect.signature(cls.plan).parameters.values())[1:]  # drop self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    errors = []
    if len(positional) != 2:
        names = ", ".join(p.name for p in positional) or "none"
        errors.append(f"plan must take exactly two positional parameters (schedule, grid), got {len(positional)} "
                      f"({names}); make every option keyword-only: {_PLAN_HINT}")
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            errors.append(f"plan must not take *{p.name}; {_PLAN_HINT}")
        elif p.kind is p.VAR_KEYWORD:
            errors.append(f"plan must not take **{p.name} (options are the keyword-only parameters, which "
                          f"Solver.options() lists and sample() checks); {_PLAN_HINT}")
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            errors.append(f"plan option {p.name!r} has no default; give every option a default value")
    return errors


def _loop_errors(cls: type) -> list[str]:
    if cls.loop is Solver.loop:
        return [f"loop is not implemented; {_LOOP_HINT}"]
    if _shape(cls.loop) != _shape(Solver.loop):
        return [f"loop{inspect.signature(cls.loop)} differs from the base signature; {_LOOP_HINT}"]
    return []


def signature_errors(solver: Any) -> list[str]:
    """What is wrong with a solver's signatures (empty when nothing is).

    Checks that ``solver`` is a :class:`Solver` instance, that ``plan`` takes
    ``(schedule, grid)`` positionally and only keyword-only options with defaults, and that
    ``loop`` has exactly the base class's signature.

    Args:
        solver: the object a plugin registers as a solver.

    Returns:
        One message per problem, each saying how to fix it.
    """
    if isinstance(solver, type) and issubclass(solver, Solver):
        return [f"register an instance, not the class: register({solver.__name__}())"]
    if not isinstance(solver, Solver):
        return [f"a solver must be an instance of solverzoo.Solver (or solverzoo.kit.RungeKutta), "
                f"got {type(solver).__name__}"]
    cls = type(solver)
    return _plan_errors(cls) + _loop_errors(cls)
