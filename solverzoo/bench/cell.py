"""One cell of a sweep: sample with common random numbers (:mod:`solverzoo.seeds`), then
score the samples with the metrics the backbone's :class:`~solverzoo.backbone.World` supports
(FID / KID on its features, prompt accuracy by its scorer, CLIP score, exact metrics), and
time each part."""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from solverzoo import __version__, seeds
from solverzoo.bench.generate import Generated, generate
from solverzoo.bench.metrics import MetricUnavailable, Reference, clip_score, fid_kid, paired_delta, proportion_ci
from solverzoo.bench.records import arrays_to_numpy, config_hash, read_arrays, write_arrays
from solverzoo.caching import CacheError, estimate_flops, flops_per_sample
from solverzoo.models.images import save_grid
from solverzoo.registry import registry


class CellFailed(RuntimeError):
    """A cell whose samples are unusable (recorded as failed, the sweep goes on)."""


@contextlib.contextmanager
def timed_net(model):
    """Accumulate the time spent inside the network's forward (backbone time)."""
    net, acc = model.net, [0.0]

    def wrapped(*a, **k):
        t = time.perf_counter()
        try:
            return net(*a, **k)
        finally:
            acc[0] += time.perf_counter() - t
    wrapped.__wrapped__ = net  # caches find the transformer through it
    model.net = wrapped
    try:
        yield acc
    finally:
        model.net = net


def dist_info():
    """``(torch.distributed or None, rank, world size)`` under torchrun (``WORLD_SIZE > 1``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _generate(cell: dict, bb, prompts: list, idx: list[int], cfg: dict, progress: bool):
    """The cell's samples: sample i from :func:`solverzoo.seeds.sample_seed` ``(seed_set, i)``;
    exact worlds also get the DOP853 solve of the same ODE for deterministic solvers."""
    guidance = None if cell["guidance"] == "none" else cell["guidance"]
    exact = bb.world.exact and not registry.get("solver", cell["solver"]).is_stochastic(**cell["solver_options"])
    with timed_net(bb.model) as backbone_s:
        gen = generate(bb, prompts, solver=cell["solver"], steps=cell["steps"], grid=cell["grid"],
                       grid_options=cell["grid_options"], guidance=guidance, scale=cell["scale"],
                       seeds=seeds.sample_seeds(cell["seed_set"], idx), device=cfg["device"],
                       solver_options=cell["solver_options"], batch_size=cfg["batch_size"], progress=progress,
                       cache=cell.get("cache"), cache_options=cell.get("cache_options"), reference=exact)
    if not torch.isfinite(gen.latents).all():
        raise CellFailed("the samples contain NaN/inf")
    return gen, backbone_s[0]


def prompt_hits(bb, images, latents, prompts) -> np.ndarray:
    """Per-sample prompt hits (0 / 1) by the backbone's world's scorer."""
    hits = bb.world.score(images, latents, prompts)
    if hits is None:
        raise MetricUnavailable(f"backbone {bb.name!r} has no prompt scorer for prompt accuracy (its world "
                                f"{bb.world.name!r} defines no score())")
    hits = np.asarray(hits, dtype=np.float64)
    if hits.shape != (len(prompts),):
        raise ValueError(f"world {bb.world.name!r}: score() returned shape {hits.shape} for {len(prompts)} prompts; "
                         "it must return one 0/1 value per sample")
    return hits


def _exact_metrics(bb, ref: Reference, gen: Generated, feats, n: int, distributed: bool) -> dict:
    """Exact metrics of an analytic world: sliced Wasserstein to its exact samples of the
    prompted classes and, against the DOP853 solve of the same ODE, the median error and the
    world's own comparisons (e.g. mode flips)."""
    out: dict = {}
    exact = bb.world.exact_samples([ref.prompts[i % len(ref.prompts)] for i in range(n)])
    if exact is not None:
        from solverzoo.testing.verify import sliced_wasserstein

        out["sliced_wasserstein"] = sliced_wasserstein(feats if feats is not None else gen.latents.double(), exact)
    if bb.world.exact and gen.reference is not None and not distributed:
        err = ((gen.latents.double() - gen.reference.double()) ** 2).mean(1).sqrt()
        out["median_error"] = float(err.median())
        out.update(bb.world.exact_metrics(gen.latents, gen.reference))
    return out


def _clip(bb, m: dict, images, prompts, rec: dict) -> float:
    """CLIP score into ``rec`` where it applies (else a warning saying why); returns its seconds."""
    world = bb.world
    if "clip_score" in world.not_applicable:
        rec["warnings"].append(world.not_applicable["clip_score"])
        return 0.0
    clip_id = m.get("clip_model") or world.clip_model
    if not clip_id:
        rec["warnings"].append(f"clip_score skipped: no CLIP model for the {world.name} world "
                               "(set metrics.clip_model=PATH to a Hugging Face CLIP)")
        return 0.0
    t_clip = time.perf_counter()
    try:  # every rank scores its own samples; torchmetrics syncs CLIPScore's sums across ranks in compute()
        rec.update(clip_score(images, prompts, clip_id))
    except (OSError, MetricUnavailable) as exc:  # missing weights / model: skipped with the reason
        rec["warnings"].append(f"clip_score skipped: {exc}")
        return 0.0
    return time.perf_counter() - t_clip


def _fid(cell: dict, feats, ref: Reference, extractor, rec: dict) -> None:
    """FID / KID of the features into ``rec`` (with the small-N warning)."""
    m, n = cell["metrics"], cell["n_samples"]
    if n < 2 * feats.shape[1]:
        rec["warnings"].append(f"N={n} is below 2 x feature dim ({2 * feats.shape[1]}): FID is biased upward and "
                               "its covariance is rank-deficient; compare only at equal N")
    t_fk = time.perf_counter()
    rec.update(fid_kid(feats, ref, bootstrap=m["bootstrap"], ci=m["ci"], kid_subset=m["kid_subset_size"],
                       seed=seeds.bootstrap_seed(cell["seed_set"])))
    rec["fid_kid_s"] = time.perf_counter() - t_fk
    rec["feature"] = extractor.identity()
    rec["reference"] = ref.identity


def _new_record(cell: dict, gen: Generated, flops, ranks: int) -> dict:
    rec = dict(cell)
    rec.update(config_hash=config_hash(cell), nfe=gen.nfe, status="ok", error=None, warnings=[],
               cache=cell.get("cache", "none"), backbone_evals=gen.backbone_evals,
               flops_per_sample=flops_per_sample(flops, gen.nfe, gen.backbone_evals) if flops else math.nan,
               fid=math.nan, fid_ci_low=math.nan, fid_ci_high=math.nan, kid=math.nan, clip_score=math.nan,
               prompt_accuracy=math.nan, ranks=ranks, solverzoo=__version__, torch=torch.__version__)
    return rec


def _features_and_hits(cell: dict, bb, gen: Generated, extractor, prompts, idx, dist, world_size: int):
    """Metric features and prompt hits of the samples, gathered from every rank in sample order."""
    m = cell["metrics"]
    feats = extractor(gen.images) if extractor is not None and (m["fid"] or m["kid"]) else None
    skipped = []
    try:
        hits = prompt_hits(bb, gen.images, gen.latents, prompts) if m["prompt_accuracy"] else None
    except MetricUnavailable as exc:  # a metric that does not apply: skipped with its reason
        hits, skipped = None, [f"prompt_accuracy skipped: {exc}"]
    if dist is not None:
        parts = [None] * world_size
        dist.all_gather_object(parts, (idx, feats, hits))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        feats = torch.cat([p[1] for p in parts])[order] if feats is not None else None
        hits = np.concatenate([p[2] for p in parts])[order] if hits is not None else None
    return feats, hits, skipped


def run_cell(cell: dict, bb, ref: Reference, extractor, cfg: dict, results_dir: Path) -> dict:
    """Run one cell and return its record (written by the caller)."""
    bb.require_world()
    t0 = time.perf_counter()
    dist, rank, world_size = dist_info()
    n, m = cell["n_samples"], cell["metrics"]
    idx = list(range(rank, n, world_size))  # sample i is the same whatever the number of ranks
    prompts = [ref.prompts[i % len(ref.prompts)] for i in idx]
    gen, backbone_s = _generate(cell, bb, prompts, idx, cfg, bool(cfg.get("progress", True)) and rank == 0)
    t_feat = time.perf_counter()
    feats, hits, skipped = _features_and_hits(cell, bb, gen, extractor, prompts, idx, dist, world_size)
    feat_s = time.perf_counter() - t_feat
    rec = _new_record(cell, gen, flops(bb, cfg["device"]), world_size)
    rec["warnings"].extend(skipped)
    if rank == 0:
        rec.update(_exact_metrics(bb, ref, gen, feats, n, dist is not None))
    t_metric = time.perf_counter()
    if feats is None and (m["fid"] or m["kid"]):
        rec["warnings"].append("fid/kid skipped: " + ref.identity.get("skipped", "no feature extractor for this backbone"))
    if feats is not None and m["fid"]:
        _fid(cell, feats, ref, extractor, rec)
    if hits is not None:
        p, lo, hi = proportion_ci(hits, m["bootstrap"], m["ci"], seed=seeds.bootstrap_seed(cell["seed_set"]))
        rec.update(prompt_accuracy=p, prompt_accuracy_ci_low=lo, prompt_accuracy_ci_high=hi)
    clip_s = _clip(bb, m, gen.images, prompts, rec) if m["clip_score"] else 0.0
    feat_s += clip_s  # a network evaluating the samples: metric features
    boots = rec.pop("_fid_boot", None)
    if rank == 0 and (feats is not None or hits is not None):
        mine = {"features": feats, "hits": None if hits is None else torch.from_numpy(hits),
                "fid": None if boots is None else torch.tensor(rec["fid"], dtype=torch.float64),
                "fid_boot": torch.tensor(boots, dtype=torch.float64) if boots else None}
        write_arrays(results_dir, rec["config_hash"], mine)
        if "cache" in cell:
            rec.update(_paired_vs_no_cache(cell, mine, ref, m, results_dir))
    metric_s = time.perf_counter() - t_metric - clip_s
    wall = time.perf_counter() - t0
    rec.update(wall_s=wall, sampling_s=gen.sampling_s, backbone_s=backbone_s, solver_s=gen.sampling_s - backbone_s,
               decode_s=gen.wall_s - gen.sampling_s - gen.reference_s, metric_s=metric_s + feat_s + gen.reference_s,
               harness_s=max(wall - gen.wall_s - feat_s - metric_s, 0.0) + metric_s)
    if rank == 0 and gen.images.ndim == 4:
        # native-size thumbnails, light compression: the report upscales once when it composes its grid
        save_grid(gen.images[:8], results_dir / "samples" / f"{rec['config_hash']}.png", ncol=8, scale=1, compress_level=1)
    return rec


def _paired_vs_no_cache(cell: dict, mine: dict, ref: Reference, m: dict, results_dir: Path) -> dict:
    """Paired differences against the same cell without a cache, when that cell has run (its
    stored bootstrap is reused: both used the same resamples)."""
    twin = {k: v for k, v in cell.items() if k not in ("cache", "cache_options")}
    other = read_arrays(results_dir, config_hash(twin))
    if other is None or mine["features"] is None or "features" not in other:
        return {}
    out = paired_delta(arrays_to_numpy(mine), arrays_to_numpy(other), ref, m["bootstrap"], m["ci"], seed=seeds.bootstrap_seed(cell["seed_set"]))
    return {**out, "paired_with": config_hash(twin)}


_FLOPS: dict = {}


def flops(bb, device: str) -> dict | None:
    """FLOPs of one evaluation of the backbone's network per sample, counted once on the
    world's example prompt (None where the backbone has no transformer block stack)."""
    key = (bb.name, bb.weights_id, device)
    if key not in _FLOPS:
        try:
            x = torch.zeros((1,) + tuple(bb.latent_shape), device=device)
            cond = {k: v.to(device) for k, v in bb.conds([bb.require_world().example_prompt()])["cond"].items()}
            t = torch.full((1,), float(bb.model.constants(0.5 * float(bb.model.schedule.t_max))[0]), device=device)
            _FLOPS[key] = estimate_flops(bb.model.net, x, t, cond)
        except CacheError:
            _FLOPS[key] = None
    return _FLOPS[key]
