"""Conformance checks for registered components, parametrised by component name.

Each ``check_*`` function looks the component up in :data:`solverzoo.registry`, runs it on
the exact Gaussian-mixture testbed (:mod:`solverzoo.testbeds`) and raises ``AssertionError``
with a message that says what was expected, what came out and what usually causes it. The
checks are plain functions: pytest is not needed (``tests/test_conformance.py`` parametrises
them over every registered solver; ``solverzoo conformance NAME`` runs them from the shell).
"""
from __future__ import annotations

import difflib
import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from solverzoo.noise import generators
from solverzoo.registry import UnknownComponentError, registry
from solverzoo.sampling import initial_noise, sample
from solverzoo.solver import Solver, signature_errors
from solverzoo.testbeds import GaussianMixture, marginal_sample
from solverzoo.testing.grid_conformance import check_grid_converges, check_grid_every_schedule, check_grid_pure
from solverzoo.timegrid import validate_grid

EDGE_GRIDS: tuple[tuple[str, int], ...] = (
    ("leading", 1), ("linspace", 1), ("trailing", 1), ("karras", 1), ("logsnr", 1), ("flow_shift", 1),
    ("leading", 7), ("linspace", 13), ("trailing", 31), ("karras", 17), ("logsnr", 11), ("flow_shift", 23),
    ("trailing", 1000), ("linspace", 1000))
"""(grid, steps) pairs of :func:`check_edge_grids`: 1 step, prime step counts, 1000 steps, every spacing."""

PARAMETRISATIONS: tuple[tuple[str, str], ...] = (("vp", "logsnr"), ("flow", "flow_shift"), ("edm", "karras"))
"""(schedule, grid) pairs of :func:`check_prediction_invariance`."""

_PREDICTIONS = ("epsilon", "x0", "v", "velocity")


# -- helpers ------------------------------------------------------------------------------------
@functools.cache
def _gmm() -> GaussianMixture:
    return GaussianMixture.default(dim=4, seed=0)


def _solver(name: str) -> Solver:
    return registry.get("solver", name)


def _setup(schedule: str = "vp", prediction: str = "epsilon"):
    sched = registry.get("schedule", schedule)()
    return sched, _gmm().model(sched, prediction).denoiser()


def _grid(name: str, schedule, steps: int, **options) -> torch.Tensor:
    return registry.get("grid", name)(schedule, steps, **options)


def _fail(name: str, what: str, hint: str = "") -> AssertionError:
    return AssertionError(f"{name}: {what}" + (f" ({hint})" if hint else ""))


# -- solver checks ------------------------------------------------------------------------------
def check_contract(name: str) -> None:
    """The capability contract: signatures, name, order, evaluations per step, needs, options."""
    solver = _solver(name)
    errors = list(signature_errors(solver))
    if solver.name != name:
        errors.append(f"its name attribute is {solver.name!r} but it is registered as {name!r}")
    for attr in ("order", "evals_per_step"):
        value = getattr(solver, attr)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"{attr} must be an integer >= 1, got {value!r}")
    if not set(solver.needs) <= {"x0", "eps"} or not solver.needs:
        errors.append(f"needs must be a non-empty subset of ('x0', 'eps'), got {solver.needs!r}")
    order = solver.declared_order(**solver.options())
    if not isinstance(order, int) or order < 1:
        errors.append(f"declared_order() with the default options must be an integer >= 1, got {order!r}")
    if not isinstance(solver.is_stochastic(**solver.options()), bool):
        errors.append("is_stochastic() must return a bool")
    if errors:
        raise _fail(name, "; ".join(errors))


def check_shape_dtype_device(name: str, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> None:
    """The output keeps the input's shape, dtype and device, and is finite."""
    sched, den = _setup()
    grid = _grid("karras", sched, 6)
    for dtype in dtypes:
        x = initial_noise(sched, grid[0], (5, 4), generators(range(5)), dtype=dtype)
        out = sample(name, den, x, grid, generator=generators(range(100, 105))).x
        if (out.shape, out.dtype, out.device) != (x.shape, x.dtype, x.device):
            raise _fail(name, f"returned {tuple(out.shape)} {out.dtype} on {out.device} for an input of "
                        f"{tuple(x.shape)} {x.dtype} on {x.device}", "keep the state's shape, dtype and device")
        if not torch.isfinite(out).all():
            raise _fail(name, f"returned NaN/inf in {dtype}")


def check_same_seed_bit_identical(name: str) -> None:
    """Two runs with the same noise and generators give bit-identical samples."""
    sched, den = _setup()
    grid = _grid("logsnr", sched, 8)
    runs = []
    for _ in range(2):
        x = initial_noise(sched, grid[0], (6, 4), generators(range(6)))
        runs.append(sample(name, den, x, grid, generator=generators(range(50, 56))).x)
    if not torch.equal(runs[0], runs[1]):
        raise _fail(name, "two runs with the same seeds differ", "draw every random number from the "
                    "`generator` argument (solverzoo.kit.randn_like), never from torch's global RNG")


def check_batch_independent(name: str) -> None:
    """Sample i depends only on its own seeds: a batch of 8 equals 8 batches of 1 (to 1e-5)."""
    sched, den = _setup()
    grid = _grid("karras", sched, 7)
    seeds, step_seeds = list(range(8)), list(range(1000, 1008))
    x = initial_noise(sched, grid[0], (8, 4), generators(seeds))
    batched = sample(name, den, x, grid, generator=generators(step_seeds)).x
    singles = torch.cat([sample(name, den, initial_noise(sched, grid[0], (1, 4), generators([s])), grid,
                                generator=generators([ss])).x for s, ss in zip(seeds, step_seeds)])
    try:
        torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    except AssertionError as exc:
        raise _fail(name, f"a batch of 8 differs from 8 batches of 1: {exc}", "draw step noise per sample "
                    "with solverzoo.kit.randn_like(x, generator) and never mix samples") from None


def check_stateless(name: str) -> None:
    """A call on another grid and batch in between changes nothing."""
    sched, den = _setup()
    solver = _solver(name)
    grid = _grid("karras", sched, 6)
    x = initial_noise(sched, grid[0], (4, 4), generators(range(4)))
    first = solver.sample(den, x.clone(), grid, generator=generators(range(4)))
    solver.sample(den, torch.randn(7, 4, generator=torch.Generator().manual_seed(0)), _grid("logsnr", sched, 13),
                  generator=generators(range(7)))
    again = solver.sample(den, x.clone(), grid, generator=generators(range(4)))
    if not torch.equal(first, again):
        raise _fail(name, "a call on another grid and batch changed the next result", "keep no state on the "
                    "solver between calls: multistep history lives in local variables of loop")


def check_edge_grid(name: str, grid_name: str, steps: int) -> None:
    """One edge grid: finite, lands near the data, calls back at every grid time, honest NFE."""
    sched = registry.get("schedule", "ddpm")()
    gmm = _gmm()
    den = gmm.model(sched, "v").denoiser()  # v-prediction is finite at every noise level
    grid = _grid(grid_name, sched, steps)
    n = 16  # the landing check is on the median: a systematic miss, not one sample's tail
    x = initial_noise(sched, grid[0], (n, 4), generators(range(n)), dtype=torch.float64)
    seen: list[float] = []
    res = sample(name, den, x, grid, generator=generators(range(n)), callback=lambda d: seen.append(float(d["t"])))
    where = f"on grid {grid_name} with {steps} step(s)"
    if not torch.isfinite(res.x).all():
        raise _fail(name, f"NaN/inf {where}")
    if seen != [float(t) for t in grid[1:]]:
        raise _fail(name, f"callback times {seen[:5]}{'...' if len(seen) > 5 else ''} ({len(seen)} calls) are not "
                    f"the grid times after the first ({steps} calls) {where}",
                    "call callback once per step with t = grid[i + 1]")
    if _solver(name).evals_per_step == 1 and res.nfe != steps:
        raise _fail(name, f"made {res.nfe} model evaluations for {steps} step(s) {where} but declares "
                    "evals_per_step = 1")
    if _solver(name).stochastic and 1 < steps < 10:
        return  # a handful of SDE steps is not expected to land on the data (their law is checked elsewhere)
    d = torch.cdist(res.x.double(), gmm.means).min(dim=1).values
    limit = 6 * float(gmm.stds.max()) + (3.0 if steps == 1 else 1.0 if steps < 10 else 0.0)
    if not float(d.median()) < limit:
        raise _fail(name, f"end points are a median {float(d.median()):.3g} from the nearest mixture mean {where} (limit "
                    f"{limit:.3g})", "does it step to grid[-1], the clean end of the grid?")


def check_edge_grids(name: str) -> None:
    """Every grid of :data:`EDGE_GRIDS` (see :func:`check_edge_grid`)."""
    for grid_name, steps in EDGE_GRIDS:
        check_edge_grid(name, grid_name, steps)


def check_reaches_grid_end(name: str, n: int = 1024) -> None:
    """On a grid that stops half-way (log-SNR about 0), samples from the exact marginal end on
    the exact marginal of the grid's last time: their second moment is within 30% of the way
    from it to the data's (fails for a solver that integrates past ``grid[-1]``)."""
    sched, den = _setup()
    gmm = _gmm()
    grid = _grid("logsnr", sched, 80)[:41]
    t0, t1 = float(grid[0]), float(grid[-1])
    x = marginal_sample(gmm, sched, t0, n, torch.Generator().manual_seed(0))
    out = sample(name, den, x, grid, generator=generators(range(n))).x.double()
    m2 = float((out ** 2).mean())
    exact = float((marginal_sample(gmm, sched, t1, 20000, torch.Generator().manual_seed(1)) ** 2).mean())
    data = float((gmm.sample(20000, torch.Generator().manual_seed(2)) ** 2).mean())
    if abs(m2 - exact) > 0.3 * abs(data - exact):
        raise _fail(name, f"stopping at t = {t1:.4g} the samples' mean square is {m2:.4g}, the exact marginal's "
                    f"{exact:.4g} (clean data: {data:.4g})", "step exactly to grid[-1], never past it to sigma = 0")


def check_empirical_order(name: str, tolerance: float = 0.5) -> None:
    """Order of convergence against a DOP853 solve of the exact PF-ODE equals the declared one
    (to ``tolerance``) and the error falls 8x over the NFE ladder."""
    from solverzoo.testing.verify import verify

    rep = verify(name, n=64)
    if rep.empirical_order is None:
        raise _fail(name, "no empirical order could be fitted (errors at the round-off floor?)")
    if abs(rep.empirical_order - rep.declared_order) > tolerance:
        errs = ", ".join(f"NFE {r.nfe}: {r.median_error:.2e}" for r in rep.rows)
        raise _fail(name, f"declares order {rep.declared_order} but converges at order {rep.empirical_order:.2f} "
                    f"(median errors {errs})", "fix the method or its declared order / declared_order()")
    errs = [r.median_error for r in rep.rows]
    if not errs[-1] < errs[0] / 8:
        raise _fail(name, f"does not converge: median error {errs[0]:.2e} at NFE {rep.rows[0].nfe}, "
                    f"{errs[-1]:.2e} at NFE {rep.rows[-1].nfe}")


def check_prediction_invariance(name: str, schedule: str | None = None, grid_name: str | None = None) -> None:
    """The same exact model gives the same samples whatever it predicts (epsilon, x0, v,
    velocity): solvers never see the prediction type. Every pair of :data:`PARAMETRISATIONS`
    unless one is named."""
    pairs = PARAMETRISATIONS if schedule is None else ((schedule, grid_name),)
    gmm = _gmm()
    for sched_name, gname in pairs:
        sched = registry.get("schedule", sched_name)()
        grid = _grid(gname, sched, 9, final="none")
        if sched_name == "flow":
            grid = grid[1:]  # an epsilon model cannot predict x0 at t = 1 (alpha = 0)
        x = initial_noise(sched, grid[0], (4, 4), generators(range(4)), dtype=torch.float64)
        outs = {p: sample(name, gmm.model(sched, p).denoiser(), x, grid).x for p in _PREDICTIONS}
        for p, o in outs.items():
            try:
                torch.testing.assert_close(o, outs["epsilon"], atol=1e-7, rtol=1e-7)
            except AssertionError as exc:
                raise _fail(name, f"a {p} model differs from an epsilon model of the same data on schedule "
                            f"{sched_name}: {exc}", "read only pred.x0 / pred.eps / pred.lin, never the "
                            "prediction type") from None


def check_sde_distribution(name: str, n: int = 2000) -> None:
    """With many steps the end points match exact samples in sliced Wasserstein distance to
    within the two-sample noise floor."""
    from solverzoo.testing.verify import sliced_wasserstein

    gmm = GaussianMixture.default(dim=2, seed=3)
    sched = registry.get("schedule", "vp")()
    grid = _grid("logsnr", sched, 200, final="none")
    x = marginal_sample(gmm, sched, float(grid[0]), n, torch.Generator().manual_seed(0))
    out = sample(name, gmm.model(sched).denoiser(), x, grid, generator=torch.Generator().manual_seed(1)).x
    exact = marginal_sample(gmm, sched, float(grid[-1]), n, torch.Generator().manual_seed(2))
    floor = sliced_wasserstein(marginal_sample(gmm, sched, float(grid[-1]), n, torch.Generator().manual_seed(3)), exact)
    sw = sliced_wasserstein(out, exact)
    if not sw < 2.5 * floor + 0.02:
        raise _fail(name, f"sliced Wasserstein distance to exact samples {sw:.4f} exceeds 2.5 x the noise floor "
                    f"{floor:.4f} + 0.02 after 200 steps", "is the injected noise variance right?")
    wrong = sliced_wasserstein(gmm.model(sched).denoiser()(x, grid[0]).x0, exact)
    if not wrong > 3 * sw:  # the check itself must separate a wrong sampler
        raise _fail(name, f"the check cannot tell it from a one-jump sampler ({wrong:.4f} vs {sw:.4f})")


# -- grid checks --------------------------------------------------------------------------------
def check_grid(name: str) -> None:
    """A time grid returns a valid grid (strictly decreasing, finite, inside the schedule) of
    ``steps + 1`` times for 1, 7 and 50 steps on the vp, ddpm, edm and flow schedules."""
    grid_fn = registry.get("grid", name)
    for sched_name in ("vp", "ddpm", "edm", "flow"):
        sched = registry.get("schedule", sched_name)()
        for steps in (1, 7, 50):
            try:
                grid = grid_fn(sched, steps)
                validate_grid(grid, sched, steps=steps, name=f"grid {name!r}")
            except Exception as exc:  # noqa: BLE001 - report which case failed
                raise _fail(name, f"{steps} step(s) on schedule {sched_name}: {type(exc).__name__}: {exc}") from None


# -- the registry of checks ---------------------------------------------------------------------
def _all(solver: Solver) -> bool:
    return True


def _fixed_step(solver: Solver) -> bool:
    return not solver.adaptive


def _ode(solver: Solver) -> bool:
    return not solver.stochastic and not solver.adaptive


def _sde(solver: Solver) -> bool:
    return solver.stochastic


def _parametric(grid) -> bool:
    """A grid that runs without options (not ``explicit`` times or an ``optimised`` key)."""
    return not any(isinstance(v, (str, tuple, list)) and len(v) == 0 for v in grid.options().values())


@dataclass(frozen=True)
class Check:
    """A named check of one component kind and the predicate that says where it applies."""

    name: str
    kind: str
    fn: Callable[[str], None]
    applies: Callable[[object], bool] = _all

    def __call__(self, component: str) -> None:
        self.fn(component)


CHECKS: tuple[Check, ...] = (
    Check("contract", "solver", check_contract),
    Check("shape_dtype_device", "solver", check_shape_dtype_device),
    Check("same_seed_bit_identical", "solver", check_same_seed_bit_identical),
    Check("batch_independent", "solver", check_batch_independent),
    Check("stateless", "solver", check_stateless),
    Check("reaches_grid_end", "solver", check_reaches_grid_end),
    Check("edge_grids", "solver", check_edge_grids, _fixed_step),
    Check("empirical_order", "solver", check_empirical_order, _ode),
    Check("prediction_invariance", "solver", check_prediction_invariance, _ode),
    Check("sde_distribution", "solver", check_sde_distribution, _sde),
    Check("grid", "grid", check_grid, _parametric),
    Check("grid_every_schedule", "grid", check_grid_every_schedule, _parametric),
    Check("grid_pure", "grid", check_grid_pure, _parametric),
    Check("grid_converges", "grid", check_grid_converges, _parametric),
)
"""Every packaged check, in the order they run."""

CHECKED_KINDS = ("solver", "grid")


def _find(name: str) -> tuple[str, object]:
    """``(kind, component)`` of the first checked kind that has ``name``."""
    for kind in CHECKED_KINDS:
        if name in registry.names(kind):
            return kind, registry.get(kind, name)
    known = [n for k in CHECKED_KINDS for n in registry.names(k)]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownComponentError(f"no solver or grid is registered as {name!r}.{hint} Is its package installed? "
                                f"`solverzoo plugins` lists every registered component")


def applicable_checks(name: str) -> list[Check]:
    """The checks that apply to the registered component ``name`` (a solver or a grid).

    Raises:
        UnknownComponentError: no solver or grid has that name.
    """
    kind, obj = _find(name)
    return [c for c in CHECKS if c.kind == kind and c.applies(obj)]


@dataclass
class ConformanceResult:
    """The outcome of every applicable check on one component."""

    name: str
    passed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """``ralston: 9/9 checks passed`` or the count plus each failure."""
        total = len(self.passed) + len(self.failures)
        if total == 0:
            return f"{self.name}: no check applies (a grid that needs options, such as explicit times, is not checked)"
        line = f"{self.name}: {len(self.passed)}/{total} checks passed"
        return line + "".join(f"\n  FAILED {check}: {msg}" for check, msg in self.failures.items())


def run_conformance(name: str) -> ConformanceResult:
    """Run every applicable check on ``name``; a check that raises is recorded, not fatal.

    Raises:
        UnknownComponentError: no solver or grid has that name.
    """
    result = ConformanceResult(name)
    for check in applicable_checks(name):
        try:
            check(name)
        except AssertionError as exc:
            result.failures[check.name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash is a failure of that check
            last = traceback.extract_tb(exc.__traceback__)[-1]
            result.failures[check.name] = (f"{name}: raised {type(exc).__name__}: {exc} "
                                           f"(at {last.filename}:{last.lineno})")
        else:
            result.passed.append(check.name)
    return result


def run_guidance_conformance(name: str, options=None) -> None:
    """The guidance checks (:mod:`solverzoo.testing.conformance_guidance`) on the registered guidance
    ``name``, built with ``options`` (a dict, or ``(model) -> dict``); raises AssertionError naming the failure."""
    from solverzoo.testing.conformance_guidance import check_guidance

    check_guidance(name, options)
