"""The sampling runner: validates inputs, counts NFE honestly and watches for non-finite
model outputs without a host sync per step."""
from __future__ import annotations

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


class _Watch:
    """Wraps a denoiser: counts calls and records the first call whose prediction is not
    finite, as device tensors (no sync until the end)."""

    def __init__(self, inner: Denoiser, check: bool = True):
        self.inner = inner
        self.check = check
        self.schedule = inner.schedule
        self.evals_per_call = getattr(inner, "evals_per_call", 1)
        self.calls = 0
        self.first_bad_call: Tensor | None = None
        self.first_bad_t: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        pred = self.inner(x, t)
        self.calls += 1
        if not self.check:
            return pred
        bad = ~(torch.isfinite(pred.x0).all() & torch.isfinite(pred.eps).all())
        t64 = torch.as_tensor(t, dtype=torch.float64).to(bad.device)
        if self.first_bad_call is None:
            self.first_bad_call = torch.full((), -1, dtype=torch.long, device=bad.device)
            self.first_bad_t = torch.zeros((), dtype=torch.float64, device=bad.device)
        new = bad & (self.first_bad_call < 0)
        self.first_bad_call = torch.where(new, torch.full_like(self.first_bad_call, self.calls - 1), self.first_bad_call)
        self.first_bad_t = torch.where(new, t64, self.first_bad_t)
        return pred


def _step_of(grid: Tensor, t: float) -> int:
    """Index of the grid step whose interval (grid[i+1], grid[i]] contains t (a step
    evaluates the model at its start and at interior stages, never at its end)."""
    for i in range(len(grid) - 1):
        if grid[i + 1] < t <= grid[i]:
            return i
    return -1


def make_cache(cache, options: dict | None = None):
    """A cache policy from a registered name (with ``options``) or an instance (``None``: no cache)."""
    from solverzoo.caching import Cache

    if cache is None or cache == "none":
        if options:
            raise ValueError(f"cache options {sorted(options)} given without a cache")
        return None
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
        if watch.first_bad_call is not None and int(watch.first_bad_call) >= 0:
            t_bad = float(watch.first_bad_t)
            step = _step_of(grid, t_bad)
            raise NonFiniteError(
                f"the model returned NaN/inf at denoiser call {int(watch.first_bad_call)} (t={t_bad:g}, "
                f"grid step {step} of {len(grid) - 1}); check the model's inputs at that noise level, its dtype "
                f"(float16 overflow?) and whether its prediction type suits the schedule (epsilon models "
                f"cannot predict x0 where alpha = 0)")
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(f"solver {solver.name!r} produced NaN/inf although every model output was finite; "
                                 "check the grid's first and last times and the solver options")
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
