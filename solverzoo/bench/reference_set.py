"""The reference set of a sweep: the sweep's prompts, the real data's feature statistics
(cached on disk by identity) and the FID floor, all drawn from the backbone's
:class:`~solverzoo.backbone.World` with the seeds of :mod:`solverzoo.seeds`."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from solverzoo import seeds
from solverzoo.bench.metrics import Extractor, MetricUnavailable, Reference, fid_kid, fid_kid_settings, stats
from solverzoo.bench.records import config_hash

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _load_folder(path: str, shape) -> torch.Tensor:
    """Every image of the folder ``path``, resized to ``shape`` (C, H, W), in [-1, 1]."""
    from PIL import Image

    folder = Path(path)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise MetricUnavailable(f"reference folder {path!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    c, h, w = shape
    imgs = []
    for f in files:
        im = Image.open(f).convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
        imgs.append(a.permute(2, 0, 1) if a.ndim == 3 else a[None])
    return torch.stack(imgs)


def _sample_shape(bb) -> tuple[int, ...]:
    """The shape of one decoded sample (what a folder's images are resized to)."""
    with torch.no_grad():
        return tuple(bb.decode(torch.zeros((1,) + tuple(bb.latent_shape))).shape[1:])


def _real_samples(bb, rc: dict) -> torch.Tensor:
    """The real side of the reference: the world's own data, or a folder of images."""
    if rc["kind"] == "folder":
        return _load_folder(rc.get("path") or "", _sample_shape(bb))
    real = bb.world.reference(int(rc["seed"]), int(rc["n"]))
    if real is None:
        raise MetricUnavailable(f"the {bb.world.name!r} world of backbone {bb.name!r} has no reference data; set "
                                "metrics.reference.kind=folder and metrics.reference.path=DIR (real images), or "
                                "kind=npz and path=FILE.npz (precomputed mu, sigma)")
    return real


def load_reference(bb, mcfg: dict, extractor: Extractor | None, cache_dir: Path, n_prompts: int | None = None) -> Reference:
    """The sweep's prompts (an independent draw of the world, :func:`solverzoo.seeds.prompt_seed`,
    ``n_prompts`` of them: the sweep's N; default ``min(reference n, 1000)``) and the reference
    statistics ``metrics.reference`` names (none without an ``extractor``).

    The real side is drawn once (``reference.n`` samples, 50,000 by default: its ``c / n`` bias
    term then adds about 1.4 to FID on 128-d domain features instead of 69 at 1,000), its
    features computed in batches and cached on disk by identity; a world with fewer real samples
    (digits: 1,797 scans) gives all it has, stated in ``Reference.info`` and ``floor.json``."""
    world = bb.require_world()
    rc = mcfg["reference"]
    ident = {"kind": rc["kind"], "world": world.name, "seed": rc["seed"], "n": rc["n"], "path": rc.get("path"),
             "extractor": extractor.identity() if extractor else None}
    # the prompts of a shipped world are a prefix-stable draw: the first N are the same whatever the count
    n_prompts = int(n_prompts) if n_prompts else min(int(rc["n"]), 1000)
    prompts = list(world.prompts(seeds.prompt_seed(rc["seed"]), n_prompts))
    if extractor is None:
        return Reference(ident, np.zeros(1), np.zeros((1, 1)), 0, None, prompts)
    if rc["kind"] == "npz":
        if not rc.get("path") or not Path(rc["path"]).is_file():
            raise MetricUnavailable(f"reference npz {rc.get('path')!r} does not exist")
        from solverzoo.models.safe_load import load_npz_safely

        z = load_npz_safely(rc["path"], what="reference npz", keys=("mu", "sigma"))  # allow_pickle=False
        return Reference(ident, z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z.get("n", 10000)), None, prompts)
    own = getattr(world, "reference_statistics", None)  # a world whose reference is precomputed statistics
    st = own() if rc["kind"] == "world" and callable(own) else None
    if st is not None:
        if len(st["mu"]) != extractor.num_features:
            raise MetricUnavailable(f"the reference statistics {st.get('path')} have {len(st['mu'])} features but the "
                                    f"extractor {extractor.name} gives {extractor.num_features}")
        ident.update(path=st.get("path"), statistics=True)
        return Reference(ident, st["mu"], st["sigma"], int(st.get("n") or 10000), None, prompts,
                         info={"source": f"statistics {st.get('path')}", "n_used": st.get("n")})
    cache = cache_dir / f"reference-{config_hash(ident)}.safetensors"
    feats = None
    info: dict = {"cache_path": str(cache)}
    if cache.is_file():
        from safetensors import safe_open

        try:  # a damaged cache (truncated, overwritten, wrong contents) is rebuilt, never trusted
            with safe_open(str(cache), framework="pt") as fh:
                feats = fh.get_tensor("features")
                info.update(json.loads((fh.metadata() or {}).get("info", "{}")), cache="hit")
            if feats.ndim != 2 or not feats.is_floating_point() or not bool(torch.isfinite(feats).all()):
                raise ValueError(f"features of shape {tuple(feats.shape)} / dtype {feats.dtype} / non-finite values")
        except Exception as exc:  # noqa: BLE001 - SafetensorError, KeyError, ValueError ...
            print(f"solverzoo: warning: corrupt reference-statistics cache {cache} ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''}); rebuilding it", file=sys.stderr)
            feats = None
    if feats is None:
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        real = _real_samples(bb, rc)
        t1 = time.perf_counter()
        feats = _features_batched(extractor, real)
        del real
        info.update(real_samples_s=round(t1 - t0, 2), features_s=round(time.perf_counter() - t1, 2),
                    compute_s=round(time.perf_counter() - t0, 2), n_used=len(feats),
                    n_requested=int(rc["n"]) if rc["kind"] == "world" else None)
        if rc["kind"] == "world" and len(feats) < int(rc["n"]):
            info["note"] = (f"the {world.name} world has only {len(feats)} real samples (asked for {rc['n']}): all of them "
                            "are used, so the reference side's 1/n bias of FID stays")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        save_file({"features": feats.contiguous()}, str(tmp), metadata={"info": json.dumps(info)})
        os.replace(tmp, cache)
        info["cache"] = "miss"
        print(f"solverzoo: reference statistics of {len(feats)} real samples computed in {info['compute_s']:.1f} s "
              f"(drawing {info['real_samples_s']:.1f} s, features {info['features_s']:.1f} s), cached at {cache}",
              file=sys.stderr)
    mu, sig = stats(feats.numpy())
    return Reference(ident, mu, sig, len(feats), feats, prompts, info=info)


def _features_batched(extractor: Extractor, real: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Features of many real samples, ``batch`` at a time under ``inference_mode`` (the
    extractor chunks further), float64."""
    with torch.inference_mode():
        return torch.cat([extractor(real[i:i + batch]) for i in range(0, len(real), batch)])


def write_floor(bb, cfg: dict, ref: Reference, extractor: Extractor, results_dir: Path) -> None:
    """The real-data floor, by the same estimators as every cell, in ``floor.json``.

    * ``fid`` (and KID) at the sweep's N: N fresh real samples of exactly the sweep's prompts
      (:func:`solverzoo.seeds.floor_seed`) against the reference: what a perfect sampler would
      score at this N (FID's small-N bias), stated next to every figure;
    * ``fid_inf``: FID-infinity of ``metrics.floor_fid_inf_n`` real samples (the first N of them
      the ones above; default 4,096): the estimator's own residual on real data, whose truth is 0
      plus the reference's 1/n term. It is N-free by construction, so it is measured where its
      interval is narrow; ``n_fid_inf`` records the N used.

    A world that cannot draw real samples has no floor."""
    n, m = int(cfg["sweep"]["n_samples"]), cfg["metrics"]
    n_inf = max(n, int(m.get("floor_fid_inf_n") or n))
    seed = seeds.floor_seed(m["reference"]["seed"])
    real = bb.world.samples_for([ref.prompts[i % len(ref.prompts)] for i in range(n_inf)], seed)
    if real is None:
        return
    feats = extractor(real)
    del real
    out = fid_kid(feats[:n], ref, **fid_kid_settings(m))
    out.pop("_fid_boot", None)
    if len(feats) > n:
        from solverzoo.bench.estimators import default_sizes, fid_infinity_ci

        fi = fid_infinity_ci(feats.numpy(), ref.mu, ref.sigma, sizes=default_sizes(len(feats), feats.shape[1],
                             count=int(m.get("fid_inf_sizes", 8))), boot=int(m.get("fid_inf_boot", 50)),
                             ci=float(m["ci"]), rng=np.random.default_rng([0, 1]), ref_sqrt=ref.sigma_sqrt)
        out.update(fid_inf=fi["fid_inf"], fid_inf_ci_low=fi["fid_inf_ci_low"], fid_inf_ci_high=fi["fid_inf_ci_high"],
                   fid_inf_slope=fi["slope"], subsample_sizes_fid_inf=fi["sizes"], method_fid_inf=fi["fid_inf_ci_method"])
    results_dir.mkdir(parents=True, exist_ok=True)
    floor = {"n": n, "n_fid_inf": len(feats), "source": f"{bb.world.name} world, seed {seed}", **out, "reference_n": ref.n,
             "reference": {k: v for k, v in ref.info.items() if k != "cache_path"},
             "estimators": "fid: torchmetrics FID at N; fid_inf: FID-infinity (Chong & Forsyth 2020) with a bootstrap "
                           "interval, on n_fid_inf real samples; kid: unbiased MMD^2 on features standardised by the "
                           "reference, with a bootstrap interval (solverzoo.bench.estimators), the same as every cell's"}
    (results_dir / "floor.json").write_text(json.dumps(floor, indent=1))
