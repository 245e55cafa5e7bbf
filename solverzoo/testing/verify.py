"""Accuracy verification of any registered solver on the analytic Gaussian-mixture testbed.

The solver runs at a ladder of NFEs (:data:`DEFAULT_NFES`, or the solver's own ``verify_nfes`` where
its asymptotic regime starts later) from the same exact samples of ``x_T`` to a fixed end
time ``t_min > 0`` (so a final jump to sigma = 0 does not mask the convergence order); the
reference is the registered ``dop853`` solver (scipy's DOP853, flow frame, float64, tight
tolerances) on the same probability-flow ODE of the same exact model. Reported per NFE: median
endpoint error (RMS over dimensions), the mode-flip rate (endpoint closest to a different mixture
component than the reference's) and, for stochastic solvers, the sliced Wasserstein distance to
exact samples.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from solverzoo.registry import registry
from solverzoo.sampling import sample
from solverzoo.solver import Solver
from solverzoo.testbeds import GaussianMixture, marginal_sample

DEFAULT_NFES = (16, 32, 64, 128, 256)


@dataclass
class VerifyRow:
    nfe: int
    steps: int
    median_error: float
    mode_flip_rate: float
    sliced_wasserstein: float | None = None


@dataclass
class VerifyReport:
    solver: str
    declared_order: int
    empirical_order: float | None
    stochastic: bool
    schedule: dict
    grid: str
    prediction: str
    n_samples: int
    dim: int
    seed: int
    options: dict
    rows: list[VerifyRow] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d


def reference_solve(denoiser, x: torch.Tensor, t_start: float, t_end: float,
                    rtol: float = 1e-11, atol: float = 1e-11) -> torch.Tensor:
    """The exact solution of the PF-ODE from ``x`` at ``t_start`` to ``t_end``: the registered
    ``dop853`` solver (flow frame, float64) on a grid of the two times, with tight tolerances."""
    grid = torch.tensor([t_start, t_end], dtype=torch.float64)
    return sample("dop853", denoiser, x.to(torch.float64), grid, rtol=rtol, atol=atol).x


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 128, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equal-size point clouds."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a.to(torch.float64) @ dirs, dim=0)
    pb, _ = torch.sort(b.to(torch.float64) @ dirs, dim=0)
    return float((pa - pb).abs().mean())


def fit_order(nfes, errors, floor: float = 1e-9) -> float | None:
    """Empirical order: minus the least-squares slope of log(error) on log(NFE) over the upper
    half of the ladder (the asymptotic regime), skipping errors at the reference's floor."""
    pts = [(math.log(n), math.log(e)) for n, e in zip(nfes, errors) if e > floor and n > 0]
    pts = pts[len(pts) // 2 - 1:] if len(pts) >= 4 else pts
    if len(pts) < 2:
        return None
    xs, ys = np.array(pts).T
    return float(-np.polyfit(xs, ys, 1)[0])


def ladder(solver: Solver, nfes=None) -> tuple[int, ...]:
    """The NFE ladder to verify ``solver`` on: ``nfes`` if given, else the solver's own ``verify_nfes``
    (a :class:`~solverzoo.solver.Solver` attribute), else :data:`DEFAULT_NFES`.

    Raises:
        ValueError: a ladder that is not at least two increasing positive integers.
    """
    chosen = nfes if nfes is not None else (getattr(solver, "verify_nfes", None) or DEFAULT_NFES)
    where = "nfes" if nfes is not None else f"{type(solver).__name__}.verify_nfes"
    try:
        out = tuple(int(v) for v in chosen)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a sequence of NFEs (positive integers), got {chosen!r}") from None
    if len(out) < 2 or out[0] < 1 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{where} must hold at least two increasing positive NFEs, got {chosen!r}")
    return out


def verify(solver: Solver | str, *, nfes=None, schedule: str = "vp", schedule_options: dict | None = None,
           grid: str = "logsnr", prediction: str = "epsilon", n: int = 128, dim: int = 4, seed: int = 0,
           options: dict | None = None) -> VerifyReport:
    """Run ``solver`` on the Gaussian-mixture testbed at each NFE of the ladder (see module doc):
    ``nfes`` if given, else the solver's ``verify_nfes``, else :data:`DEFAULT_NFES` (:func:`ladder`)."""
    if isinstance(solver, str):
        solver = registry.get("solver", solver)
    nfes = ladder(solver, nfes)
    options = dict(options or {})
    solver.check_options(options)
    sched = registry.get("schedule", schedule)(**(schedule_options or {}))
    grid_fn = registry.get("grid", grid)
    gmm = GaussianMixture.default(dim=dim, seed=seed)
    den = gmm.model(sched, prediction).denoiser()
    probe = grid_fn(sched, 2, final="none") if "final" in grid_fn.options() else grid_fn(sched, 2)
    t_start, t_end = float(probe[0]), float(probe[-1])
    g = torch.Generator().manual_seed(seed)
    x_T = marginal_sample(gmm, sched, t_start, n, g)
    stochastic = solver.is_stochastic(**options)
    ref = reference_solve(den, x_T, t_start, t_end)
    a_end, s_end = (float(v) for v in sched.alpha_sigma(torch.tensor(t_end, dtype=torch.float64)))
    ref_mode = gmm.component(ref, a_end, s_end)
    exact_end = marginal_sample(gmm, sched, t_end, n, torch.Generator().manual_seed(seed + 1))
    rows = []
    for nfe in nfes:
        steps = max(1, int(nfe) // solver.evals_per_step)
        gr = grid_fn(sched, steps, final="none") if "final" in grid_fn.options() else grid_fn(sched, steps)
        gens = [torch.Generator().manual_seed(seed * 100003 + i) for i in range(n)] if stochastic else None
        res = sample(solver, den, x_T.clone(), gr, generator=gens, **options)
        err = ((res.x - ref) ** 2).mean(dim=1).sqrt()
        flips = (gmm.component(res.x, a_end, s_end) != ref_mode).double().mean()
        sw = sliced_wasserstein(res.x, exact_end) if stochastic else None
        rows.append(VerifyRow(res.nfe, steps, float(err.median()), float(flips), sw))
    order = None if stochastic or solver.adaptive else fit_order([r.nfe for r in rows], [r.median_error for r in rows])
    note = ("stochastic solver: endpoint error against the ODE reference does not converge; see sliced_wasserstein"
            if stochastic else "")
    return VerifyReport(solver.name, solver.declared_order(**options), order, stochastic, sched.describe(), grid,
                        prediction, n, dim, seed, options, rows, note)
