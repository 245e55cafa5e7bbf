"""The reference set of a sweep: the sweep's prompts, the real data's feature statistics
(cached on disk by identity) and the FID floor, all drawn from the backbone's
:class:`~solverzoo.backbone.World` with the seeds of :mod:`solverzoo.seeds`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from solverzoo import seeds
from solverzoo.bench.metrics import Extractor, MetricUnavailable, Reference, fid_kid, stats
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


def load_reference(bb, mcfg: dict, extractor: Extractor | None, cache_dir: Path) -> Reference:
    """The sweep's prompts (an independent draw of the world, :func:`solverzoo.seeds.prompt_seed`)
    and the reference statistics ``metrics.reference`` names (none without an ``extractor``)."""
    world = bb.require_world()
    rc = mcfg["reference"]
    ident = {"kind": rc["kind"], "world": world.name, "seed": rc["seed"], "n": rc["n"], "path": rc.get("path"),
             "extractor": extractor.identity() if extractor else None}
    prompts = list(world.prompts(seeds.prompt_seed(rc["seed"]), int(rc["n"])))
    if extractor is None:
        return Reference(ident, np.zeros(1), np.zeros((1, 1)), 0, None, prompts)
    if rc["kind"] == "npz":
        if not rc.get("path") or not Path(rc["path"]).is_file():
            raise MetricUnavailable(f"reference npz {rc.get('path')!r} does not exist")
        z = np.load(rc["path"])
        return Reference(ident, z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z.get("n", 10000)), None, prompts)
    cache = cache_dir / f"reference-{config_hash(ident)}.safetensors"
    if cache.is_file():
        from safetensors.torch import load_file

        feats = load_file(str(cache))["features"]
    else:
        from safetensors.torch import save_file

        feats = extractor(_real_samples(bb, rc))
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        save_file({"features": feats.contiguous()}, str(tmp))
        os.replace(tmp, cache)
    mu, sig = stats(feats.numpy())
    return Reference(ident, mu, sig, len(feats), feats, prompts)


def write_floor(bb, cfg: dict, ref: Reference, extractor: Extractor, results_dir: Path) -> None:
    """FID of N fresh real samples against the reference: what a perfect sampler would score at
    this N (FID's small-N bias), stated next to every figure. The samples answer exactly the
    sweep's prompts (:func:`solverzoo.seeds.floor_seed`); a world that cannot draw them has no floor."""
    n, m = int(cfg["sweep"]["n_samples"]), cfg["metrics"]
    seed = seeds.floor_seed(m["reference"]["seed"])
    real = bb.world.samples_for([ref.prompts[i % len(ref.prompts)] for i in range(n)], seed)
    if real is None:
        return
    out = fid_kid(extractor(real), ref, bootstrap=m["bootstrap"], ci=m["ci"], kid_subset=m["kid_subset_size"])
    out.pop("_fid_boot", None)
    results_dir.mkdir(parents=True, exist_ok=True)
    floor = {"n": len(real), "source": f"{bb.world.name} world, seed {seed}", **out}
    (results_dir / "floor.json").write_text(json.dumps(floor, indent=1))
