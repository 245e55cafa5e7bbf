"""One cell of a sweep: sample with common random numbers (:mod:`solverzoo.seeds`), then
score the samples with the metrics the backbone's :class:`~solverzoo.backbone.World` supports
(FID, FID-infinity and KID on its features, prompt accuracy by its scorer, CLIP score, exact
metrics) and against the converged solve of the same ODE from the same noise and prompts
(:mod:`solverzoo.bench.converged`: computed once per identity, cached on disk, shared by every
cell), and time each part."""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from solverzoo import __version__, seeds
from solverzoo.bench import autoregressive as ar
from solverzoo.bench import converged as conv
from solverzoo.bench.cell_spec import Cell, TimingLedger
from solverzoo.bench.generate import Generated, converged_label, converged_plan, converged_solve, generate
from solverzoo.bench.metrics import (
    MetricUnavailable,
    Reference,
    clip_score,
    fid_kid,
    fid_kid_settings,
    paired_delta,
    proportion_ci,
)
from solverzoo.bench.records import arrays_to_numpy, read_arrays, write_arrays
from solverzoo.caching import CacheError, estimate_flops, flops_per_sample
from solverzoo.models.images import save_thumbnails
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


def _generate(cell: Cell, bb, prompts: list, idx: list[int], cfg: dict, progress: bool, generator: bool):
    """The cell's samples: sample i from :func:`solverzoo.seeds.sample_seed` ``(seed_set, i)``
    (the converged solve of the same ODE is computed apart, by :func:`_converged`); a generator
    cell's by its backbone's generator, whose whole call counts as backbone time."""
    if generator:
        gen = ar.generate_cell(cell, bb, prompts, idx, cfg, progress)
        backbone_s = [gen.sampling_s]
    else:
        guidance = None if cell.guidance == "none" else cell.guidance
        with timed_net(bb.model) as backbone_s:
            gen = generate(bb, prompts, solver=cell.solver, steps=cell.steps, grid=cell.grid,
                           grid_options=cell.grid_options, guidance=guidance, scale=cell.scale,
                           seeds=seeds.sample_seeds(cell.seed_set, idx), device=cfg["device"],
                           solver_options=cell.solver_options, batch_size=cfg["batch_size"], progress=progress,
                           cache=cell.cache, cache_options=cell.cache_options)
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


def _fid(cell: Cell, feats, ref: Reference, extractor, rec: dict) -> None:
    """FID / KID of the features into ``rec`` (with the small-N warning)."""
    m, n = cell.metrics, cell.n_samples
    if n < 2 * feats.shape[1]:
        rec["warnings"].append(f"N={n} is below 2 x feature dim ({2 * feats.shape[1]}): FID is biased upward and "
                               "its covariance is rank-deficient; compare only at equal N")
    t_fk = time.perf_counter()
    rec.update(fid_kid(feats, ref, seed=seeds.bootstrap_seed(cell.seed_set), **fid_kid_settings(m)))
    rec["fid_kid_s"] = time.perf_counter() - t_fk
    rec["feature"] = extractor.identity()
    rec["reference"] = ref.identity


def _new_record(cell: Cell, gen: Generated, flops, ranks: int) -> dict:
    rec = cell.config()
    rec.update(config_hash=cell.hash, nfe=gen.nfe, status="ok", error=None, warnings=[],
               cache=cell.cache or "none", backbone_evals=gen.backbone_evals,
               flops_per_sample=flops_per_sample(flops, gen.nfe, gen.backbone_evals) if flops else math.nan,
               fid=math.nan, fid_ci_low=math.nan, fid_ci_high=math.nan, fid_inf=math.nan, fid_inf_ci_low=math.nan,
               fid_inf_ci_high=math.nan, kid=math.nan, kid_ci_low=math.nan, kid_ci_high=math.nan, clip_score=math.nan,
               **{f"{k}{s}": math.nan for k in ("err_converged", "psnr_converged", "fd_converged")
                  for s in ("", "_ci_low", "_ci_high")},
               prompt_accuracy=math.nan, ranks=ranks, solverzoo=__version__, torch=torch.__version__)
    return rec


def _gather(dist, world_size: int, idx, *arrays):
    """Per-sample arrays (tensors or numpy, or None) of every rank, in sample order."""
    if dist is None:
        return arrays
    parts = [None] * world_size
    dist.all_gather_object(parts, (idx, *arrays))
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    out = []
    for k, a in enumerate(arrays, start=1):
        if a is None:
            out.append(None)
        elif isinstance(a, torch.Tensor):
            out.append(torch.cat([p[k] for p in parts])[order])
        else:
            out.append(np.concatenate([p[k] for p in parts])[order])
    return tuple(out)


def _features_and_hits(cell: Cell, bb, gen: Generated, extractor, prompts, idx, dist, world_size: int):
    """Metric features and prompt hits of the samples, gathered from every rank in sample order."""
    m = cell.metrics
    feats = extractor(gen.images) if extractor is not None and (m["fid"] or m["kid"]) else None
    skipped = []
    try:
        hits = prompt_hits(bb, gen.images, gen.latents, prompts) if m["prompt_accuracy"] else None
    except MetricUnavailable as exc:  # a metric that does not apply: skipped with its reason
        hits, skipped = None, [f"prompt_accuracy skipped: {exc}"]
    feats, hits = _gather(dist, world_size, idx, feats, hits)
    return feats, hits, skipped


_CONVERGED: dict = {}  # in-process memo: identity key -> solve, decoded samples, features, hits


def _converged(cell: Cell, bb, gen: Generated, prompts, idx, extractor, cfg: dict, results_dir: Path) -> dict:
    """The converged solve of the cell's (guided) ODE from the same noise and prompts, from the
    in-process memo, the disk cache (``<results_dir>/../cache/converged-<key>.safetensors``) or
    computed here; with its decoded samples, features and prompt hits (computed once per process)."""
    m = cell.metrics
    method, options = converged_plan(bb, m)
    guided = cell.guidance != "none"
    sample_seeds = seeds.sample_seeds(cell.seed_set, idx)
    ident = conv.ConvergedSolve(
        backbone=bb.name, weights_id=bb.weights_id, guidance=cell.guidance if guided else None,
        guidance_scale=float(cell.scale) if guided else None, schedule=bb.model.schedule.describe(),
        t_start=float(gen.times[0]), t_end=float(gen.times[-1]), seeds=tuple(sample_seeds),
        prompts=conv.prompts_hash(prompts), shape=(len(idx),) + tuple(bb.latent_shape), method=method, options=options)
    key = ident.key
    if key in _CONVERGED:
        return {**_CONVERGED[key], "cache": "memory"}
    x, info = conv.load_or_solve(ident, results_dir.parent / "cache", lambda: converged_solve(
        bb, prompts, seeds=sample_seeds, guidance=cell.guidance if guided else None, scale=float(cell.scale),
        t_start=float(gen.times[0]), t_end=float(gen.times[-1]), method=method, options=options, device=cfg["device"],
        batch_size=cfg["batch_size"]))
    x = x.to(gen.latents.dtype)
    with torch.no_grad():
        images = torch.cat([bb.decode(x[i:i + 256].to(cfg["device"])) for i in range(0, len(x), 256)])
    feats = extractor(images) if extractor is not None and (m["fid"] or m["kid"]) else None
    try:
        hits = prompt_hits(bb, images, x, prompts) if m["prompt_accuracy"] else None
    except MetricUnavailable:
        hits = None
    entry = {"key": key, "x": x, "images": images, "feats": feats, "hits": hits, "info": info}
    if len(_CONVERGED) >= 8:
        _CONVERGED.pop(next(iter(_CONVERGED)))
    _CONVERGED[key] = entry
    return {**entry, "cache": info.get("cache", "miss")}


def _converged_fields(cell: Cell, bb, gen: Generated, c: dict, feats, dist, world_size: int, idx, rec: dict) -> dict:
    """Per-sample errors and PSNR against the converged solve (gathered from every rank), the
    ``*_converged`` record fields, and the arrays to store. Stochastic solvers: NaN with the reason."""
    stochastic = registry.get("solver", cell.solver).is_stochastic(**cell.solver_options)
    images = gen.images.ndim in (4, 5) and c["images"].ndim == gen.images.ndim  # images, or clips of frames
    err = None if stochastic else conv.per_sample_rmse(gen.latents, c["x"])
    psnr = conv.per_sample_psnr(gen.images, c["images"]) if images and not stochastic else None
    err, psnr, ref_feats, ref_hits = _gather(dist, world_size, idx, err, psnr, c["feats"], c["hits"])
    rng = np.random.default_rng([seeds.bootstrap_seed(cell.seed_set), 3])
    m = cell.metrics
    f = None if feats is None else feats.numpy()
    rf = None if ref_feats is None else ref_feats.numpy()
    if stochastic:
        out = conv.stochastic_converged_metrics(f, rf, fd_reps=m["bootstrap"], rng=rng, ci=m["ci"])
    else:
        out = {**conv._median_fields("err_converged", err, 2000, rng, m["ci"]),
               **conv._fd_fields(f, rf, m["bootstrap"], rng, m["ci"])}
        if psnr is not None:
            out.update(conv._median_fields("psnr_converged", psnr, 2000, rng, m["ci"]), psnr_cap_db=conv.PSNR_CAP_DB)
        else:
            out["psnr_converged_note"] = "the decoded samples are not images: no PSNR"
    for k in ("err_converged_note", "psnr_converged_note", "fd_converged_note"):
        if k in out:
            rec["warnings"].append(f"{k[:-5]}: {out.pop(k)}")
    info = c["info"]
    out.update(converged_key=c["key"], converged_method=converged_label(info),
               converged_error_estimate=float(info.get("own_error_median", math.nan)),
               converged_error_rms=float(info.get("own_error_rms", math.nan)),
               converged_error_method=info.get("own_error_method"), converged_nfe=info.get("nfe"),
               converged_solve_s=float(info.get("wall_s", math.nan)), converged_cache=c["cache"],
               converged_cost_note=("the converged solve is computed once per identity (backbone, guidance, noise, prompts, "
                                    "interval, method) and shared by every cell of it: converged_solve_s is that once-only "
                                    "cost, converged_s the part of this cell's wall time (solve on a cache miss, else "
                                    "loading, decoding and features once per process, 0 after)"))
    arrays = {"err": None if err is None else torch.from_numpy(np.asarray(err, dtype=np.float64)),
              "psnr": None if psnr is None else torch.from_numpy(np.asarray(psnr, dtype=np.float64))}
    return out, arrays, ref_feats, ref_hits


TIMING_PARTS = ("backbone", "solver", "decode", "converged", "metric", "harness")
"""The parts of a cell's wall time (record fields ``<part>_s``, ``wall_s`` their exact sum): network forwards while
sampling, the rest of the sampling loop, setup and decoding, the converged solve's share, scoring (features, metrics,
exact reference solves), the harness (bookkeeping, arrays, thumbnails). ``sampling_s = backbone_s + solver_s``."""


def run_cell(cell: Cell, bb, ref: Reference, extractor, cfg: dict, results_dir: Path) -> dict:
    """Run one cell and return its record (written by the caller)."""
    bb.require_world()
    generator = ar.is_generator_cell(cell, bb)  # sampled by the backbone's generator: no ODE, no converged solve
    ledger = TimingLedger(TIMING_PARTS)
    dist, rank, world_size = dist_info()
    n = cell.n_samples
    idx = list(range(rank, n, world_size))  # sample i is the same whatever the number of ranks
    prompts = [ref.prompts[i % len(ref.prompts)] for i in idx]
    ledger.lap("harness")
    gen, backbone_s = _generate(cell, bb, prompts, idx, cfg, bool(cfg.get("progress", True)) and rank == 0, generator)
    ledger.lap("solver")  # then split: everything generate() did besides the sampling loop
    ledger.move("solver", "decode", gen.wall_s - gen.sampling_s - gen.reference_s)
    ledger.move("solver", "metric", gen.reference_s)  # exact worlds' reference solves: a metric's cost
    ledger.move("solver", "backbone", backbone_s)
    c = None if generator else _converged(cell, bb, gen, prompts, idx, extractor, cfg, results_dir)
    ledger.lap("converged")
    if not generator and not registry.get("solver", cell.solver).is_stochastic(**cell.solver_options):
        gen.reference = c["x"]  # exact worlds: median_error and the world's exact metrics against it
    rec = _new_record(cell, gen, flops(bb, cfg["device"]), world_size)
    ledger.lap("harness")
    feats, hits, skipped = _features_and_hits(cell, bb, gen, extractor, prompts, idx, dist, world_size)
    rec["warnings"].extend(skipped)
    conv_fields, conv_arrays, ref_feats, ref_hits = (ar.record_fields(gen, rec) if generator else
                                                     _converged_fields(cell, bb, gen, c, feats, dist, world_size, idx, rec))
    rec.update(conv_fields)
    ledger.lap("metric")
    if rank == 0 and c is not None and not (results_dir / "features" / f"converged-{c['key']}.safetensors").is_file():
        write_arrays(results_dir, f"converged-{c['key']}", {"features": ref_feats,
                                                            "hits": None if ref_hits is None else torch.from_numpy(ref_hits)})
    ledger.lap("harness")
    if rank == 0:
        rec.update(_exact_metrics(bb, ref, gen, feats, n, dist is not None))
    _score(cell, bb, gen, feats, hits, prompts, ref, extractor, rec)
    boots = rec.pop("_fid_boot", None)  # kept for paired comparisons, not a record field
    ledger.lap("metric")
    if rank == 0:
        _write_cell_arrays(cell, rec, boots, feats, hits, conv_arrays, ref, results_dir, ledger)
        save_thumbnails(gen.images, results_dir / "samples" / f"{rec['config_hash']}.png")
    ledger.lap("harness")
    parts = ledger.fields()
    rec.update(parts, sampling_s=parts["backbone_s"] + parts["solver_s"])
    return rec


def _score(cell: Cell, bb, gen: Generated, feats, hits, prompts, ref: Reference, extractor, rec: dict) -> None:
    """FID / KID, prompt accuracy and CLIP score into ``rec``."""
    m = cell.metrics
    if feats is None and (m["fid"] or m["kid"]):
        rec["warnings"].append("fid/kid skipped: " + ref.identity.get("skipped", "no feature extractor for this backbone"))
    if feats is not None and m["fid"]:
        _fid(cell, feats, ref, extractor, rec)
    if hits is not None:
        p, lo, hi = proportion_ci(hits, m["bootstrap"], m["ci"], seed=seeds.bootstrap_seed(cell.seed_set))
        rec.update(prompt_accuracy=p, prompt_accuracy_ci_low=lo, prompt_accuracy_ci_high=hi)
    if m["clip_score"]:
        _clip(bb, m, gen.images, prompts, rec)


def _write_cell_arrays(cell: Cell, rec: dict, boots, feats, hits, conv_arrays: dict, ref: Reference, results_dir: Path,
                       ledger: TimingLedger) -> None:
    """The cell's per-sample arrays (features, hits, FID bootstrap, converged errors) for paired
    comparisons, and with a cache the paired differences against its no-cache twin (a metric)."""
    if feats is None and hits is None and conv_arrays["err"] is None:
        return
    mine = {"features": feats, "hits": None if hits is None else torch.from_numpy(hits),
            "fid": None if boots is None else torch.tensor(rec["fid"], dtype=torch.float64),
            "fid_boot": torch.tensor(boots, dtype=torch.float64) if boots else None, **conv_arrays}
    write_arrays(results_dir, rec["config_hash"], mine)
    if cell.cache is not None:
        ledger.lap("harness")
        rec.update(_paired_vs_no_cache(cell, mine, ref, cell.metrics, results_dir))
        ledger.lap("metric")


def _paired_vs_no_cache(cell: Cell, mine: dict, ref: Reference, m: dict, results_dir: Path) -> dict:
    """Paired differences against the same cell without a cache, when that cell has run (its
    stored bootstrap is reused: both used the same resamples)."""
    twin = cell.without_cache()
    other = read_arrays(results_dir, twin.hash)
    if other is None or mine["features"] is None or "features" not in other:
        return {}
    out = paired_delta(arrays_to_numpy(mine), arrays_to_numpy(other), ref, m["bootstrap"], m["ci"],
                       seed=seeds.bootstrap_seed(cell.seed_set))
    return {**out, "paired_with": twin.hash}


_FLOPS: dict = {}


def flops(bb, device: str) -> dict | None:
    """FLOPs of one evaluation of the backbone's network per sample, counted once on the
    world's example prompt (None where the backbone has no transformer block stack)."""
    if ar.is_generator_backbone(bb):  # no network to count: its generator reports FLOPs per sample
        return None
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
