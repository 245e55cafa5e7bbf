"""The sampling runner: validates inputs, counts NFE honestly and watches for non-finite
model outputs without a host sync per step."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from solverzoo.model import Denoiser, Model, ModelDenoiser
from solverzoo.noise import Generators, randn
from solverzoo.prediction import Prediction
from solverzoo.registry import registry
from solverzoo.schedules import NoiseSchedule
from solverzoo.solver import Callback, Solver, check_renoise
from solverzoo.timegrid import validate_grid


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

    A plain :meth:`Model.denoiser() <solverzoo.model.Model.denoiser>` is called through a fast
    path that does what :meth:`Model.predict <solverzoo.model.Model.predict>` does with less
    work per call: the network's time input (a ``(B,)`` tensor), the conversion coefficients
    and their finiteness are made once per distinct time *of this sampling call* (a memo that
    lives and dies with the watch, so nothing carries over between calls of :func:`sample`).
    """

    __slots__ = ("calls", "check", "evals_per_call", "first_bad_host", "inner", "probes", "schedule", "times",
                 "_cond", "_memo", "_model", "_net")

    def __init__(self, inner: Denoiser, check: bool = True):
        self.inner = inner
        self.check = check
        self.schedule = inner.schedule
        self.evals_per_call = getattr(inner, "evals_per_call", 1)
        self.calls = 0
        self.probes: list[Tensor] = []  # one 0-d device tensor per call, finite iff that prediction is
        self.times: list = []  # the time of each call, as the solver passed it
        self.first_bad_host: int | None = None  # first call whose conversion coefficients are not finite
        # the fast path: a Model's own denoiser (not a subclass that could change predict), eager mode
        model = getattr(inner, "model", None)
        fast = (type(inner) is ModelDenoiser and type(model) is Model and "predict" not in vars(model)
                and not torch.compiler.is_compiling())
        self._memo: dict | None = {} if fast else None  # host time -> (time input, coefficients, finite)
        self._model = model if fast else None
        self._net = model.net if fast else None
        self._cond = (inner.cond or {}) if fast else None

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        memo = self._memo
        if memo is not None and (type(t) is float or (isinstance(t, Tensor) and t.is_cpu)):
            return self._fast(x, t, memo)
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

    def prime(self, grid: Tensor, x: Tensor) -> None:
        """Fill the fast path's memo for the step starts of ``grid`` (where every solver evaluates)
        with one tensor op: row ``i`` of a ``(steps, B)`` tensor is the network's time input at
        ``grid[i]``, equal to the ``torch.full`` that :meth:`Model.predict` makes. Only for float32
        and float64 states (whose conversion from a Python float these rows reproduce bit for bit);
        a time input that ``torch.full`` would reject (overflow) or any failure is left to the call
        itself, so errors surface where they did."""
        if self._memo is None or x.dtype not in (torch.float32, torch.float64) or x.ndim < 1:
            return
        try:
            keys = grid.tolist()[:-1]
            model, big = self._model, torch.finfo(x.dtype).max
            consts = [model._host_constants(k) for k in keys]
            keep = [i for i, c in enumerate(consts) if isinstance(c[0], float) and not (abs(c[0]) > big and math.isfinite(c[0]))]
            if not keep:
                return
            batch, dtype, device = x.shape[0], x.dtype, x.device
            rows = torch.tensor([consts[i][0] for i in keep], dtype=dtype, device=device)
            rows = rows.unsqueeze(1).expand(len(keep), batch).contiguous().unbind(0)
        except Exception:  # noqa: BLE001 - the calls themselves raise, where they would have
            return
        memo = self._memo
        for i, row in zip(keep, rows):
            coefs = consts[i][1]
            memo[keys[i]] = (row, coefs, math.isfinite(coefs[0] + coefs[1] + coefs[2] + coefs[3]), batch, dtype, device)

    def _fast(self, x: Tensor, t, memo: dict) -> Prediction:
        """``Model.predict(x, t, cond)`` plus the watch's bookkeeping, for a host time ``t``."""
        key = float(t)
        shape = x.shape
        entry = memo.get(key)
        if entry is None or entry[3] != shape[0] or entry[4] is not x.dtype or entry[5] != x.device:
            time_value, coefs, _ = self._model._host_constants(key)
            entry = (_time_tensor(time_value, x), coefs, math.isfinite(coefs[0] + coefs[1] + coefs[2] + coefs[3]),
                     shape[0], x.dtype, x.device)
            memo[key] = entry
        out = self._net(x, entry[0], **self._cond)
        if out.shape != shape:
            raise ValueError(f"model output has shape {tuple(out.shape)} but the input has shape {tuple(shape)}")
        pred = _new_prediction(Prediction)  # Prediction.affine(x, out, *coefficients), without re-packing them
        pred._x0 = pred._eps = None
        pred._x, pred._out, pred._c = x, out, entry[1]
        self.calls += 1
        if self.check:
            self.times.append(t)
            if not entry[2] and self.first_bad_host is None:
                self.first_bad_host = self.calls - 1
            if self.calls == 1:
                out = x + out
            self.probes.append(out.sum() if out.element_size() >= 4 else out.sum(dtype=torch.float32))
        return pred


_new_prediction = object.__new__


def _time_tensor(value, x: Tensor) -> Tensor:
    """The network's ``(B,)`` time input for ``x``, as :meth:`Model.predict` builds it."""
    if isinstance(value, float):
        return torch.full((x.shape[0],), value, device=x.device, dtype=x.dtype)
    return value.to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def _raise_if_nonfinite(watch: _Watch, out: Tensor, grid: Tensor, solver_name: str) -> None:
    """After the loop: one host read of two numbers; the first bad call is located only when
    something was not finite."""
    final = _probe(out)
    if watch.probes and watch.first_bad_host is None and final.device == watch.probes[0].device:
        # the common case in one host read: a finite sum of every probe and the final state means each
        # of them is finite (NaN and inf propagate through a sum), so neither check below can raise
        if math.isfinite(torch.stack(watch.probes + [final]).sum().tolist()):
            return
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
        ValueError: guidance that renoises (``cfg_pp``) with a solver that does not declare ``renoise``.
        ValueError: a state that is not a floating tensor, or generators that do not match the batch.
        NonFiniteError: the model produced NaN/inf (names the first bad step).
    """
    if isinstance(solver, str):
        solver = registry.get("solver", solver)
    solver.check_options(options)
    check_renoise(solver, denoiser)
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
    watch.prime(grid, x)
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
