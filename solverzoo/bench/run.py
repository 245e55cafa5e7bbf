"""Running a sweep: expand the cells, load the backbone and the reference statistics once,
run each missing cell, write its record atomically, then build the table and the report."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from solverzoo import __version__
from solverzoo.backbone import load_backbone
from solverzoo.caching import CacheError, estimate_flops, find_stack, flops_per_sample
from solverzoo.bench.generate import generate
from solverzoo.models.images import save_grid
from solverzoo.bench.metrics import MetricUnavailable, Reference, clip_score, fid_kid, make_extractor, paired_delta, proportion_ci, stats
from solverzoo.timegrid import GridError
from solverzoo.registry import registry
from solverzoo.bench.records import build_table, config_hash, read_arrays, read_record, records_dir, write_arrays, write_record

SEED_STRIDE = 1_000_003


class CellFailed(RuntimeError):
    pass


def expand(cfg: dict, backbone, skipped: list | None = None) -> list[dict]:
    """The sweep's cells: seed set x guidance x solver x grid x steps x cache (pinned settings
    included). Caches that cannot apply to the backbone (no transformer block stack) are left
    out, with the reason appended to ``skipped``."""
    sw, m = cfg["sweep"], cfg["metrics"]
    cells = []
    caches = [_cache_entry(c) for c in sw.get("caches") or ["none"]]
    if any(c != "none" for c, _ in caches):
        try:
            find_stack(backbone.model.net)
        except CacheError as exc:
            if skipped is not None:
                skipped.append(f"caches {[c for c, _ in caches if c != 'none']} skipped on {backbone.name}: {exc}")
            caches = [c for c in caches if c[0] == "none"]
    grids = [_grid_entry(g, backbone) for g in sw["grids"]]
    missing = set()
    for grid_name, grid_opts in grids:  # saved grids made for another backbone / step count do not apply
        if grid_name == "optimised":
            for steps in sw["steps"]:
                try:
                    registry.get("grid", grid_name)(backbone.model.schedule, int(steps), **grid_opts)
                except GridError as exc:
                    missing.add((grid_opts.get("key"), int(steps)))
                    if skipped is not None:
                        skipped.append(f"grid optimised key={grid_opts.get('key')} skipped at {steps} steps: {exc}")
    for seed_set, g, solver, (grid_name, grid_opts), steps, (cache, cache_opts) in itertools.product(
            sw["seed_sets"], sw["guidance"], sw["solvers"], grids, sw["steps"], caches):
        if grid_name == "optimised" and (grid_opts.get("key"), int(steps)) in missing:
            continue
        extra = {"cache": cache, "cache_options": cache_opts} if cache != "none" else {}  # no-cache hashes unchanged
        cells.append({
            "backbone": backbone.name, "backbone_weights": backbone.weights_id, "solver": solver,
            "solver_options": dict(sw.get("solver_options", {}).get(solver, {})), "grid": grid_name,
            "grid_options": grid_opts, "steps": int(steps), "guidance": g["name"], "scale": float(g["scale"]),
            "n_samples": int(sw["n_samples"]), "seed_set": int(seed_set),
            "metrics": {k: m[k] for k in ("fid", "kid", "prompt_accuracy", "clip_score", "feature", "reference", "resize",
                                          "antialias", "bootstrap", "ci", "kid_subset_size", "clip_model", "inception_weights")},
            **extra,
        })
    return cells


def _named_entry(entry, axis: str, example: str) -> tuple[str, dict]:
    """A sweep axis entry: a name, or ``{name: NAME, option: value, ...}``."""
    if isinstance(entry, str):
        return entry, {}
    entry = dict(entry)
    if "name" not in entry:
        raise ValueError(f"sweep.{axis} entry {entry!r} needs a name (e.g. {example})")
    name = entry.pop("name")
    return name, entry


def _cache_entry(entry) -> tuple[str, dict]:
    """``none``, a cache name, or ``{name: teacache, threshold: 0.1, ...}``."""
    return _named_entry(entry, "caches", "{name: teacache, threshold: 0.1}")


def _grid_entry(entry, backbone) -> tuple[str, dict]:
    """``default`` (the backbone's), a grid name, or ``{name: optimised, key: ...}``."""
    if entry == "default":
        return backbone.default_grid, dict(backbone.default_grid_options)
    return _named_entry(entry, "grids", "{name: karras, rho: 7}")


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


# -- the reference set ----------------------------------------------------------------------
def _load_folder(path: str, shape) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")) if Path(path).is_dir() else []
    if not files:
        raise MetricUnavailable(f"reference folder {path!r} holds no images (.png, .jpg, .jpeg, .bmp, .webp)")
    c, h, w = shape
    imgs = []
    for f in files:
        im = Image.open(f).convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
        imgs.append(a.permute(2, 0, 1) if a.ndim == 3 else a[None])
    return torch.stack(imgs)


def load_reference(bb, mcfg: dict, extractor, cache_dir: Path) -> Reference:
    rc = mcfg["reference"]
    ident = {"kind": rc["kind"], "world": bb.world, "seed": rc["seed"], "n": rc["n"], "path": rc.get("path"),
             "extractor": extractor.identity() if extractor else None}
    key = config_hash(ident)
    prompts: list
    if bb.world == "gmm":
        g = torch.Generator().manual_seed(int(rc["seed"]))
        labels = torch.randint(0, bb.gmm.num_classes, (int(rc["n"]),), generator=g)
        real = torch.cat([bb.gmm.sample(1, g, label=torch.tensor([lab])) for lab in labels.tolist()]).float()
        gp = torch.Generator().manual_seed(int(rc["seed"]) + 1)
        prompts = torch.randint(0, bb.gmm.num_classes, (int(rc["n"]),), generator=gp).tolist()
    elif bb.world == "digits":
        from solverzoo.models.worlds import DigitsWorld

        d = DigitsWorld()
        n = min(int(rc["n"]), len(d))
        order = np.random.default_rng(int(rc["seed"])).permutation(len(d))[:n]
        real = torch.from_numpy(d.images[order])
        other = np.random.default_rng(int(rc["seed"]) + 1).permutation(len(d))[:n]
        prompts = [d.caption(int(lab)) for lab in d.labels[other]]
    else:
        from solverzoo.models.worlds import ShapesWorld

        imgs, _, _ = ShapesWorld(int(rc["seed"])).batch(0, int(rc["n"]))
        real = torch.from_numpy(imgs)
        prompts = ShapesWorld(int(rc["seed"]) + 1).batch(0, int(rc["n"]))[1]
    if extractor is None:
        return Reference(ident, np.zeros(1), np.zeros((1, 1)), 0, None, prompts)
    cache = cache_dir / f"reference-{key}.safetensors"
    if rc["kind"] == "npz":
        if not rc.get("path") or not Path(rc["path"]).is_file():
            raise MetricUnavailable(f"reference npz {rc.get('path')!r} does not exist")
        z = np.load(rc["path"])
        return Reference(ident, z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z.get("n", 10000)), None, prompts)
    if cache.is_file():
        from safetensors.torch import load_file

        feats = load_file(str(cache))["features"]
    else:
        if rc["kind"] == "folder":
            real = _load_folder(rc.get("path") or "", tuple(real.shape[1:]))
        feats = extractor(real)
        from safetensors.torch import save_file

        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        save_file({"features": feats.contiguous()}, str(tmp))
        os.replace(tmp, cache)
    mu, sig = stats(feats.numpy())
    return Reference(ident, mu, sig, len(feats), feats, prompts)


def _warm_up(bb, cfg: dict, ref: Reference, extractor) -> None:
    """One-off costs (first decoder call, first metric computations, lazy imports) are paid here,
    once per process, not inside the first timed cell."""
    with torch.no_grad():
        bb.decode(torch.zeros((2,) + tuple(bb.latent_shape), device=cfg["device"]))
        _flops(bb, cfg["device"])  # the FLOP count of one evaluation, once per backbone
        # the conditioner memoises per prompt: encode every prompt of the sweep once, here
        n = int(cfg["sweep"]["n_samples"])
        bb.conds([ref.prompts[i % len(ref.prompts)] for i in range(n)])
    if extractor is not None and ref.features is not None:
        m = cfg["metrics"]
        fid_kid(ref.features[:8].clone(), ref, bootstrap=2, ci=m["ci"], kid_subset=4)


def _write_floor(bb, cfg: dict, ref: Reference, extractor, results_dir: Path) -> None:
    """FID of N fresh real samples against the reference: what a perfect sampler would score at
    this N (FID's small-N bias), stated next to every figure."""
    import json

    n, m = int(cfg["sweep"]["n_samples"]), cfg["metrics"]
    seed = int(m["reference"]["seed"]) + 1
    # real samples of exactly the sweep's prompts (the independent draw, seed + 1), so the floor is
    # what a perfect sampler would score on these prompts
    if bb.world == "gmm":
        g = torch.Generator().manual_seed(seed + 7)
        labels = [ref.prompts[i % len(ref.prompts)] for i in range(n)]
        real = torch.cat([bb.gmm.sample(1, g, label=torch.tensor([lab])) for lab in labels]).float()
    elif bb.world == "digits":
        from solverzoo.models.worlds import DigitsWorld

        d = DigitsWorld()
        real = torch.from_numpy(d.images[np.random.default_rng(seed).permutation(len(d))[:n]])
    else:
        from solverzoo.models.worlds import ShapesWorld

        real = torch.from_numpy(ShapesWorld(seed).batch(0, n)[0])
    out = fid_kid(extractor(real), ref, bootstrap=m["bootstrap"], ci=m["ci"], kid_subset=m["kid_subset_size"])
    out.pop("_fid_boot", None)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "floor.json").write_text(json.dumps({"n": len(real), "source": f"{bb.world} world, seed {seed}", **out}, indent=1))


# -- one cell -------------------------------------------------------------------------------
def _dist():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def run_cell(cell: dict, bb, ref: Reference, extractor, cfg: dict, results_dir: Path) -> dict:
    t0 = time.perf_counter()
    dist, rank, world = _dist()
    n = cell["n_samples"]
    idx = list(range(rank, n, world))  # sample i is the same whatever the number of ranks
    prompts = [ref.prompts[i % len(ref.prompts)] for i in idx]
    seeds = [cell["seed_set"] * SEED_STRIDE + i for i in idx]
    guidance = None if cell["guidance"] == "none" else cell["guidance"]
    with timed_net(bb.model) as backbone_s:
        gen = generate(bb, prompts, solver=cell["solver"], steps=cell["steps"], grid=cell["grid"],
                       grid_options=cell["grid_options"], guidance=guidance, scale=cell["scale"], seeds=seeds,
                       device=cfg["device"], solver_options=cell["solver_options"], batch_size=cfg["batch_size"],
                       progress=bool(cfg.get("progress", True)) and rank == 0,
                       cache=cell.get("cache"), cache_options=cell.get("cache_options"),
                       reference=bb.world == "gmm" and not registry.get("solver", cell["solver"]).is_stochastic(**cell["solver_options"]))
    if not torch.isfinite(gen.latents).all():
        raise CellFailed("the samples contain NaN/inf")
    t_feat = time.perf_counter()
    m = cell["metrics"]
    feats = extractor(gen.images) if extractor is not None and (m["fid"] or m["kid"]) else None
    skipped = []
    try:
        hits = _prompt_hits(bb, gen.images, gen.latents, prompts) if m["prompt_accuracy"] else None
    except MetricUnavailable as exc:  # a metric that does not apply: skipped with its reason
        hits, skipped = None, [f"prompt_accuracy skipped: {exc}"]
    if dist is not None:  # gather every rank's samples' features and hits, in sample order
        parts = [None] * world
        dist.all_gather_object(parts, (idx, feats, hits))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        feats = torch.cat([p[1] for p in parts])[order] if feats is not None else None
        hits = np.concatenate([p[2] for p in parts])[order] if hits is not None else None
    feat_s = time.perf_counter() - t_feat
    rec = dict(cell)
    flops = _flops(bb, cfg["device"])
    rec.update(config_hash=config_hash(cell), nfe=gen.nfe, status="ok", error=None, warnings=[],
               cache=cell.get("cache", "none"), backbone_evals=gen.backbone_evals,
               flops_per_sample=flops_per_sample(flops, gen.nfe, gen.backbone_evals) if flops else math.nan,
               fid=math.nan, fid_ci_low=math.nan, fid_ci_high=math.nan, kid=math.nan, clip_score=math.nan,
               prompt_accuracy=math.nan, ranks=world, solverzoo=__version__, torch=torch.__version__)
    rec["warnings"].extend(skipped)
    if bb.world == "gmm" and rank == 0:  # exact metric: sliced Wasserstein to exact samples of the prompted classes
        from solverzoo.bench.verify import sliced_wasserstein

        allp = [ref.prompts[i % len(ref.prompts)] for i in range(n)]
        exact = torch.cat([bb.gmm.sample(1, torch.Generator().manual_seed(7 + i), label=torch.tensor([p])) for i, p in enumerate(allp)])
        lat = feats if feats is not None else gen.latents.double()
        rec["sliced_wasserstein"] = sliced_wasserstein(lat, exact)
        if gen.reference is not None and dist is None:  # exact metrics against the DOP853 solve of the same ODE
            err = ((gen.latents.double() - gen.reference.double()) ** 2).mean(1).sqrt()
            rec["median_error"] = float(err.median())
            rec["mode_flip_rate"] = float((bb.gmm.component(gen.latents) != bb.gmm.component(gen.reference)).double().mean())
    t_metric = time.perf_counter()
    metric_s_offset = 0.0
    if feats is None and (m["fid"] or m["kid"]):
        rec["warnings"].append("fid/kid skipped: " + ref.identity.get("skipped", "no feature extractor for this backbone"))
    if feats is not None and m["fid"]:
        if n < 2 * feats.shape[1]:
            rec["warnings"].append(f"N={n} is below 2 x feature dim ({2 * feats.shape[1]}): FID is biased upward and "
                                   "its covariance is rank-deficient; compare only at equal N")
        t_fk = time.perf_counter()
        rec.update(fid_kid(feats, ref, bootstrap=m["bootstrap"], ci=m["ci"], kid_subset=m["kid_subset_size"],
                           seed=cell["seed_set"]))
        rec["fid_kid_s"] = time.perf_counter() - t_fk
        rec["feature"] = extractor.identity()
        rec["reference"] = ref.identity
    if hits is not None:
        p, lo, hi = proportion_ci(hits, m["bootstrap"], m["ci"], seed=cell["seed_set"])
        rec.update(prompt_accuracy=p, prompt_accuracy_ci_low=lo, prompt_accuracy_ci_high=hi)
    if m["clip_score"]:
        clip_id = m.get("clip_model") or ("shapes-clip" if bb.world == "shapes" else None)
        if clip_id and bb.world != "gmm":
            # every rank scores its own samples; torchmetrics syncs CLIPScore's sums across ranks in compute()
            try:
                t_clip = time.perf_counter()
                rec.update(clip_score(gen.images, prompts, clip_id))
                feat_s += time.perf_counter() - t_clip  # a network evaluating the samples: metric features
                metric_s_offset = time.perf_counter() - t_clip
            except (OSError, MetricUnavailable) as exc:  # missing weights / model: skipped with the reason
                rec["warnings"].append(f"clip_score skipped: {exc}")
        else:
            rec["warnings"].append(f"clip_score skipped: no CLIP model for the {bb.world} world "
                                   "(set metrics.clip_model=PATH to a Hugging Face CLIP)" if bb.world != "gmm" else
                                   "clip_score does not apply to the Gaussian-mixture backbone")
    boots = rec.pop("_fid_boot", None)
    if rank == 0 and (feats is not None or hits is not None):
        mine = {"features": feats, "hits": None if hits is None else torch.from_numpy(hits),
                "fid": None if boots is None else torch.tensor(rec["fid"], dtype=torch.float64),
                "fid_boot": torch.tensor(boots, dtype=torch.float64) if boots else None}
        write_arrays(results_dir, rec["config_hash"], mine)
        if "cache" in cell:
            rec.update(_paired_vs_no_cache(cell, mine, ref, m, results_dir))
    metric_s = time.perf_counter() - t_metric - metric_s_offset
    wall = time.perf_counter() - t0
    rec.update(wall_s=wall, sampling_s=gen.sampling_s, backbone_s=backbone_s[0], solver_s=gen.sampling_s - backbone_s[0],
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
    out = paired_delta(_numpy(mine), _numpy(other), ref, m["bootstrap"], m["ci"], seed=cell["seed_set"])
    return {**out, "paired_with": config_hash(twin)}


def _numpy(arrays: dict) -> dict:
    return {k: (v.double().numpy() if v.ndim else float(v)) if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}


_FLOPS: dict = {}


def _flops(bb, device: str) -> dict | None:
    """FLOPs of one evaluation of the backbone's network per sample (None where the backbone has
    no transformer block stack, e.g. the analytic mixture)."""
    key = (bb.name, bb.weights_id, device)
    if key not in _FLOPS:
        try:
            x = torch.zeros((1,) + tuple(bb.latent_shape), device=device)
            cond = {k: v.to(device) for k, v in bb.conds([_any_prompt(bb)])["cond"].items()}
            t = torch.full((1,), float(bb.model.constants(0.5 * float(bb.model.schedule.t_max))[0]), device=device)
            _FLOPS[key] = estimate_flops(bb.model.net, x, t, cond)
        except CacheError:
            _FLOPS[key] = None
    return _FLOPS[key]


def _any_prompt(bb):
    return 0 if bb.world in ("gmm", "digits") else "a red circle"


def _prompt_hits(bb, images, latents, prompts) -> np.ndarray:
    if bb.world == "gmm":
        comp = bb.gmm.component(latents)
        return (bb.gmm.labels[comp] == torch.as_tensor(prompts)).numpy().astype(np.float64)
    if bb.classifier is None:
        raise MetricUnavailable(f"backbone {bb.name!r} has no attribute classifier for prompt accuracy")
    if bb.world == "digits":
        with torch.no_grad():
            pred = bb.classifier(images).argmax(-1)
        want = torch.tensor([bb.conditioner.label(p) for p in prompts])
        return (pred == want).numpy().astype(np.float64)
    from solverzoo.models.nets.classifier import matches
    from solverzoo.models.worlds import parse_caption

    pred = bb.classifier.predict(images)
    return np.array([matches(parse_caption(c), p) for c, p in zip(prompts, pred)], dtype=np.float64)


# -- the sweep ------------------------------------------------------------------------------
def run_sweep(cfg: dict) -> tuple[Path, Path]:
    from tqdm import tqdm

    from solverzoo.bench.report import write_report

    results_dir = Path(cfg["results_dir"])
    _, rank, _ = _dist()
    import torchmetrics.image.fid  # noqa: F401  one-off imports here, not inside the first timed cell
    import torchmetrics.image.kid  # noqa: F401,F811
    bb = load_backbone(cfg["backbone"]["name"], cfg["device"])
    skipped: list[str] = []
    cells = expand(cfg, bb, skipped)
    for why in skipped:
        print(f"solverzoo: {why}", file=sys.stderr)
    mcfg = cfg["metrics"]
    try:
        extractor = make_extractor(mcfg["feature"], bb, mcfg) if (mcfg["fid"] or mcfg["kid"]) else None
    except MetricUnavailable as exc:
        print(f"solverzoo: FID/KID skipped: {exc}", file=sys.stderr)
        extractor = None
    try:
        ref = load_reference(bb, mcfg, extractor, results_dir.parent / "cache")
    except MetricUnavailable as exc:  # e.g. an empty reference folder: FID / KID skipped, stated in every row
        print(f"solverzoo: FID/KID skipped: {exc}", file=sys.stderr)
        extractor = None
        ref = load_reference(bb, {**mcfg, "reference": {**mcfg["reference"], "kind": "world"}}, None, results_dir.parent / "cache")
        ref.identity["skipped"] = str(exc)
    if rank == 0 and extractor is not None and ref.features is not None:
        _write_floor(bb, cfg, ref, extractor, results_dir)
    if rank == 0 and extractor is not None:  # for paired comparisons in reports
        write_arrays(results_dir, "reference", {"mu": torch.from_numpy(ref.mu), "sigma": torch.from_numpy(ref.sigma),
                                                "n": torch.tensor(ref.n)})
    _warm_up(bb, cfg, ref, extractor)
    for stale in records_dir(results_dir).glob(".*.tmp") if records_dir(results_dir).is_dir() else []:
        stale.unlink()  # a record being written when a previous run was killed: never a partial record
    todo = []
    for c in cells:
        p = records_dir(results_dir) / f"{config_hash(c)}.json"
        rec = read_record(p) if p.exists() else None
        if rec is None or (rec["status"] != "ok" and cfg.get("retry_failed", True)):
            todo.append(c)
    if rank == 0:
        print(f"sweep {cfg['sweep']['name']} on {bb.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
              f"{len(todo)} to run -> {results_dir}", flush=True)
    bar = tqdm(todo, desc="sweep", unit="cell", disable=not cfg.get("progress", True) or rank != 0, file=sys.stderr)
    for cell in bar:
        label = (f"{cell['solver']} {cell['grid']} {cell['steps']} steps {cell['guidance']} {cell['scale']:g} "
                 f"seeds {cell['seed_set']}" + (f" cache {cell['cache']} {cell['cache_options']}" if "cache" in cell else ""))
        try:
            rec = run_cell(cell, bb, ref, extractor, cfg, results_dir)
        except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, not fatal
            if cfg.get("fail_fast"):
                raise
            rec = dict(cell, config_hash=config_hash(cell), status="failed", nfe=None, wall_s=None,
                       error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5), warnings=[])
        if rank == 0:
            write_record(results_dir, rec)
            if rec["status"] == "ok":
                tqdm.write(f"  done {label}: NFE {rec['nfe']}, backbone evals {rec['backbone_evals']:.1f}, FID {rec['fid']:.3f} [{rec['fid_ci_low']:.3f}, "
                           f"{rec['fid_ci_high']:.3f}], prompt acc {rec['prompt_accuracy']:.3f}, {rec['wall_s']:.1f} s",
                           file=sys.stderr)
            else:
                tqdm.write(f"  FAILED {label}: {rec['error']}", file=sys.stderr)
    if rank != 0:
        return results_dir, Path(cfg["report_dir"])
    build_table(results_dir)
    report = write_report(results_dir, cfg["report_dir"])
    table = results_dir / "results.parquet"
    return table, report
