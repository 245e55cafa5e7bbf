"""Paired bootstrap differences between the cells of one seed set, for the report.

Every cell of a seed set shares sample ``i``'s initial noise and prompt (common random numbers),
so a difference between two cells is resampled with the *same* indices on both sides: one index
matrix per seed set (:class:`PairedGroup`), every cell's statistic evaluated on it once, and any
difference taken column by column. The shared variability cancels (DESIGN.md, "Measurement
truths": a paired FID difference has an SD of about 2 across seed sets, an unpaired one about 29).

Statistics (per-sample arrays stored beside each record by :func:`records.write_arrays`):

- ``err``: median per-sample latent RMSE to the converged solve (array ``err``);
- ``psnr``: median per-sample decoded PSNR to the converged solve, dB (array ``psnr``);
- ``acc``: prompt accuracy, the mean of the 0/1 array ``hits``;
- ``fid``: FID of the array ``features`` against the stored reference statistics;
- ``fid_conv``: FID of the converged solve's features (array :data:`CONVERGED_FEATURES_KEY`, or
  the solve's own ``features/converged-<converged_key>`` file the harness writes once per solve)
  against the same reference, so ``fid(a) - fid_conv(a)`` is the paired ΔFID against it.

Intervals: percentile for medians and means; for FID (biased upward under resampling) the
bootstrap spread around its median re-centred on the estimate, as ``metrics.paired_delta``.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solverzoo.bench.records import arrays_to_numpy, read_arrays

CONVERGED_FEATURES_KEY = "converged_features"
"""Key, in a cell's per-sample arrays, of the converged solve's metric features (sample ``i`` of
the same noise and prompt as the cell's sample ``i``). The one place to change if the harness
stores them under another name."""

REPS = 1000  # resamples for medians and means (cheap)
FID_REPS = 200  # resamples for Fréchet distances (one batched eigenvalue problem each)
CI = 0.95
_CHUNK = 50  # FID resamples per batch: bounds the (chunk, n, d) temporaries

ARRAY_OF = {"err": "err", "psnr": "psnr", "acc": "hits"}
STAT_OF = {"err": np.median, "psnr": np.median, "acc": np.mean}


@dataclass(frozen=True)
class Diff:
    """A paired difference ``a - b`` with its interval."""

    delta: float
    lo: float
    hi: float

    @property
    def resolved(self) -> bool:
        """The interval excludes zero."""
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 3, rel: bool = False) -> str:
        f = f"{{:+.{digits}{'g' if rel else 'f'}}}"
        return f"{f.format(self.delta)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def _interval(est: float, boots: np.ndarray, recentre: bool, ci: float = CI) -> tuple[float, float]:
    q = [(1 - ci) / 2, 0.5, 1 - (1 - ci) / 2]
    q_lo, med, q_hi = np.quantile(boots, q)
    if recentre:
        return float(est - (med - q_lo)), float(est + (q_hi - med))
    return float(q_lo), float(q_hi)


def load_reference(results_dir: str | Path) -> dict | None:
    """The reference statistics stored with the results (``mu``, ``sigma``, ``n``), or None."""
    ref = read_arrays(results_dir, "reference")
    if ref is None or "mu" not in ref or "sigma" not in ref:
        return None
    from solverzoo.bench.metrics import psd_sqrt

    mu, sigma = ref["mu"].double().numpy(), ref["sigma"].double().numpy()
    return {"mu": mu, "sigma": sigma, "sqrt": psd_sqrt(sigma), "n": int(ref["n"]) if "n" in ref else 0}


class PairedGroup:
    """The cells of one seed set and sample count: one resample index matrix shared by all.

    Args:
        results_dir: where the per-cell arrays are.
        hashes: the cells' config hashes.
        n: samples per cell (sample ``i`` paired across cells).
        reference: :func:`load_reference`'s dict, or None (no FID differences then).
        seed: the resampling seed (the report uses one per seed set, so reruns agree).
    """

    def __init__(self, results_dir: str | Path, hashes, n: int, reference: dict | None, seed: int,
                 reps: int = REPS, fid_reps: int = FID_REPS):
        self.n, self.reference = int(n), reference
        self.idx = np.random.default_rng(seed).integers(0, self.n, (reps, self.n))
        self.fid_idx = self.idx[:fid_reps]
        self.arrays: dict[str, dict] = {}
        for h in hashes:
            a = read_arrays(results_dir, h)
            self.arrays[h] = arrays_to_numpy(a) if a is not None else {}
            if self.arrays[h] and CONVERGED_FEATURES_KEY not in self.arrays[h]:
                conv = _converged_features(results_dir, h)
                if conv is not None:
                    self.arrays[h][CONVERGED_FEATURES_KEY] = conv
        self._cache: dict = {}

    def has(self, metric: str, h: str) -> bool:
        return self.stat(metric, h) is not None

    def stat(self, metric: str, h: str) -> tuple[float, np.ndarray] | None:
        """``(estimate, bootstrap values on the shared indices)`` of ``metric`` for cell ``h``, or
        None when its arrays are missing, have another length or hold NaN (stochastic solvers)."""
        key = (metric, h)
        if key not in self._cache:
            self._cache[key] = self._compute(metric, h)
        return self._cache[key]

    def _compute(self, metric: str, h: str):
        arrs = self.arrays.get(h, {})
        if metric in ARRAY_OF:
            v = arrs.get(ARRAY_OF[metric])
            if v is None or np.ndim(v) != 1 or len(v) != self.n or not np.isfinite(v).all():
                return None
            v = np.asarray(v, dtype=np.float64)
            return float(STAT_OF[metric](v)), STAT_OF[metric](v[self.idx], axis=1)
        key = {"fid": "features", "fid_conv": CONVERGED_FEATURES_KEY}.get(metric)
        if key is None:
            raise ValueError(f"unknown paired metric {metric!r}; expected err, psnr, acc, fid or fid_conv")
        f = arrs.get(key)
        if self.reference is None or f is None or np.ndim(f) != 2 or len(f) != self.n or not np.isfinite(f).all():
            return None
        return self._fid(np.asarray(f, dtype=np.float64))

    def _fid(self, f: np.ndarray) -> tuple[float, np.ndarray]:
        digest = hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest()  # converged features repeat across cells
        if ("fd", digest) in self._cache:
            return self._cache[("fd", digest)]
        from solverzoo.bench.estimators import fd_batch

        ref = self.reference
        est = float(fd_batch(f[None], ref["mu"], ref_sqrt=ref["sqrt"])[0])
        boots = np.concatenate([fd_batch(f[self.fid_idx[c:c + _CHUNK]], ref["mu"], ref_sqrt=ref["sqrt"])
                                for c in range(0, len(self.fid_idx), _CHUNK)])
        self._cache[("fd", digest)] = (est, boots)
        return est, boots

    def diff(self, metric: str, a: str, b: str, metric_b: str | None = None) -> Diff | None:
        """``metric(a) - metric_b(b)`` (``metric_b`` defaults to ``metric``) with its paired
        95 % interval, or None when either side is not measured."""
        sa, sb = self.stat(metric, a), self.stat(metric_b or metric, b)
        if sa is None or sb is None:
            return None
        fid = metric.startswith("fid")
        n_boot = min(len(sa[1]), len(sb[1]))
        d = sa[1][:n_boot] - sb[1][:n_boot]
        est = sa[0] - sb[0]
        lo, hi = _interval(est, d, recentre=fid)
        return Diff(est, lo, hi)

    def fid_vs_converged(self, h: str) -> Diff | None:
        """FID(cell) - FID(its converged solve), paired, where the converged features exist."""
        return self.diff("fid", h, h, metric_b="fid_conv")

    def ci(self, metric: str, h: str) -> tuple[float, float, float] | None:
        """``(estimate, lo, hi)`` of one cell's statistic on the shared resamples."""
        s = self.stat(metric, h)
        if s is None:
            return None
        lo, hi = _interval(s[0], s[1], recentre=metric.startswith("fid"))
        return s[0], lo, hi


def _converged_features(results_dir: str | Path, h: str) -> np.ndarray | None:
    """The features of cell ``h``'s converged solve: stored once per solve identity as
    ``features/converged-<converged_key>`` (the key is in the cell's record), shared by its cells."""
    import json

    try:
        key = json.loads((Path(results_dir) / "records" / f"{h}.json").read_text()).get("converged_key")
    except (OSError, ValueError):
        return None
    conv = read_arrays(results_dir, f"converged-{key}") if key else None
    if conv is None or "features" not in conv:
        return None
    return conv["features"].double().numpy()


def seed_for(seed_set) -> int:
    """The report's resampling seed for a seed set (fixed, so a regenerated report agrees)."""
    try:
        return 20240611 + int(seed_set)
    except (TypeError, ValueError):  # None / NaN (records without a seed set) or a name
        return 20240611 + zlib.crc32(str(seed_set).encode())
