"""The sampling runner: validates inputs, counts NFE honestly and watches for non-finite
model outputs without a host sync per step."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from solverzoo.timegrid import validate_grid
from solverzoo.model import Denoiser
from solverzoo.noise import Generators, randn
from solverzoo.prediction import Prediction
from solverzoo.registry import registry
from solverzoo.schedules import NoiseSchedule
from solverzoo.solver import Callback, Solver


class NonFiniteError(FloatingPointError):
    """The model (or the solver) produced NaN or inf while sampling."""


@dataclass
class SampleResult:
    x: Tensor
    nfe: int  # network evaluations, every guidance branch counted
    denoiser_calls: int
    wall_s: float
    solver: str
    options: dict = field(default_factory=dict)
    backbone_evals: float = 0.0  # full-network-equivalent evaluations per sample actually computed (= nfe without a cache)
    cache: dict | None = None  # the cache policy and its options, when one was used


def _probe(t: Tensor) -> Tensor:
    """One reduction whose 0-d result is finite exactly when every element of ``t`` is (NaN and
    inf propagate through a sum). Half-precision tensors are summed in float32, where a sum of
    finite elements cannot overflow; a float32 or float64 sum overflows only for elements within
    a factor ``numel`` of the dtype's largest value. One kernel, no host sync: the per-call
    cost of the watch."""
    return t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()


class _Watch:
    """Wraps a denoiser: counts calls and keeps, per call, a 0-d device tensor that is finite
    exactly when that call's prediction (``x0`` and ``eps``) is finite. Nothing is read on the
    host inside the loop; :func:`_raise_if_nonfinite` reads them once, after it.

    A :class:`Prediction` built by a :class:`~solverzoo.model.Model` is an affine map of the
    network input ``x`` and output ``out`` with Python-float coefficients; with finite
    coefficients (checked here on the host, for free) and an invertible map, ``x0`` and ``eps``
    are finite exactly when ``x`` and ``out`` are. So the watch sums ``out`` (one kernel) and,
    at the first call, the starting state; later states come from finite model outputs through
    the solver, whose own non-finite results the final check reports. Other predictions (guided,
    tensor coefficients under ``torch.compile``) are probed through ``x0 + eps``.
    """

    __slots__ = ("calls", "check", "evals_per_call", "first_bad_host", "inner", "probes", "schedule", "times")

    def __init__(self, inner: Denoiser, check: bool = True):
        self.inner = inner
        self.check = check
        self.schedule = inner.schedule
        self.evals_per_call = getattr(inner, "evals_per_call", 1)
        self.calls = 0
        self.probes: list[Tensor] = []  # one 0-d device tensor per call, finite iff that prediction is
        self.times: list = []  # the time of each call, as the solver passed it
        self.first_bad_host: int | None = None  # first call whose conversion coefficients are not finite

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        pred = self.inner(x, t)
        self.calls += 1
        if self.check:
            self.times.append(t)
            c = pred._c if type(pred) is Prediction else None
            if c is not None and pred._x0 is None and pred._eps is None:
                k = c[0] + c[1] + c[2] + c[3]  # non-finite iff one coefficient is (floats; tensors fall through)
                if isinstance(k, float):
                    if self.first_bad_host is None and not math.isfinite(k):
                        self.first_bad_host = self.calls - 1
                    out = pred._out
                    self.probes.append(_probe(out) if self.calls > 1 else _probe(pred._x + out))
                    return pred
            self.probes.append(_probe(pred.x0 + pred.eps) if self.calls > 1 else _probe(pred.x0 + pred.eps + x))
        return pred


def _raise_if_nonfinite(watch: _Watch, out: Tensor, grid: Tensor, solver_name: str) -> None:
    """After the loop: one host read of two numbers; the first bad call is located only when
    something was not finite."""
    final = _probe(out)
    if watch.probes:
        probes = torch.stack(watch.probes)
        model_sum, final_sum = torch.stack([probes.sum(), final.to(probes.device)]).tolist()
    else:
        probes, model_sum, final_sum = None, 0.0, final.item()
    if not math.isfinite(model_sum) or watch.first_bad_host is not None:
        bad = [] if probes is None else torch.nonzero(~torch.isfinite(probes)).flatten().tolist()
        if watch.first_bad_host is not None:
            bad.append(watch.first_bad_host)
        if bad:  # (else a sum of finite probes overflowed: nothing was bad)
            first = min(bad)
            t_bad = float(torch.as_tensor(watch.times[first], dtype=torch.float64))
            step = _step_of(grid, t_bad)
            raise NonFiniteError(
                f"the model returned NaN/inf at denoiser call {first} (t={t_bad:g}, "
                f"grid step {step} of {len(grid) - 1}); check the model's inputs at that noise level, its dtype "
                f"(float16 overflow?) and whether its prediction type suits the schedule (epsilon models "
                f"cannot predict x0 where alpha = 0)")
    if not math.isfinite(final_sum) and not bool(torch.isfinite(out).all()):
        raise NonFiniteError(f"solver {solver_name!r} produced NaN/inf although every model output was finite; "
                             "check the grid's first and last times and the solver options")


def _step_of(grid: Tensor, t: float) -> int:
    """Index of the grid step whose interval (grid[i+1], grid[i]] contains t (a step
    evaluates the model at its start and at interior stages, never at its end)."""
    for i in range(len(grid) - 1):
        if grid[i + 1] < t <= grid[i]:
            return i
    return -1


def make_cache(cache, options: dict | None = None):
    """A cache policy from a registered name (with ``options``) or an instance (``None``: no cache)."""
    if cache is None or cache == "none":
        if options:
            raise ValueError(f"cache options {sorted(options)} given without a cache")
        return None
    from solverzoo.caching import Cache

    if isinstance(cache, Cache):
        if options:
            raise ValueError("pass cache options to the cache's constructor, or give the cache by name")
        return cache
    factory = registry.get("cache", cache)
    try:
        return factory(**(options or {}))
    except TypeError as exc:
        valid = factory().options() if hasattr(factory, "options") else {}
        raise TypeError(f"cache {cache!r}: {exc}; valid options: {valid or 'none'}") from None


def sample(solver: Solver | str, denoiser: Denoiser, x: Tensor, grid: Tensor, *, generator: Generators = None,
           callback: Callback | None = None, check_finite: bool = True, cache=None, cache_options: dict | None = None,
           **options) -> SampleResult:
    """Run ``solver`` from ``x`` along ``grid`` with checks; returns the sample and its cost.

    ``cache`` (a registered cache name or a :class:`~solverzoo.caching.Cache`) opens a cache
    session for this call only: the denoiser's network runs its block stack through the cache.

    Raises:
        UnknownComponentError: unknown solver name (with close matches).
        GridError: a grid that is not strictly decreasing, finite and inside the schedule.
        TypeError: an unknown solver option.
        ValueError: a state that is not a floating tensor, or generators that do not match the batch.
        NonFiniteError: the model produced NaN/inf (names the first bad step).
    """
    if isinstance(solver, str):
        solver = registry.get("solver", solver)
    solver.check_options(options)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError(f"x must be a floating-point tensor with a batch dimension, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}; pass one per sample")
    schedule = denoiser.schedule
    grid = validate_grid(grid, schedule)
    policy = make_cache(cache, cache_options)
    session = None
    if policy is not None:
        from solverzoo.caching import CacheError, CacheSession

        if not hasattr(denoiser, "with_net") or not hasattr(denoiser, "model"):
            raise CacheError(f"a cache needs a denoiser built from a Model (Model.denoiser() or GuidedDenoiser), "
                             f"got {type(denoiser).__name__}")
        session = CacheSession(policy, denoiser.model.net)
        denoiser = denoiser.with_net(session)
    watch = _Watch(denoiser, check_finite)
    start = time.perf_counter()
    plan = solver.plan(schedule, grid, **options)
    with torch.no_grad():
        out = solver.loop(watch, x, grid, plan, generator=generator, callback=callback)
    if check_finite:
        _raise_if_nonfinite(watch, out, grid, solver.name)
    wall = time.perf_counter() - start
    nfe = watch.calls * watch.evals_per_call
    evals = session.backbone_evals(x.shape[0]) if session is not None else float(nfe)
    return SampleResult(out, nfe, watch.calls, wall, solver.name, dict(options), evals,
                        policy.describe() if policy is not None else None)


def initial_noise(schedule: NoiseSchedule, t_start, shape, generator: Generators, *, dtype=torch.float32, device="cpu") -> Tensor:
    """The starting state for unit-variance data: ``sqrt(alpha^2 + sigma^2) * noise`` at ``t_start``
    (1 for VP and rectified flow at their end, about sigma_max for VE)."""
    a, s = schedule.alpha_sigma(torch.as_tensor(t_start, dtype=torch.float64))
    return randn(shape, generator, dtype=dtype, device=device) * float(torch.sqrt(a * a + s * s))
