"""Running a sweep: expand the cells, load the backbone and the reference statistics once,
run each missing cell, write its record atomically, then build the table and the report."""
from __future__ import annotations

import itertools
import sys
import traceback
from pathlib import Path

import torch

from solverzoo.backbone import load_backbone
from solverzoo.bench.cell import dist_info, flops, run_cell
from solverzoo.bench.metrics import MetricUnavailable, Reference, fid_kid, make_extractor
from solverzoo.bench.records import build_table, config_hash, read_record, records_dir, write_arrays, write_record
from solverzoo.bench.reference_set import load_reference, write_floor
from solverzoo.caching import CacheError, find_stack
from solverzoo.registry import registry
from solverzoo.timegrid import GridError

METRIC_SETTINGS = ("fid", "kid", "prompt_accuracy", "clip_score", "feature", "reference", "resize", "antialias",
                   "bootstrap", "ci", "kid_subset_size", "clip_model", "inception_weights")


def expand(cfg: dict, backbone, skipped: list | None = None) -> list[dict]:
    """The sweep's cells: seed set x guidance x solver x grid x steps x cache (pinned settings
    included). Caches that cannot apply to the backbone (no transformer block stack) and saved
    grids made for another backbone / step count are left out, with the reason appended to ``skipped``."""
    sw, m = cfg["sweep"], cfg["metrics"]
    caches = _applicable_caches(sw, backbone, skipped)
    grids = [_grid_entry(g, backbone) for g in sw["grids"]]
    missing = _missing_saved_grids(sw, grids, backbone, skipped)
    cells = []
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
            "metrics": {k: m[k] for k in METRIC_SETTINGS},
            **extra,
        })
    return cells


def _applicable_caches(sw: dict, backbone, skipped: list | None) -> list[tuple[str, dict]]:
    caches = [_cache_entry(c) for c in sw.get("caches") or ["none"]]
    if any(c != "none" for c, _ in caches):
        try:
            find_stack(backbone.model.net)
        except CacheError as exc:
            if skipped is not None:
                skipped.append(f"caches {[c for c, _ in caches if c != 'none']} skipped on {backbone.name}: {exc}")
            caches = [c for c in caches if c[0] == "none"]
    return caches


def _missing_saved_grids(sw: dict, grids: list, backbone, skipped: list | None) -> set:
    """(key, steps) of the optimised grids that were not saved for this backbone and step count."""
    missing = set()
    for grid_name, grid_opts in grids:
        if grid_name != "optimised":
            continue
        for steps in sw["steps"]:
            try:
                registry.get("grid", grid_name)(backbone.model.schedule, int(steps), **grid_opts)
            except GridError as exc:
                missing.add((grid_opts.get("key"), int(steps)))
                if skipped is not None:
                    skipped.append(f"grid optimised key={grid_opts.get('key')} skipped at {steps} steps: {exc}")
    return missing


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


def _warm_up(bb, cfg: dict, ref: Reference, extractor) -> None:
    """One-off costs (first decoder call, first metric computations, lazy imports) are paid here,
    once per process, not inside the first timed cell."""
    with torch.no_grad():
        bb.decode(torch.zeros((2,) + tuple(bb.latent_shape), device=cfg["device"]))
        flops(bb, cfg["device"])  # the FLOP count of one evaluation, once per backbone
        # the conditioner memoises per prompt: encode every prompt of the sweep once, here
        n = int(cfg["sweep"]["n_samples"])
        bb.conds([ref.prompts[i % len(ref.prompts)] for i in range(n)])
    if extractor is not None and ref.features is not None:
        m = cfg["metrics"]
        fid_kid(ref.features[:8].clone(), ref, bootstrap=2, ci=m["ci"], kid_subset=4)


def _reference(bb, cfg: dict, results_dir: Path, rank: int):
    """The feature extractor and reference set (FID / KID skipped, with the reason, where they
    cannot be had), the floor and the reference statistics for reports."""
    mcfg, cache_dir = cfg["metrics"], results_dir.parent / "cache"
    try:
        extractor = make_extractor(mcfg["feature"], bb, mcfg) if (mcfg["fid"] or mcfg["kid"]) else None
    except MetricUnavailable as exc:
        print(f"solverzoo: FID/KID skipped: {exc}", file=sys.stderr)
        extractor = None
    try:
        ref = load_reference(bb, mcfg, extractor, cache_dir)
    except MetricUnavailable as exc:  # e.g. an empty reference folder: FID / KID skipped, stated in every row
        print(f"solverzoo: FID/KID skipped: {exc}", file=sys.stderr)
        extractor = None
        ref = load_reference(bb, {**mcfg, "reference": {**mcfg["reference"], "kind": "world"}}, None, cache_dir)
        ref.identity["skipped"] = str(exc)
    if rank == 0 and extractor is not None and ref.features is not None:
        write_floor(bb, cfg, ref, extractor, results_dir)
    if rank == 0 and extractor is not None:  # for paired comparisons in reports
        write_arrays(results_dir, "reference", {"mu": torch.from_numpy(ref.mu), "sigma": torch.from_numpy(ref.sigma),
                                                "n": torch.tensor(ref.n)})
    return extractor, ref


def _todo(cells: list[dict], results_dir: Path, cfg: dict) -> list[dict]:
    """The cells without a finished record (failed ones too, unless ``retry_failed=false``)."""
    rdir = records_dir(results_dir)
    for stale in rdir.glob(".*.tmp") if rdir.is_dir() else []:
        stale.unlink()  # a record being written when a previous run was killed: never a partial record
    todo = []
    for c in cells:
        p = rdir / f"{config_hash(c)}.json"
        rec = read_record(p) if p.exists() else None
        if rec is None or (rec["status"] != "ok" and cfg.get("retry_failed", True)):
            todo.append(c)
    return todo


def _run_one(cell: dict, bb, ref: Reference, extractor, cfg: dict, results_dir: Path) -> dict:
    """A cell's record; a failing cell is recorded as failed (unless ``fail_fast``)."""
    try:
        return run_cell(cell, bb, ref, extractor, cfg, results_dir)
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, not fatal
        if cfg.get("fail_fast"):
            raise
        return dict(cell, config_hash=config_hash(cell), status="failed", nfe=None, wall_s=None,
                    error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5), warnings=[])


def _label(cell: dict) -> str:
    return (f"{cell['solver']} {cell['grid']} {cell['steps']} steps {cell['guidance']} {cell['scale']:g} "
            f"seeds {cell['seed_set']}" + (f" cache {cell['cache']} {cell['cache_options']}" if "cache" in cell else ""))


def run_sweep(cfg: dict) -> tuple[Path, Path]:
    """Run the sweep ``cfg`` (the composed Hydra config as a dict); returns (table, report)."""
    from tqdm import tqdm

    from solverzoo.bench.report import write_report

    results_dir = Path(cfg["results_dir"])
    _, rank, _ = dist_info()
    import torchmetrics.image.fid  # noqa: F401  one-off imports here, not inside the first timed cell
    import torchmetrics.image.kid  # noqa: F401,F811
    bb = load_backbone(cfg["backbone"]["name"], cfg["device"])
    bb.require_world()
    skipped: list[str] = []
    cells = expand(cfg, bb, skipped)
    for why in skipped:
        print(f"solverzoo: {why}", file=sys.stderr)
    extractor, ref = _reference(bb, cfg, results_dir, rank)
    _warm_up(bb, cfg, ref, extractor)
    todo = _todo(cells, results_dir, cfg)
    if rank == 0:
        print(f"sweep {cfg['sweep']['name']} on {bb.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
              f"{len(todo)} to run -> {results_dir}", flush=True)
    bar = tqdm(todo, desc="sweep", unit="cell", disable=not cfg.get("progress", True) or rank != 0, file=sys.stderr)
    for cell in bar:
        rec = _run_one(cell, bb, ref, extractor, cfg, results_dir)
        if rank != 0:
            continue
        write_record(results_dir, rec)
        if rec["status"] == "ok":
            tqdm.write(f"  done {_label(cell)}: NFE {rec['nfe']}, backbone evals {rec['backbone_evals']:.1f}, FID "
                       f"{rec['fid']:.3f} [{rec['fid_ci_low']:.3f}, {rec['fid_ci_high']:.3f}], prompt acc "
                       f"{rec['prompt_accuracy']:.3f}, {rec['wall_s']:.1f} s", file=sys.stderr)
        else:
            tqdm.write(f"  FAILED {_label(cell)}: {rec['error']}", file=sys.stderr)
    if rank != 0:
        return results_dir, Path(cfg["report_dir"])
    build_table(results_dir)
    report = write_report(results_dir, cfg["report_dir"])
    return results_dir / "results.parquet", report
