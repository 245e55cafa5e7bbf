"""Built-in caches: TeaCache, first-block cache and TaylorSeer for transformer block stacks, and
DeepCache for U-Nets (:mod:`solverzoo_builtin.deepcache`); see :mod:`solverzoo.caching`."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from solverzoo import hookimpl
from solverzoo.caching import Cache, rel_l1, scatter
from solverzoo_builtin.deepcache import DeepCache


def _check(name: str, value, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
        raise ValueError(f"cache option {name}={value!r} must be a finite number >= {lo:g}")
    return float(value)


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"cache option {name}={value!r} must be an integer >= {lo}")
    return value


class TeaCache(Cache):
    """TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
    Model", 2025): skip the whole block stack while the accumulated change of the first block's
    timestep-modulated input stays under ``threshold``, reusing the stack's last residual.

    The per-row relative L1 change of the modulated input is rescaled by the polynomial
    ``coefficients`` (highest power first, as ``numpy.polyval``; ``[1, 0]`` is the identity)
    before accumulating; the accumulator resets when a row computes. The first ``warmup`` calls
    always compute.
    """

    name = "teacache"

    def __init__(self, *, threshold: float = 0.1, coefficients: Sequence[float] = (1.0, 0.0), warmup: int = 1):
        self.threshold = _check("threshold", threshold)
        self.coefficients = [float(c) for c in coefficients]
        if not self.coefficients or not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"cache option coefficients={coefficients!r} must be a non-empty list of finite numbers")
        self.warmup = _check_int("warmup", warmup, 1)

    def forward(self, call):
        st, streams = call.state, call.streams
        ind = call.indicator()
        compute = None  # every row
        if call.index >= self.warmup and "residual" in st:
            x = rel_l1(ind, st["indicator"])
            est = torch.zeros_like(x)
            for c in self.coefficients:  # Horner: polyval(coefficients, x)
                est = est * x + c
            st["acc"] = st["acc"] + est
            compute = st["acc"] >= self.threshold
        st["indicator"] = ind
        out, rows = call.run_rows(0, call.depth, streams, compute)
        if rows is None:
            st["residual"] = tuple(o - i for o, i in zip(out, streams))
            st["acc"] = torch.zeros(call.batch, device=ind.device)
        elif rows.numel():
            st["residual"] = scatter(st["residual"], rows, [o - i.index_select(0, rows) for o, i in zip(out, streams)])
            st["acc"] = st["acc"].index_fill(0, rows, 0.0)
        if rows is None:  # every row computed: nothing to reuse
            return out
        return scatter(tuple(i + r for i, r in zip(streams, st["residual"])), rows, out)


class FirstBlockCache(Cache):
    """First-block cache (ParaAttention's FBCache, after TeaCache): always run the first block;
    where its residual changed by less than ``threshold`` (relative L1) since the row's last full
    computation, reuse the residual of the remaining blocks."""

    name = "first_block"

    def __init__(self, *, threshold: float = 0.08, warmup: int = 1):
        self.threshold = _check("threshold", threshold)
        self.warmup = _check_int("warmup", warmup, 1)

    def forward(self, call):
        st, streams = call.state, call.streams
        first = call.run(0, 1, streams)
        r1 = first[0] - streams[0]
        compute = None
        if call.index >= self.warmup and "rest" in st:
            compute = rel_l1(r1, st["r1"]) >= self.threshold
        out, rows = call.run_rows(1, call.depth, first, compute)
        if rows is None:
            st["rest"] = tuple(o - f for o, f in zip(out, first))
            st["r1"] = r1
        elif rows.numel():
            st["rest"] = scatter(st["rest"], rows, [o - f.index_select(0, rows) for o, f in zip(out, first)])
            st["r1"] = st["r1"].index_copy(0, rows, r1.index_select(0, rows))
        if rows is None:  # every row computed: nothing to reuse
            return out
        return scatter(tuple(f + r for f, r in zip(first, st["rest"])), rows, out)


class TaylorSeer(Cache):
    """TaylorSeer (Liu et al., "From Reusing to Forecasting: Accelerating Diffusion Models with
    TaylorSeers", 2025): compute the block stack every ``interval`` calls and in between forecast
    its residual by a Taylor (Newton divided-difference) expansion of order ``order`` in the
    network's time input, built from the last ``order + 1`` full computations.

    A fixed schedule: no data-dependent decision, so no host read. The paper forecasts every
    module's features and differences in step index; this forecasts the stack's residual in the
    actual time input, which stays exact for any grid spacing.
    """

    name = "taylorseer"
    syncs = False

    def __init__(self, *, interval: int = 3, order: int = 1, warmup: int = 2):
        self.interval = _check_int("interval", interval, 1)
        self.order = _check_int("order", order, 0)
        self.warmup = _check_int("warmup", warmup, 1)

    def forward(self, call):
        st, streams = call.state, call.streams
        hist = st.setdefault("history", [])  # [(t, residual streams)], newest first
        k = call.index
        full = k < max(self.warmup, self.order + 1) or (k - self.warmup) % self.interval == 0 or len(hist) <= self.order
        if full:
            out = call.run(0, call.depth, streams)
            hist.insert(0, (call.t.float(), tuple(o - i for o, i in zip(out, streams))))
            del hist[self.order + 1:]
            return out
        return tuple(i + r.to(i.dtype) for i, r in zip(streams, self._forecast(hist, call.t.float())))

    @staticmethod
    def _forecast(hist, t):
        # Newton form: F(t) = F[t0] + F[t0,t1](t - t0) + F[t0,t1,t2](t - t0)(t - t1) + ...
        ts = [h[0] for h in hist]
        table = [list(h[1]) for h in hist]  # divided differences, column by column
        shape = lambda v, r: v.reshape((-1,) + (1,) * (r.ndim - 1))  # noqa: E731  (B,) -> (B, 1, ...)
        out = list(table[0])
        w = torch.ones_like(t)
        for j in range(1, len(hist)):
            table = [[(a - b) / shape(ts[i] - ts[i + j], a) for a, b in zip(table[i], table[i + 1])]
                     for i in range(len(table) - 1)]
            w = w * (t - ts[j - 1])
            out = [o + shape(w, d) * d for o, d in zip(out, table[0])]
        return out


@hookimpl
def register_caches(register):
    register(TeaCache)
    register(FirstBlockCache)
    register(TaylorSeer)
    register(DeepCache)
