"""Grid calibration for any model: the calibration problem and its reference solves.

A calibrator picks a time grid for one model, solver and step count by measuring, on a
calibration set (starting noise from its own seeds, and conditioning), the distance of the
solver's endpoint to a reference solve of the same probability-flow ODE from the same noise. This
module holds what every calibrator shares; the calibrators are :func:`optimise` (here: Powell on
the grid's interior points, what ``solverzoo optimise-grid`` runs) and, in
:mod:`solverzoo.calibrate_dp`, :func:`~solverzoo.calibrate_dp.gits` and
:func:`~solverzoo.calibrate_dp.oss` (dynamic programming over a fine grid).

The model is a :class:`~solverzoo.model.Model` (with ``cond``) or any denoiser: nothing here knows
a world or a prompt; :func:`from_backbone` builds a set from a backbone object, drawing its world's
calibration prompts.

Reference solves never evaluate the model at sigma = 0 (where an ``x0`` or ``velocity`` model's
``eps`` is 0 / 0): a grid that ends at ``t_zero`` is referenced by a solve to the schedule's
``t_min`` followed by the explicit final jump ``x = x0_hat(x, t_min)`` (what the solvers' own
final step does), and every reference solve runs under an evaluation budget that ends in
:class:`EvaluationBudgetError` instead of running on.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from solverzoo.model import Model
from solverzoo.noise import generators
from solverzoo.registry import registry
from solverzoo.sampling import initial_noise, sample
from solverzoo.seeds import calibration_seeds
from solverzoo.timegrid import GridError

CRITERIA = ("mean", "median")
REFERENCES = ("dop853", "heun")


class EvaluationBudgetError(RuntimeError):
    """A solve used more model evaluations than its budget allows."""


class BudgetedDenoiser:
    """A denoiser that counts its calls and raises :class:`EvaluationBudgetError` past ``budget``."""

    def __init__(self, denoiser, budget: int, what: str):
        self.denoiser, self.budget, self.what, self.calls = denoiser, int(budget), what, 0
        self.schedule = denoiser.schedule
        self.evals_per_call = getattr(denoiser, "evals_per_call", 1)

    def __call__(self, x: Tensor, t: Tensor):
        self.calls += 1
        if self.calls > self.budget:
            raise EvaluationBudgetError(
                f"{self.what} used more than its budget of {self.budget} model evaluations and was stopped; the ODE is "
                "probably stiff there (e.g. near sigma = 0) or the model returns non-finite values. Raise the budget "
                "(max_reference_evals), loosen the reference (reference='heun'), or check the model")
        return self.denoiser(x, t)

    def __getattr__(self, name: str) -> Any:  # renoise, guidance, ... of the wrapped denoiser
        return getattr(self.__dict__["denoiser"], name)


@dataclass
class CalibrationSet:
    """Batches of ``(denoiser, noise seeds)`` of one model, the state shape and where errors are measured.

    Attributes:
        batches: per batch, a denoiser with its conditioning bound and one noise seed per sample.
        shape: one sample's state shape (no batch dimension).
        view: states -> what errors are measured on (the identity, or a decoder); float64 out.
        space: ``"latent"`` or ``"decoded"`` (a label for records).
        exact: True when the model is exact (analytic): the default reference is then DOP853.
    """

    batches: list[tuple[Any, list[int]]]
    shape: tuple[int, ...]
    view: Callable[[Tensor], Tensor] | None = None
    space: str = "latent"
    exact: bool = False
    device: str = "cpu"
    info: dict = field(default_factory=dict)

    @property
    def schedule(self):
        return self.batches[0][0].schedule

    @property
    def n(self) -> int:
        return sum(len(s) for _, s in self.batches)


def calibration_set(model, shape: Sequence[int], *, n: int = 64, seeds: Sequence[int] | None = None, cond: dict | None = None,
                    batch: int = 256, decode: Callable[[Tensor], Tensor] | None = None, exact: bool = False,
                    device: str = "cpu") -> CalibrationSet:
    """A calibration set for any model.

    Args:
        model: a :class:`~solverzoo.model.Model` or a denoiser (``denoiser(x, t) -> Prediction`` with
            a ``schedule``; guided denoisers included).
        shape: one sample's state shape.
        n, seeds: the calibration noise seeds (default ``solverzoo.seeds.calibration_seeds(n)``).
        cond: conditioning for a Model, every tensor with a leading batch dimension of ``len(seeds)``
            (sliced per batch); ignored for a denoiser, which has its conditioning bound.
        decode: measure errors on ``decode(state)`` instead of the state (``space="decoded"``).
        exact: the model is analytic, so a DOP853 solve is ground truth.
    """
    seeds = list(calibration_seeds(n) if seeds is None else seeds)
    if not seeds:
        raise ValueError("a calibration set needs at least one seed")
    if not (isinstance(model, Model) or (callable(model) and hasattr(model, "schedule"))):
        raise TypeError(f"model must be a solverzoo Model or a denoiser (callable with a .schedule), got {type(model).__name__}")
    if not isinstance(model, Model) and cond is not None:
        raise ValueError("cond is for a Model; a denoiser has its conditioning bound already")
    batches = []
    for i in range(0, len(seeds), batch):
        part = seeds[i:i + batch]
        if isinstance(model, Model):
            c = None if cond is None else {k: v[i:i + len(part)].to(device) for k, v in cond.items()}
            batches.append((model.denoiser(c), part))
        else:
            if len(seeds) > batch:
                raise ValueError(f"a bound denoiser serves one batch: pass at most batch={batch} seeds, or a Model with cond")
            batches.append((model, part))
    return CalibrationSet(batches, tuple(shape), decode, "decoded" if decode is not None else "latent", exact, device)


def from_backbone(bb, *, n: int = 64, guidance: str | None = None, scale: float = 1.0, space: str = "latent",
                  batch: int = 256, device: str = "cpu") -> CalibrationSet:
    """A calibration set of a :class:`~solverzoo.backbone.Backbone` (registered or not): its world's
    calibration prompts, :func:`~solverzoo.seeds.calibration_seeds` noise, optional guidance, and
    errors on the latents or the decoded samples."""
    from solverzoo.guidance import GuidedDenoiser

    if space not in ("latent", "decoded"):
        raise ValueError(f"space must be 'latent' (the solver's state) or 'decoded' (the backbone's images), got {space!r}")
    world = bb.require_world()
    prompts, seeds = world.calibration_prompts(n), calibration_seeds(n)
    batches = []
    for i in range(0, n, batch):
        p = prompts[i:i + batch]
        conds = {k: {kk: vv.to(device) for kk, vv in c.items()} for k, c in bb.conds(p).items()}
        den = bb.model.denoiser(conds["cond"]) if guidance in (None, "none") else \
            GuidedDenoiser(bb.model, registry.get("guidance", guidance)(scale=scale), conds)
        batches.append((den, seeds[i:i + len(p)]))
    return CalibrationSet(batches, tuple(bb.latent_shape), bb.decode if space == "decoded" else None, space,
                          bool(world.exact), device)


class Problem:
    """Endpoint errors of one solver on candidate grids against reference solves, on a calibration set.

    Args:
        cal: the calibration set.
        solver, solver_options: a deterministic fixed-step solver and its options.
        criterion: ``"mean"`` or ``"median"`` of the per-sample RMS errors.
        reference: ``"dop853"`` (float64, rtol 1e-10; the default for exact models) or ``"heun"``
            (``reference_steps`` log-SNR-uniform steps; the default otherwise).
        max_reference_evals: model evaluations one reference solve of one batch may take.
    """

    def __init__(self, cal: CalibrationSet, solver: str, *, solver_options: dict | None = None, criterion: str = "mean",
                 reference: str | None = None, reference_steps: int = 200, max_reference_evals: int = 100_000):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA} (of the per-sample RMS endpoint errors), got {criterion!r}")
        reference = reference or ("dop853" if cal.exact else "heun")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.solver = registry.get("solver", solver) if isinstance(solver, str) else solver
        if self.solver.is_stochastic() or self.solver.adaptive:
            kind = "stochastic" if self.solver.is_stochastic() else "adaptive"
            raise ValueError(f"grid calibration needs a deterministic fixed-step solver; {self.solver.name!r} is {kind}")
        self.cal, self.solver_options, self.criterion = cal, dict(solver_options or {}), criterion
        self.reference, self.reference_steps, self.max_reference_evals = reference, int(reference_steps), int(max_reference_evals)
        self.schedule = cal.schedule
        self.solves = 0
        self._memo: dict[tuple[float, float], list[Tensor]] = {}

    @property
    def reference_kind(self) -> str:
        return "dop853 (rtol 1e-10)" if self.reference == "dop853" else f"heun, {self.reference_steps} log-SNR-uniform steps"

    def start(self, seeds: list[int], t_start: float) -> Tensor:
        """The starting noise of ``seeds`` at ``t_start`` (the same draw for every grid)."""
        shape = (len(seeds),) + tuple(self.cal.shape)
        return initial_noise(self.schedule, t_start, shape, generators(seeds), device=self.cal.device)

    def view(self, z: Tensor) -> Tensor:
        with torch.no_grad():
            return (z if self.cal.view is None else self.cal.view(z)).double()

    def score(self, errors: np.ndarray) -> float:
        return float(np.mean(errors) if self.criterion == "mean" else np.median(errors))

    def solve_to(self, den, x: Tensor, t_start: float, t_stop: float) -> Tensor:
        """The reference ODE solution from ``t_start`` to ``t_stop > t_zero``, under the budget."""
        if t_stop == self.schedule.t_zero:
            raise GridError("a reference solve never evaluates the model at sigma = 0; stop at t_min and jump")
        den = BudgetedDenoiser(den, self.max_reference_evals, f"the {self.reference} reference solve from t={t_start:g} "
                                                              f"to t={t_stop:g}")
        if self.reference == "dop853":
            grid = torch.tensor([t_start, t_stop], dtype=torch.float64)
            return sample("dop853", den, x.double(), grid, check_finite=False).x
        lam = self.schedule.lam(torch.tensor([t_start, t_stop], dtype=torch.float64))
        fine = self.schedule.t_of_lam(torch.linspace(float(lam[0]), float(lam[1]), self.reference_steps + 1,
                                                     dtype=torch.float64))
        fine[0], fine[-1] = t_start, t_stop
        return sample("heun", den, x, fine, check_finite=False).x

    def reference_endpoints(self, t_start: float, t_end: float) -> list[Tensor]:
        """Per batch, the viewed reference endpoint of the ODE from ``t_start`` to ``t_end`` (memoised).
        For ``t_end == t_zero`` the solve stops at the schedule's ``t_min`` and jumps to x0_hat."""
        key = (float(t_start), float(t_end))
        if key not in self._memo:
            zero = t_end == self.schedule.t_zero
            t_stop = float(self.schedule.t_min) if zero else float(t_end)
            if zero and not _between(self.schedule, t_stop, t_start):
                raise GridError(f"the grid starts at t={t_start:g}, not above the schedule's t_min={t_stop:g}")
            refs = []
            for den, seeds in self.cal.batches:
                with torch.no_grad():
                    x = self.solve_to(den, self.start(seeds, t_start), t_start, t_stop)
                    if zero:  # the explicit final jump
                        x = den(x, torch.tensor(t_stop, dtype=torch.float64)).x0
                refs.append(self.view(x))
            self._memo[key] = refs
        return self._memo[key]

    def errors(self, times) -> np.ndarray:
        """Per-sample RMS endpoint error of the solver on ``times`` (inf for an invalid grid)."""
        times = np.asarray(times, dtype=np.float64)
        if not (np.all(np.isfinite(times)) and _decreasing(self.schedule, times)):
            return np.full(self.cal.n, np.inf)
        refs = self.reference_endpoints(float(times[0]), float(times[-1]))
        grid = torch.from_numpy(times.copy())
        out = []
        for (den, seeds), ref in zip(self.cal.batches, refs):
            budgeted = BudgetedDenoiser(den, 64 * len(times), f"solver {self.solver.name!r} on a {len(times) - 1}-step grid")
            with torch.no_grad():
                x = self.start(seeds, float(times[0]))
                y = sample(self.solver, budgeted, x, grid, check_finite=False, **self.solver_options).x
            self.solves += 1
            out.append(((self.view(y) - ref) ** 2).flatten(1).mean(1).sqrt().cpu().numpy())
        e = np.concatenate(out)
        return np.where(np.isfinite(e), e, np.inf)


def _between(schedule, t: float, t_start: float) -> bool:
    return (t_start - t) * (schedule.t_max - schedule.t_zero) > 0


def _decreasing(schedule, times: np.ndarray) -> bool:
    """Strictly from noisy to clean (times decrease when t_max > t_zero)."""
    d = np.diff(times) * (1.0 if schedule.t_max > schedule.t_zero else -1.0)
    return bool(np.all(d < 0))


# -- the optimiser ------------------------------------------------------------------------------
def unit_times(theta: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    """Grid with interior points ``t_start - u (t_start - t_end)``, ``u = cumsum(softmax(theta))``:
    strictly monotone with the given ends for every ``theta``."""
    w = np.exp(theta - theta.max())
    u = np.concatenate([[0.0], np.cumsum(w / w.sum())])
    t = t_start - u * (t_start - t_end)
    t[-1] = t_end  # exactly, not up to rounding
    return t


def unit_theta(times: np.ndarray) -> np.ndarray:
    """The ``theta`` of :func:`unit_times` that gives ``times``."""
    return np.log(-np.diff(times) / (times[0] - times[-1]))


def optimise(problem: Problem, times, *, max_evals: int = 300) -> dict:
    """Powell's derivative-free search over the interior points of ``times`` (ends fixed) for the
    lowest calibration score; never returns a grid that scores worse than ``times``.

    Returns ``{"times", "score_before", "score_after", "median_before", "median_after", "evals"}``."""
    from scipy.optimize import minimize

    times = np.asarray(times, dtype=np.float64)
    t0, t1 = float(times[0]), float(times[-1])
    e0 = problem.errors(times)
    if not np.all(np.isfinite(e0)):
        raise GridError("the starting grid gives non-finite errors on the calibration set; start from another grid")
    obj = lambda th: problem.score(problem.errors(unit_times(th, t0, t1)))  # noqa: E731
    res = minimize(obj, unit_theta(times), method="Powell", options={"maxfev": int(max_evals), "xtol": 1e-3, "ftol": 1e-6})
    new = unit_times(res.x, t0, t1)
    e1 = problem.errors(new)
    if not problem.score(e1) < problem.score(e0):
        new, e1 = times, e0
    return {"times": new, "score_before": problem.score(e0), "score_after": problem.score(e1),
            "median_before": float(np.median(e0)), "median_after": float(np.median(e1)), "evals": int(res.nfev)}


def save_calibrated(key: str, schedule, grids: dict, *, method: str, solver: str, model_id: str = "user-model",
                    out_dir=None, info: dict | None = None):
    """Save calibrated grids ``{steps: times}`` under ``key`` (served by the ``gits`` / ``oss`` /
    ``optimised`` grid plugins as ``key=...``); returns the file's path."""
    from pathlib import Path

    from solverzoo.saved_grids import save, schedule_signature

    data = {"key": key, "backbone": model_id, "backbone_weights": model_id, "solver": solver, "guidance": "none",
            "scale": 1.0, "schedule": schedule_signature(schedule), "method": method,
            "grids": {str(int(k)): [float(v) for v in t] for k, t in grids.items()},
            "runs": {str(int(k)): dict(info or {}) for k in grids}}
    return save(data, out_dir or (Path.home() / ".cache" / "solverzoo" / "grids"))
