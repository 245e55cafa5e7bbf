"""Formatting helpers shared by the report's sections: labels of cells and series, numbers with
their intervals, and why a metric has no values."""
from __future__ import annotations

import json
import math


def label(r) -> str:
    return f"{r['guidance']} {r['scale']:g}"


def series(solver, grid, cache) -> str:
    if grid == "none":  # a generator backbone's cells (autoregressive): no time grid to name
        return str(solver)
    return f"{solver} ({grid})" + ("" if cache in (None, "none") else f" + {cache}")


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices on the Pareto front of (lower FID, higher accuracy)."""
    front = []
    for i, (f, a) in enumerate(points):
        if not any((f2 <= f and a2 >= a) and (f2 < f or a2 > a) for j, (f2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


def grid_label(grid, options) -> str:
    opts = json.loads(options) if isinstance(options, str) and options else (options or {})
    if grid == "optimised" and isinstance(opts, dict) and opts.get("key"):
        return f"optimised:{opts['key']}"
    return str(grid)


def cache_label(cache, options) -> str:
    if cache in (None, "none") or (isinstance(cache, float) and math.isnan(cache)):
        return "none"
    opts = json.loads(options) if isinstance(options, str) and options else (options or {})
    return f"{cache}(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")" if opts else str(cache)


def delta(r, col) -> str:
    v, lo, hi = (num(r.get(c)) for c in (col, col + "_ci_low", col + "_ci_high"))
    if any(math.isnan(x) for x in (v, lo, hi)):
        return "n/a"
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def inside(v, lo, hi) -> str:
    vals = [v, lo, hi]
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in vals):
        return "n/a"
    return "yes" if float(lo) <= float(v) <= float(hi) else "no"


def fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def why(df, metric) -> str:
    ws = sorted({w for ws in df.warnings.dropna() for w in json.loads(ws) if metric.split("_")[0] in w})
    return "; ".join(ws) if ws else "the metric was disabled or does not apply"
