"""The converged solve of a cell's ODE, cached on disk, and a cell's distance to it.

Solver accuracy shows best as the distance to the exact solution of the *same* (guided) ODE from
the *same* noise and prompts (DESIGN.md, "Measurement truths"): it needs no real data and works
for any model. This module

- computes that solution (:func:`solve`): DOP853 (adaptive, float64) where the model is cheap, or a
  high-order fixed-step solver at many steps whose own error is estimated by step doubling;
- caches it by identity (:class:`ConvergedSolve`, :func:`load_or_solve`) as safetensors with JSON
  metadata, written atomically, a corrupt or mismatched file recomputed;
- scores a cell against it (:func:`converged_metrics`): median latent RMSE, median decoded PSNR and
  the Fréchet distance between the two feature sets, each with a paired bootstrap interval;
- turns per-NFE rows into "NFE needed to reach X dB" (:func:`steps_to_converge`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from solverzoo.bench.estimators import fd_pair_batch
from solverzoo.bench.metrics import frechet, stats
from solverzoo.bench.records import config_hash
from solverzoo.bench.resampling import median_ci

__all__ = [
    "PSNR_CAP_DB",
    "ConvergedSolve",
    "converged_metrics",
    "fd_converged",
    "load_or_solve",
    "per_sample_psnr",
    "per_sample_rmse",
    "prompts_hash",
    "software_versions",
    "solve",
    "step_grid",
    "steps_to_converge",
    "stochastic_converged_metrics",
]

PSNR_CAP_DB = 100.0
"""PSNR of (numerically) identical images: an MSE of 1e-10 on [0, 1] images. Float32 rounding
alone gives about 140 dB, so any value this high means "identical at decode precision"; a finite
cap keeps medians, bootstrap quantiles and differences well defined (``inf - inf`` is NaN)."""

_META_KEY = "solverzoo_converged"


# -- identity and cache -------------------------------------------------------------------------
def software_versions() -> dict:
    """Versions that can change a converged solve's numbers."""
    import scipy

    import solverzoo

    return {"solverzoo": solverzoo.__version__, "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def prompts_hash(prompts) -> str:
    """A short sha256 of the prompts (strings or labels) in order."""
    return hashlib.sha256(json.dumps(list(prompts), default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ConvergedSolve:
    """What fixes a converged solve, solver-independent: the ODE (backbone and weights, guidance
    and scale, schedule, start and end times), its starting points (seeds, prompts, shape), the
    method and its accuracy settings, and the software. Two cells that differ only in solver, grid
    or step count share one converged solve.

    Attributes:
        backbone: backbone name; weights_id: a hash of its weights.
        guidance: guidance method name (None: unguided); guidance_scale: its scale.
        schedule: the schedule's ``describe()`` dict.
        t_start, t_end: the ODE's interval (the grid's first and last times).
        seeds: the per-sample seeds, in order; prompts: :func:`prompts_hash` of the prompts.
        shape: the state's shape ``(n, ...)``.
        method: ``"dop853"`` or a fixed-step solver name; options: its settings
            (rtol/atol, or steps and grid).
        versions: :func:`software_versions`.
    """

    backbone: str
    weights_id: str
    guidance: str | None
    guidance_scale: float | None
    schedule: dict
    t_start: float
    t_end: float
    seeds: tuple
    prompts: str
    shape: tuple
    method: str = "dop853"
    options: dict = dataclasses.field(default_factory=lambda: {"rtol": 1e-10, "atol": 1e-10})
    versions: dict = dataclasses.field(default_factory=software_versions)

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds"], d["shape"] = [int(s) for s in self.seeds], [int(s) for s in self.shape]
        d["t_start"], d["t_end"] = float(self.t_start), float(self.t_end)
        return json.loads(json.dumps(d, sort_keys=True, default=str))  # the form it takes after a JSON round trip

    @property
    def key(self) -> str:
        return config_hash(self.identity())

    def path(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir) / f"converged-{self.key}.safetensors"


def _as_identity(identity: ConvergedSolve | dict) -> dict:
    if isinstance(identity, ConvergedSolve):
        return identity.identity()
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _write(path: Path, x: Tensor, meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"x": x.detach().cpu().contiguous()}, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True, default=str)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read(path: Path, identity: dict) -> tuple[Tensor, dict]:
    """The cached solve, or ValueError / OSError / safetensors errors saying what is wrong with it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get(_META_KEY, "null") or "null")
        if not isinstance(meta, dict):
            raise ValueError("no converged-solve metadata")
        x = fh.get_tensor("x")
    if meta.get("identity") != identity:
        raise ValueError("its identity differs from the requested one (hash collision or a hand-edited file)")
    want = identity.get("shape")
    if want is not None and list(x.shape) != list(want):
        raise ValueError(f"its tensor has shape {list(x.shape)}, the identity says {want}")
    if not torch.isfinite(x).all():
        raise ValueError("its tensor has NaN or inf values")
    return x, meta.get("info", {})


def load_or_solve(identity: ConvergedSolve | dict, cache_dir: str | Path,
                  fn: Callable[[], tuple[Tensor, dict]]) -> tuple[Tensor, dict]:
    """The converged solve for ``identity``: read from ``<cache_dir>/converged-<key>.safetensors``
    when a valid file is there, else ``fn()`` (returning ``(x_ref, info)``) written atomically
    (temporary file + ``os.replace``). A file that does not load, lacks metadata, has another
    identity, the wrong shape or non-finite values is reported (a warning) and recomputed.

    Returns:
        ``(x_ref, info)``; ``info["cache"]`` is ``"hit"``, ``"miss"`` or ``"recomputed: <why>"``
        and ``info["cache_path"]`` the file.
    """
    ident = _as_identity(identity)
    path = Path(cache_dir) / f"converged-{config_hash(ident)}.safetensors"
    status = "miss"
    if path.exists():
        try:
            x, info = _read(path, ident)
            return x, {**info, "cache": "hit", "cache_path": str(path)}
        except Exception as exc:  # noqa: BLE001  (any unreadable file is recomputed, with the reason)
            status = f"recomputed: {path.name} was unusable ({type(exc).__name__}: {exc})"
            warnings.warn(f"converged-solve cache {path}: {status}", RuntimeWarning, stacklevel=2)
    x, info = fn()
    info = dict(info)
    _write(path, x, {"identity": ident, "key": config_hash(ident), "info": info})
    return x, {**info, "cache": status, "cache_path": str(path)}


# -- the solve ----------------------------------------------------------------------------------
def step_grid(schedule, t_start: float, t_end: float, steps: int, spacing: str = "logsnr") -> Tensor:
    """``steps + 1`` times from ``t_start`` to ``t_end`` (float64), uniform in log-SNR
    (``"logsnr"``) or in t (``"linspace"``). Grids of ``M`` and ``2M`` steps are nested, as step
    doubling needs."""
    if spacing == "linspace":
        return torch.linspace(float(t_start), float(t_end), steps + 1, dtype=torch.float64)
    if spacing != "logsnr":
        raise ValueError(f"unknown spacing {spacing!r}; expected 'logsnr' or 'linspace'")
    lam = schedule.lam(torch.tensor([t_start, t_end], dtype=torch.float64))
    if not torch.isfinite(lam).all():
        raise ValueError(f"log-SNR is not finite at t_start={t_start} or t_end={t_end} (sigma = 0 or alpha = 0 there); "
                         "use spacing='linspace' or method='dop853'")
    g = schedule.t_of_lam(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64)).to(torch.float64)
    g[0], g[-1] = float(t_start), float(t_end)
    return g


def _rms(a: Tensor, b: Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def solve(denoiser, x_start: Tensor, t_start: float, t_end: float, *, method: str = "dop853", rtol: float = 1e-10,
          atol: float = 1e-10, steps: int = 256, spacing: str = "logsnr", estimate_error: bool = True,
          dtype: torch.dtype = torch.float64, observed_order: bool = False, **options) -> tuple[Tensor, dict]:
    """The solution of ``denoiser``'s probability-flow ODE (guided or not: any denoiser) from
    ``x_start`` at ``t_start`` to ``t_end``, in ``dtype`` (float64 by default; a float32 network
    needs float32, or a float64 copy of itself in the denoiser).

    Methods:
        ``"dop853"``: the registered adaptive Dormand-Prince 8(5,3) solver at ``rtol``/``atol``.
        With ``estimate_error``, a second solve at 1000x looser tolerances gives
        ``own_error_rms``, the RMS difference to it: an upper bound on the tight solve's error.
        A fixed-step ODE solver name (``"rk4"``, ``"dpmpp_3m"``, ``"heun"``, ...): run at ``steps``
        and ``2 * steps`` steps on nested grids (:func:`step_grid`); by Richardson's argument the
        finer result's error is about ``|x_2M - x_M| / (2^p - 1)`` for a method of order ``p``,
        reported as ``own_error_rms`` (RMS over all elements) and ``own_error_median`` (median of
        per-sample RMS). The ``2M`` result is returned. ``observed_order``: a third solve at
        ``M / 2`` steps measures the order actually reached, and ``p`` is the smaller of it and
        the declared order (a model not smooth in t converges below the declared order).

    Returns:
        ``(x_ref, info)``: ``info`` has ``method``, settings, ``nfe`` (per sample), ``wall_s``,
        ``own_error_rms``, ``own_error_median``, ``own_error_method``.
    """
    import solverzoo as sz

    x = x_start.detach().to(dtype)
    t0 = time.perf_counter()
    if method == "dop853":
        run = lambda r, a: sz.sample("dop853", denoiser, x.clone(), torch.tensor([t_start, t_end], dtype=torch.float64),
                                     rtol=r, atol=a, **options)
        res = run(rtol, atol)
        info = {"method": "dop853", "rtol": rtol, "atol": atol, "nfe": res.nfe}
        if estimate_error:
            loose = run(rtol * 1e3, atol * 1e3).x
            per = ((loose - res.x) ** 2).reshape(len(x), -1).mean(1).sqrt()
            info.update(own_error_rms=_rms(loose, res.x), own_error_median=float(per.median()),
                        own_error_per_sample=per.tolist(),
                        own_error_method="RMS difference to a solve at 1000x looser tolerances (upper bound)")
        else:
            info.update(own_error_rms=math.nan, own_error_median=math.nan, own_error_method="not estimated")
        info["wall_s"] = time.perf_counter() - t0
        return res.x, info
    solver = sz.get_solver(method)
    if solver.is_stochastic(**options) or solver.adaptive:
        raise ValueError(f"solver {method!r} is stochastic or adaptive; a converged solve needs 'dop853' or a "
                         "fixed-step ODE solver")
    p = int(solver.declared_order(**options))
    coarse = sz.sample(solver, denoiser, x.clone(), step_grid(denoiser.schedule, t_start, t_end, steps, spacing), **options)
    fine = sz.sample(solver, denoiser, x.clone(), step_grid(denoiser.schedule, t_start, t_end, 2 * steps, spacing), **options)
    p_eff, how = float(p), f"declared order {p}"
    if observed_order and steps >= 2:
        # a model whose velocity is not smooth in t (e.g. near the final jump to t = 0) converges below
        # the declared order, and dividing by 2^p - 1 would then understate the error: measure the
        # order from a third, coarser solve and use the smaller of the two
        half = sz.sample(solver, denoiser, x.clone(), step_grid(denoiser.schedule, t_start, t_end, steps // 2, spacing),
                         **options)
        ratio = _rms(coarse.x, half.x) / max(_rms(fine.x, coarse.x), 1e-300)
        p_obs = math.log2(ratio) if ratio > 0 else 0.0
        p_eff = float(min(max(p_obs, 0.5), p))
        how = f"observed order {p_obs:.2f} ({steps // 2}/{steps}/{2 * steps} steps), declared {p}: using {p_eff:.2f}"
    factor = 2 ** p_eff - 1
    per = ((fine.x - coarse.x) ** 2).reshape(len(x), -1).mean(1).sqrt() / factor
    info = {"method": method, "order": p, "order_used": p_eff, "steps": 2 * steps, "spacing": spacing, "nfe": fine.nfe,
            "own_error_rms": _rms(fine.x, coarse.x) / factor, "own_error_median": float(per.median()),
            "own_error_per_sample": per.tolist(),
            "own_error_method": f"step doubling ({steps} vs {2 * steps} steps): |x_2M - x_M| / (2^p - 1), {how}",
            "wall_s": time.perf_counter() - t0}
    return fine.x, info


# -- per-cell metrics ---------------------------------------------------------------------------
def per_sample_rmse(x: Tensor, ref: Tensor) -> np.ndarray:
    """RMS over each sample's elements of ``x - ref`` (float64), ``(n,)``."""
    if x.shape != ref.shape:
        raise ValueError(f"cell and converged latents differ in shape: {tuple(x.shape)} vs {tuple(ref.shape)}")
    return ((x.double() - ref.double()) ** 2).reshape(len(x), -1).mean(1).sqrt().cpu().numpy()


def per_sample_psnr(images: Tensor, ref_images: Tensor, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """PSNR in dB of decoded images in [-1, 1] against the decoded converged solve, both mapped to
    [0, 1] (``(x + 1) / 2``, clamped, as they would be saved): ``10 log10(1 / MSE)`` per sample,
    capped at ``cap_db`` (identical images: MSE 0 gives ``cap_db``, see :data:`PSNR_CAP_DB`)."""
    if images.shape != ref_images.shape:
        raise ValueError(f"cell and converged images differ in shape: {tuple(images.shape)} vs {tuple(ref_images.shape)}")
    a = ((images.double() + 1) / 2).clamp(0, 1)
    b = ((ref_images.double() + 1) / 2).clamp(0, 1)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1).cpu().numpy()
    with np.errstate(divide="ignore"):
        psnr = -10 * np.log10(mse)
    return np.minimum(psnr, cap_db)


def fd_converged(feats: np.ndarray, ref_feats: np.ndarray, *, reps: int = 200, rng: np.random.Generator,
                 ci: float = 0.95) -> tuple[float, float, float]:
    """Fréchet distance (float64) between a cell's features and the converged solve's, with a
    *paired* bootstrap interval: sample ``i`` of both shares noise and prompt, so each resample
    takes the same indices on both sides. The resampled FD is biased upward (repeated rows), so
    the interval is the bootstrap spread around its median re-centred on the estimate, floored
    at 0. Identical feature sets give exactly ``(0, 0, 0)``.

    Returns:
        ``(fd, ci_low, ci_high)``.
    """
    fa, fb = np.asarray(feats, dtype=np.float64), np.asarray(ref_feats, dtype=np.float64)
    if fa.shape != fb.shape:
        raise ValueError(f"paired features must have the same shape (sample i on both sides), got {fa.shape} and {fb.shape}")
    if np.array_equal(fa, fb):
        return 0.0, 0.0, 0.0
    est = max(frechet(*stats(fa), *stats(fb)), 0.0)
    idx = rng.integers(0, len(fa), (reps, len(fa)))
    boots = fd_pair_batch(fa[idx], fb[idx])
    q_lo, med, q_hi = np.quantile(boots, [(1 - ci) / 2, 0.5, 1 - (1 - ci) / 2])
    return est, float(max(est - (med - q_lo), 0.0)), float(est + (q_hi - med))


def _median_fields(name: str, values: np.ndarray, reps: int, rng: np.random.Generator, ci: float) -> dict:
    m, lo, hi = median_ci(values, reps, rng, ci)
    return {name: m, f"{name}_ci_low": lo, f"{name}_ci_high": hi}


def _fd_fields(feats, ref_feats, fd_reps: int, rng: np.random.Generator, ci: float) -> dict:
    if feats is None or ref_feats is None:
        return {"fd_converged": math.nan, "fd_converged_ci_low": math.nan, "fd_converged_ci_high": math.nan,
                "fd_converged_note": "no features given for the cell or the converged solve"}
    fd, lo, hi = fd_converged(feats, ref_feats, reps=fd_reps, rng=rng, ci=ci)
    return {"fd_converged": fd, "fd_converged_ci_low": lo, "fd_converged_ci_high": hi}


def converged_metrics(latents: Tensor, ref_latents: Tensor, *, images: Tensor | None = None,
                      ref_images: Tensor | None = None, feats: np.ndarray | None = None,
                      ref_feats: np.ndarray | None = None, stochastic: bool = False, reps: int = 2000,
                      fd_reps: int = 200, rng: np.random.Generator, ci: float = 0.95,
                      cap_db: float = PSNR_CAP_DB) -> dict:
    """A cell against the converged solve of its ODE (same noise, same prompts, sample ``i`` paired).

    Fields: ``err_converged`` (median per-sample latent RMSE) and ``psnr_converged`` (median
    per-sample PSNR of decoded images, dB, capped at ``cap_db``), each with a percentile-bootstrap
    interval (``*_ci_low``/``*_ci_high``, ``reps`` resamples); ``fd_converged`` with a paired
    bootstrap interval (:func:`fd_converged`). Missing inputs give NaN with a ``*_note``. For a
    stochastic solver see :func:`stochastic_converged_metrics` (chosen here by ``stochastic``).
    """
    if stochastic:
        return stochastic_converged_metrics(feats, ref_feats, fd_reps=fd_reps, rng=rng, ci=ci)
    out = _median_fields("err_converged", per_sample_rmse(latents, ref_latents), reps, rng, ci)
    if images is not None and ref_images is not None:
        out.update(_median_fields("psnr_converged", per_sample_psnr(images, ref_images, cap_db), reps, rng, ci))
        out["psnr_cap_db"] = cap_db
    else:
        out.update(psnr_converged=math.nan, psnr_converged_ci_low=math.nan, psnr_converged_ci_high=math.nan,
                   psnr_converged_note="no decoded images given for the cell or the converged solve")
    out.update(_fd_fields(feats, ref_feats, fd_reps, rng, ci))
    return out


def stochastic_converged_metrics(feats: np.ndarray | None, ref_feats: np.ndarray | None, *, fd_reps: int = 200,
                                 rng: np.random.Generator, ci: float = 0.95) -> dict:
    """For an SDE sampler: per-sample distances to the ODE's solution are not meaningful (its
    injected noise moves every sample off the ODE path by design), so ``err_converged`` and
    ``psnr_converged`` are NaN with the reason; the distribution-level ``fd_converged`` is kept."""
    why = "stochastic solver: per-sample distance to the ODE solution is not meaningful; compare fd_converged"
    nan = {f"{m}{s}": math.nan for m in ("err_converged", "psnr_converged") for s in ("", "_ci_low", "_ci_high")}
    return {**nan, "err_converged_note": why, "psnr_converged_note": why, **_fd_fields(feats, ref_feats, fd_reps, rng, ci)}


def steps_to_converge(rows: list[dict], thresholds_db=(30, 40, 50)) -> dict:
    """The smallest NFE at which a solver's decoded PSNR to the converged solve is *resolved*
    above each threshold: its interval's lower end (``psnr_converged_ci_low``) is above it.

    Args:
        rows: dicts with ``nfe``, ``psnr_converged``, ``psnr_converged_ci_low`` and optionally
            ``solver`` (rows are grouped by it; without it, all rows are one group ``""``).

    Returns:
        ``{solver: {"nfe_to_30db": nfe | reason, ...}}``; reason ``"not distinguishable at this N"``
        when some median reaches the threshold but no interval clears it, else ``"not reached"``.
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get("solver", "")), []).append(r)
    out = {}
    for name, rs in groups.items():
        rs = sorted((r for r in rs if not math.isnan(float(r["psnr_converged"]))), key=lambda r: r["nfe"])
        res = {}
        for th in thresholds_db:
            hit = [r["nfe"] for r in rs if float(r["psnr_converged_ci_low"]) > th]
            if hit:
                res[f"nfe_to_{th:g}db"] = int(hit[0])
            elif any(float(r["psnr_converged"]) > th for r in rs):
                res[f"nfe_to_{th:g}db"] = "not distinguishable at this N"
            else:
                res[f"nfe_to_{th:g}db"] = "not reached"
        out[name] = res
    return out
