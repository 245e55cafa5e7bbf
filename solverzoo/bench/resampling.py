"""Bootstrap intervals over samples: paired differences (the same resample indices on both sides,
which common random numbers make tight), their unpaired counterpart for comparison, and a
median with its interval."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from solverzoo.bench.estimators import recentred
from solverzoo.bench.metrics import Reference, paired_delta


# -- paired and plain bootstraps -----------------------------------------------------------------
def paired_resample(stat_a: Callable[[np.ndarray], np.ndarray], stat_b: Callable[[np.ndarray], np.ndarray], n: int, *,
                    reps: int, rng: np.random.Generator, ci: float = 0.95, recentre: bool = False) -> dict:
    """A paired bootstrap of ``stat_a - stat_b`` for two cells whose sample ``i`` shares noise and
    prompt: every replicate draws one index set ``(n,)`` with replacement and evaluates *both*
    statistics on it, so the variability the cells share cancels in the difference.

    Args:
        stat_a, stat_b: map index arrays ``(r, n)`` to statistics ``(r,)``; called with
            ``np.arange(n)[None]`` for the estimate.
        n: number of paired samples.
        recentre: interval as the bootstrap spread around its median re-centred on the estimate
            (for statistics such as FD whose resamples are biased); else plain percentile.

    Returns:
        ``{"delta", "ci_low", "ci_high", "method"}``.
    """
    full = np.arange(n)[None]
    est = float(stat_a(full)[0] - stat_b(full)[0])
    idx = rng.integers(0, n, (reps, n))
    d = np.asarray(stat_a(idx), dtype=np.float64) - np.asarray(stat_b(idx), dtype=np.float64)
    if recentre:
        lo, hi = recentred(est, d, ci)
    else:
        lo, hi = (float(v) for v in np.quantile(d, [(1 - ci) / 2, 1 - (1 - ci) / 2]))
    how = "spread re-centred on the estimate" if recentre else "percentile"
    return {"delta": est, "ci_low": lo, "ci_high": hi,
            "method": f"paired bootstrap over samples, {how}, {reps} resamples, {ci:.0%}"}


def _per_sample_stat(values: np.ndarray, stat: Callable) -> Callable[[np.ndarray], np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    return lambda idx: stat(v[idx], axis=1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, stat: Callable = np.median, reps: int = 2000,
                     rng: np.random.Generator, ci: float = 0.95) -> dict:
    """``stat(a) - stat(b)`` for per-sample values (errors, hits) of two paired cells, with the
    percentile interval of :func:`paired_resample`. ``stat`` takes ``(r, n)`` and ``axis=1``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be 1-D of the same length (sample i on both sides), got {a.shape} and {b.shape}")
    return paired_resample(_per_sample_stat(a, stat), _per_sample_stat(b, stat), len(a), reps=reps, rng=rng, ci=ci)


def unpaired_bootstrap(a: np.ndarray, b: np.ndarray, *, stat: Callable = np.median, reps: int = 2000,
                       rng: np.random.Generator, ci: float = 0.95) -> dict:
    """The same difference with *independent* resamples of each side: the interval one gets
    without common random numbers (for comparison with :func:`paired_bootstrap`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = stat(a[rng.integers(0, len(a), (reps, len(a)))], axis=1) - stat(b[rng.integers(0, len(b), (reps, len(b)))], axis=1)
    lo, hi = np.quantile(d, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"delta": float(stat(a) - stat(b)), "ci_low": float(lo), "ci_high": float(hi),
            "method": f"unpaired bootstrap, percentile, {reps} resamples, {ci:.0%}"}


def paired_fd_difference(fa: np.ndarray, fb: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, *, reps: int = 200,
                         rng: np.random.Generator, ci: float = 0.95) -> dict:
    """FD(a, ref) - FD(b, ref) for two cells whose sample ``i`` shares noise and prompt, with the
    paired bootstrap of :func:`solverzoo.bench.metrics.paired_delta` (the same resample indices
    for both cells, interval re-centred on the estimate). A thin adapter: plain statistics in, the
    seed drawn from ``rng``.

    Returns:
        ``{"delta_fid", "delta_fid_ci_low", "delta_fid_ci_high"}``.
    """
    ref = Reference(identity={}, mu=np.asarray(ref_mu, dtype=np.float64), sigma=np.asarray(ref_sigma, dtype=np.float64), n=0)
    seed = int(rng.integers(0, 2 ** 63 - 1))
    return paired_delta({"features": fa}, {"features": fb}, ref, reps, ci, seed=seed)


def median_ci(values: np.ndarray, reps: int = 2000, rng: np.random.Generator | None = None,
              ci: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and its percentile-bootstrap interval (resamples of all values
    with replacement). NaN values are an error (say what is missing instead); ``inf`` is kept.

    Returns:
        ``(median, ci_low, ci_high)``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("median_ci needs at least one value")
    if np.isnan(v).any():
        raise ValueError(f"median_ci got {int(np.isnan(v).sum())} NaN values of {v.size}; drop or explain them first")
    rng = np.random.default_rng(0) if rng is None else rng
    boots = np.median(v[rng.integers(0, v.size, (reps, v.size))], axis=1)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(np.median(v)), float(lo), float(hi)
