"""Pinned metrics: FID / KID through torchmetrics with a named feature extractor, prompt
accuracy by the world's scorer, CLIP score through torchmetrics, bootstrap
confidence intervals, and the settings that pin every number."""
from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


class MetricUnavailable(RuntimeError):
    """A metric that does not apply here (skipped with this reason, not a crash)."""


@dataclass
class Extractor:
    name: str
    weights_hash: str
    num_features: int
    fn: Callable[[Tensor], Tensor]  # images in [-1, 1] -> (B, d) features
    resize: int | None = None
    antialias: bool = True

    def __call__(self, images: Tensor) -> Tensor:
        if self.resize:
            images = nn.functional.interpolate(images, size=(self.resize, self.resize), mode="bilinear",
                                               antialias=self.antialias, align_corners=False)
        with torch.no_grad():
            return torch.cat([self.fn(images[i:i + 256]) for i in range(0, len(images), 256)]).double()

    def identity(self) -> dict:
        return {"name": self.name, "weights_sha256": self.weights_hash, "num_features": self.num_features,
                "resize": self.resize, "antialias": self.antialias}


def _sha(module: nn.Module) -> str:
    from solverzoo.backbone import state_dict_sha

    return state_dict_sha(module)


def make_extractor(kind: str, backbone, cfg: dict) -> Extractor:
    """The feature extractor ``metrics.feature`` names: ``domain`` (the backbone's world's own,
    :meth:`solverzoo.backbone.World.features`), ``inception`` or ``clip``."""
    if kind == "domain":
        spec = backbone.world.features() if backbone.world is not None else None
        if spec is None:
            why = backbone.world.not_applicable.get("fid") if backbone.world is not None else None
            raise MetricUnavailable(why or f"backbone {backbone.name!r} has no domain classifier; use metrics.feature=inception "
                                    "or clip")
        if not spec.images:  # coordinates, not images: never resized
            return Extractor(spec.name, spec.weights_hash, int(spec.num_features), spec.fn)
        return Extractor(spec.name, spec.weights_hash, int(spec.num_features), spec.fn, cfg.get("resize"),
                         cfg.get("antialias", True))
    if kind == "inception":
        from solverzoo.models.inception import file_sha, how_to_get_weights, load_fid_inception, to_uint8

        path = cfg.get("inception_weights")
        if not path or not Path(path).is_file():
            raise MetricUnavailable(f"feature=inception: {how_to_get_weights('metrics.inception_weights')}")
        mode = "antialias" if cfg.get("antialias", True) else "tf1"  # torchmetrics' default / torch-fidelity's
        net = load_fid_inception(path, resize=mode)  # self-contained: no torch-fidelity, no torchvision
        return Extractor(f"inception-v3-compat pool3 (uint8, {mode} resize to 299)", file_sha(path), 2048,
                         lambda x: net.to(x.device)(to_uint8(x)), cfg.get("resize"), cfg.get("antialias", True))
    if kind == "clip":
        model_id = cfg.get("clip_model")
        if not model_id:
            raise MetricUnavailable("feature=clip needs metrics.clip_model=PATH (a local Hugging Face CLIP folder)")
        from solverzoo.models.nets.clip import hf_clip_pair

        wrapped, _ = hf_clip_pair(model_id)  # checked, safetensors only, trust_remote_code=False
        model = wrapped.model
        size = model.config.vision_config.image_size
        mean = torch.tensor([0.4815, 0.4578, 0.4082])[:, None, None]
        std = torch.tensor([0.2686, 0.2613, 0.2758])[:, None, None]
        fn = lambda x: wrapped.get_image_features(pixel_values=(((x + 1) / 2) - mean) / std)  # noqa: E731
        return Extractor(f"clip:{model_id}", _sha(model), model.config.projection_dim, fn, size, cfg.get("antialias", True))
    raise MetricUnavailable(f"unknown metrics.feature {kind!r}; expected domain, inception or clip")


def psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(mu1, s1, mu2, s2, s2_sqrt: np.ndarray | None = None) -> float:
    """Frechet distance between two Gaussians, in float64:
    ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr sqrt(s2^1/2 s1 s2^1/2)`` (the symmetric form of
    ``tr sqrt(s1 s2)``; pass ``s2_sqrt`` to reuse it across bootstrap resamples)."""
    h = psd_sqrt(s2) if s2_sqrt is None else s2_sqrt
    ev = np.linalg.eigvalsh(h @ s1 @ h)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


@dataclass
class Reference:
    identity: dict
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: Tensor | None = None  # None for .npz statistics (no KID)
    prompts: list = field(default_factory=list)
    _sqrt: np.ndarray | None = None
    metrics: dict = field(default_factory=dict, repr=False)  # torchmetrics objects with the real side filled
    info: dict = field(default_factory=dict, repr=False)  # how it was made: real images used, compute time, cache

    @property
    def sigma_sqrt(self) -> np.ndarray:
        if self._sqrt is None:
            self._sqrt = psd_sqrt(self.sigma)  # once per reference, reused by every cell's bootstrap
        return self._sqrt


def _identity_module(d: int) -> nn.Module:
    m = nn.Identity()
    m.num_features = d
    return m


def fid_kid(fake: Tensor, ref: Reference, *, bootstrap: int, ci: float, kid_subset: int, seed: int = 0,
            fid_inf_boot: int = 50, fid_inf_sizes: int = 8, kid_subsets: int = 100, kid_boot: int = 200,
            kid_reference_n: int = 1000) -> dict:
    """FID at N (torchmetrics, float64 statistics) with a bootstrap CI over samples; FID-infinity
    (:func:`solverzoo.bench.estimators.fid_infinity_ci`, Chong & Forsyth 2020) with its interval;
    KID by :func:`solverzoo.bench.estimators.kid_unbiased` (unbiased MMD^2, cubic kernel, on
    features standardised by the reference, against the first ``kid_reference_n`` reference
    features) with its bootstrap interval.

    Costs at N = 384, d = 128 on one core: FID bootstrap (``bootstrap`` = 100) ~0.3 s, FID-inf
    (``fid_inf_boot`` = 50 resamples x ``fid_inf_sizes`` = 8 sizes, each a 128 x 128 eigenproblem)
    ~1 s, KID (1,000 reference features, 200 resamples) ~0.7 s."""
    from solverzoo.bench import estimators

    n, d = fake.shape
    f = fake.numpy()
    # the bootstrap (numpy / LAPACK, which release the GIL) runs on a second thread while
    # torchmetrics computes FID and the estimators run on this one: independent and deterministic
    boots_future = _pool().submit(bootstrap_fid, f, ref, bootstrap, np.random.default_rng(seed))
    fid = _metric(ref, "fid", d)
    fid.update(fake.double(), real=False)
    out = {"fid": float(fid.compute())}
    sizes = estimators.default_sizes(n, d, count=fid_inf_sizes)
    if fid_inf_boot and len(sizes) >= 2:
        fi = estimators.fid_infinity_ci(f, ref.mu, ref.sigma, sizes=sizes, boot=fid_inf_boot, ci=ci,
                                        rng=np.random.default_rng([seed, 1]), ref_sqrt=ref.sigma_sqrt)
        out.update(fid_inf=fi["fid_inf"], fid_inf_ci_low=fi["fid_inf_ci_low"], fid_inf_ci_high=fi["fid_inf_ci_high"],
                   fid_inf_slope=fi["slope"], subsample_sizes_fid_inf=fi["sizes"], method_fid_inf=fi["fid_inf_ci_method"])
    else:  # (text fields never start with a numeric prefix such as fid_inf or kid_ci_: records.NUMERIC_PREFIXES)
        out.update(fid_inf=math.nan, fid_inf_ci_low=math.nan, fid_inf_ci_high=math.nan,
                   note_fid_inf=f"FID-infinity needs at least two sub-sample sizes (N = {n}) and fid_inf_boot > 0")
    if ref.features is not None and n >= 2:
        real = ref.features[:kid_reference_n].numpy()
        k = estimators.kid_unbiased(f, real, subset_size=kid_subset, subsets=kid_subsets, rng=np.random.default_rng([seed, 2]),
                                    boot=kid_boot, ci=ci)
        out.update({key: k[key] for key in ("kid", "kid_ci_low", "kid_ci_high", "kid_full", "kid_subset_std",
                                            "kid_subset_size", "kid_subsets", "kid_standardised")},
                   method_kid=k["kid_ci_method"], kid_reference_n=len(real))
    else:
        out.update(kid=math.nan, kid_ci_low=math.nan, kid_ci_high=math.nan)
    boots = boots_future.result()
    if boots:
        # FID is biased upward and resamples with repeated samples are biased further, so the bootstrap
        # distribution sits above the estimate; its spread (not its location) measures sampling
        # variability: the interval is that spread around the bootstrap median, re-centred on the estimate
        q_lo, med, q_hi = np.quantile(boots, [(1 - ci) / 2, 0.5, 1 - (1 - ci) / 2])
        lo, hi = max(out["fid"] - (med - q_lo), 0.0), out["fid"] + (q_hi - med)
    else:
        lo = hi = math.nan
    out.update(fid_ci_low=float(lo), fid_ci_high=float(hi),
               fid_ci_method=f"bootstrap spread over samples re-centred on the estimate, {bootstrap} resamples",
               _fid_boot=boots)  # kept by the harness for paired comparisons (not a record field)
    return out


def fid_kid_settings(m: dict) -> dict:
    """The keyword arguments of :func:`fid_kid` from a metrics config (defaults for settings an
    older config lacks)."""
    return {"bootstrap": int(m["bootstrap"]), "ci": float(m["ci"]), "kid_subset": int(m["kid_subset_size"]),
            "fid_inf_boot": int(m.get("fid_inf_boot", 50)), "fid_inf_sizes": int(m.get("fid_inf_sizes", 8)),
            "kid_subsets": int(m.get("kid_subsets", 100)), "kid_boot": int(m.get("kid_boot", 200)),
            "kid_reference_n": int(m.get("kid_reference_n", 1000))}


def _metric(ref: Reference, kind: str, d: int, subset: int = 0):
    """The torchmetrics FID / KID object for ``ref``, its real-side state filled once and kept
    across cells (``reset_real_features=False``); only the fake side is reset per cell."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    key = (kind, d, subset)
    metric = ref.metrics.get(key)
    if metric is None:
        # features arrive already gathered from every rank (run.py), so torchmetrics must not sum
        # its states across processes again
        if kind == "fid":
            metric = FrechetInceptionDistance(feature=_identity_module(d), normalize=True, sync_on_compute=False,
                                              reset_real_features=False)
            mu, sig = torch.from_numpy(ref.mu), torch.from_numpy(ref.sigma)
            metric.real_features_sum = mu * ref.n
            metric.real_features_cov_sum = sig * (ref.n - 1) + ref.n * torch.outer(mu, mu)
            metric.real_features_num_samples = torch.tensor(ref.n)
        else:
            metric = KernelInceptionDistance(feature=_identity_module(d), subsets=50, subset_size=subset, normalize=True,
                                             sync_on_compute=False, reset_real_features=False)
            metric.update(ref.features.double(), real=True)
        ref.metrics[key] = metric
    else:
        metric.reset()  # the fake side only
    return metric


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """One worker thread per process (keyed by pid: a forked child never inherits a dead pool)."""
    pid = os.getpid()
    if pid not in _POOLS:
        _POOLS[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="solverzoo-bootstrap")
    return _POOLS[pid]


def bootstrap_fid(f: np.ndarray, ref: Reference, reps: int, rng: np.random.Generator) -> list[float]:
    """FID of ``reps`` resamples (with replacement) of the features ``f`` against ``ref``.

    With centred resample X (n x d) and H = sqrt(S_ref), tr sqrt(H S H) is the sum of the square
    roots of the eigenvalues of (XH)(XH)^T / (n - 1) when n < d (an n x n problem, built from Gram
    matrices of the samples computed once), else of (XH)^T (XH) / (n - 1); tr S = |X|^2 / (n - 1).
    Same value as :func:`frechet`, much cheaper."""
    h = ref.sigma_sqrt
    n, d = f.shape
    tr_ref = float(np.trace(ref.sigma))
    idx = rng.integers(0, n, (reps, n))
    out: list[float] = []
    if n < d:
        # everything from n x n Gram matrices of the original samples: a resample is a gather of
        # rows and columns, centring is C K C with C = I - 11^T / n
        fh = f @ h
        kh, kf = fh @ fh.T, f @ f.T
        fm = f @ ref.mu
        mu2 = float(ref.mu @ ref.mu)
        cnt = np.zeros((reps, n))
        np.add.at(cnt, (np.arange(reps)[:, None], idx), 1.0)  # how often each sample is drawn
        step = max(1, int(2e7 // (n * n)))  # bound the (chunk, n, n) temporaries to ~160 MB
        for c in range(0, reps, step):
            ii = idx[c:c + step]
            sub_h = kh[ii[:, :, None], ii[:, None, :]]
            counts = cnt[c:c + step]
            tot_f = np.einsum("ra,ab,rb->r", counts, kf, counts) / n ** 2  # |mean|^2 = w^T K w / n^2
            trc_f = counts @ np.diag(kf) - n * tot_f  # sum |x_i - mean|^2
            g = sub_h - sub_h.mean(1, keepdims=True) - sub_h.mean(2, keepdims=True) + sub_h.mean((1, 2), keepdims=True)
            ev = torch.linalg.eigvalsh(torch.from_numpy(g / (n - 1))).numpy()  # one batched LAPACK call
            diff2 = tot_f - 2 * fm[ii].mean(1) + mu2
            out.extend((diff2 + trc_f / (n - 1) + tr_ref - 2 * np.sqrt(np.clip(ev, 0, None)).sum(1)).tolist())
        return out
    chunk = max(1, int(2e7 // (n * d)))  # bound the (chunk, n, d) temporaries to ~160 MB
    for c in range(0, reps, chunk):
        x = f[idx[c:c + chunk]]  # (r, n, d)
        mu = x.mean(1)
        xc = x - mu[:, None]
        tr_s = (xc ** 2).sum((1, 2)) / (n - 1)
        y = xc @ h
        gram = y.transpose(0, 2, 1) @ y
        ev = np.linalg.eigvalsh(gram / (n - 1))  # batched over the resamples
        diff = mu - ref.mu
        out.extend((np.einsum("rd,rd->r", diff, diff) + tr_s + tr_ref - 2 * np.sqrt(np.clip(ev, 0, None)).sum(1)).tolist())
    return out


def paired_delta(a: dict, b: dict, ref: Reference, reps: int, ci: float, seed: int = 0) -> dict:
    """FID(a) - FID(b) (and the prompt-accuracy difference) for two cells whose sample i shares
    its noise and prompt (common random numbers), with a *paired* bootstrap: every resample draws
    the same sample indices for both (the same ``seed``), so the shared variability cancels.
    Interval: the bootstrap spread of the difference around its median, re-centred on the
    estimate (as for FID).

    ``a`` and ``b``: ``{"features": (n, d) array, "hits": (n,) array or None}``, optionally with
    ``"fid"`` and ``"fid_boot"`` (the cell's own bootstrap from :func:`fid_kid` with the same seed
    and count), which are reused instead of recomputed."""
    fa, fb = np.asarray(a["features"], dtype=np.float64), np.asarray(b["features"], dtype=np.float64)
    if len(fa) != len(fb):
        raise ValueError(f"paired comparison needs equal sample counts, got {len(fa)} and {len(fb)}")

    def fid_and_boots(c, f):
        if c.get("fid_boot") is not None and len(c["fid_boot"]) == reps and c.get("fid") is not None:
            return float(c["fid"]), np.asarray(c["fid_boot"], dtype=np.float64)
        return (frechet(f.mean(0), np.cov(f, rowvar=False), ref.mu, ref.sigma),
                np.asarray(bootstrap_fid(f, ref, reps, np.random.default_rng(seed))))

    (ea, ba), (eb, bb) = fid_and_boots(a, fa), fid_and_boots(b, fb)
    est = ea - eb
    q_lo, med, q_hi = np.quantile(ba - bb, [(1 - ci) / 2, 0.5, 1 - (1 - ci) / 2])
    out = {"delta_fid": float(est), "delta_fid_ci_low": float(est - (med - q_lo)), "delta_fid_ci_high": float(est + (q_hi - med))}
    ha, hb = a.get("hits"), b.get("hits")
    if ha is not None and hb is not None:
        ha, hb = np.asarray(ha, dtype=np.float64), np.asarray(hb, dtype=np.float64)
        idx = np.random.default_rng(seed).integers(0, len(ha), (reps, len(ha)))  # the FID resamples' indices
        d = ha[idx].mean(1) - hb[idx].mean(1)
        lo, hi = np.quantile(d, [(1 - ci) / 2, 1 - (1 - ci) / 2])
        out.update(delta_prompt_accuracy=float(ha.mean() - hb.mean()), delta_prompt_accuracy_ci_low=float(lo),
                   delta_prompt_accuracy_ci_high=float(hi))
    return out


def proportion_ci(hits: np.ndarray, bootstrap: int, ci: float, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    p = float(hits.mean())
    boots = hits[rng.integers(0, len(hits), (bootstrap, len(hits)))].mean(1) if bootstrap else []
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2]) if bootstrap else (math.nan, math.nan)
    return p, float(lo), float(hi)


SHIPPED_CLIPS = ("shapes-clip",)


@functools.lru_cache(maxsize=4)
def _shipped_clip(name: str):
    from solverzoo.models import weights
    from solverzoo.models.nets.clip import SmallCLIP, torchmetrics_pair

    path = weights.resolve(name)
    model = weights.load_into(SmallCLIP(**weights.read_meta(path)["config"]["net"]), path)
    return torchmetrics_pair(model), hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _hf_clip(model_id: str):
    """A standard Hugging Face CLIP loaded here (folder checked, safetensors only,
    trust_remote_code=False), so no path string reaches torchmetrics' own loader."""
    from solverzoo.models.nets.clip import hf_clip_pair

    return hf_clip_pair(model_id)


def clip_score(images: Tensor, prompts: list[str], model_id: str) -> dict:
    """torchmetrics CLIPScore (100 * max(cos, 0), averaged): the small CLIP trained here
    (``shapes-clip``) or a Hugging Face CLIP by local path / hub id."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if model_id in SHIPPED_CLIPS:
        pair, wid = _shipped_clip(model_id)
        metric = CLIPScore(model_name_or_path=lambda: pair)
        model_id = f"{model_id} (sha256 {wid})"
    else:
        pair = _hf_clip(model_id)
        metric = CLIPScore(model_name_or_path=lambda: pair)
    imgs = ((images.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    metric.update(imgs, list(prompts))
    return {"clip_score": float(metric.compute()), "clip_model": model_id, "clip_scale": "100 * max(cos, 0)"}
