"""Running a sweep: expand the cells, load the backbone and the reference statistics once,
run each missing cell, write its record atomically, then build the table and the report."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch

from solverzoo.backbone import load_backbone
from solverzoo.bench import autoregressive as ar
from solverzoo.bench import cost_model
from solverzoo.bench.cell import dist_info, flops, run_cell
from solverzoo.bench.cell_spec import Cell
from solverzoo.bench.lock import ResultsLock
from solverzoo.bench.metrics import MetricUnavailable, Reference, fid_kid, make_extractor
from solverzoo.bench.records import (
    ResultsError,
    build_table,
    mark_stale,
    read_record,
    records_dir,
    write_arrays,
    write_record,
)
from solverzoo.bench.reference_set import load_reference, write_floor
from solverzoo.bench.validate import ConfigError, validate_config
from solverzoo.caching import CacheError, drives, find_stack
from solverzoo.registry import registry
from solverzoo.timegrid import GridError

EXIT_FAILED_CELLS = 3  # a sweep in which cells (or metrics the user asked for) failed; keep_going=true exits 0


METRIC_SETTINGS = ("fid", "kid", "prompt_accuracy", "clip_score", "feature", "reference", "resize", "antialias",
                   "bootstrap", "ci", "kid_subset_size", "clip_model", "inception_weights", "fid_inf_boot", "fid_inf_sizes",
                   "kid_subsets", "kid_boot", "kid_reference_n", "converged")


def expand(cfg: dict, backbone, skipped: list | None = None) -> list[Cell]:
    """The sweep's cells: seed set x guidance x solver x grid x steps x cache (pinned settings
    included). Caches that cannot apply to the backbone (no transformer block stack) and saved
    grids made for another backbone / step count are left out, with the reason appended to ``skipped``; so
    are solvers on a backbone its generator samples and ``autoregressive`` on a diffusion one
    (:mod:`solverzoo.bench.autoregressive`, which expands a generator backbone's cells)."""
    sw, m = cfg["sweep"], cfg["metrics"]
    if ar.is_generator_backbone(backbone):
        return ar.expand(cfg, backbone, {k: m[k] for k in METRIC_SETTINGS}, _n_cells(sw), skipped)
    if (why := ar.mismatch(sw["solvers"], backbone)) and skipped is not None:
        skipped.append(why)
    solvers = [s for s in sw["solvers"] if s != ar.AUTOREGRESSIVE]
    caches = _applicable_caches(sw, backbone, skipped)
    grids = [_grid_entry(g, backbone) for g in sw["grids"]]
    missing = _missing_saved_grids(sw, grids, backbone, skipped)
    cells = []
    for seed_set, g, solver, (grid_name, grid_opts), steps, (cache, cache_opts) in itertools.product(
            sw["seed_sets"], sw["guidance"], solvers, grids, sw["steps"], caches):
        if grid_name == "optimised" and (grid_opts.get("key"), int(steps)) in missing:
            continue
        cells.append(Cell(
            backbone=backbone.name, backbone_weights=backbone.weights_id, solver=solver,
            solver_options=dict(sw.get("solver_options", {}).get(solver, {})), grid=grid_name,
            grid_options=grid_opts, steps=int(steps), guidance=g["name"], scale=float(g["scale"]),
            n_samples=_n_cells(sw), seed_set=int(seed_set), metrics={k: m[k] for k in METRIC_SETTINGS},
            cache=None if cache == "none" else cache, cache_options=None if cache == "none" else cache_opts,
        ))  # no cache: no cache keys in its config (no-cache hashes unchanged)
    return cells


def _applicable_caches(sw: dict, backbone, skipped: list | None) -> list[tuple[str, dict]]:
    caches = [_cache_entry(c) for c in sw.get("caches") or ["none"]]
    if any(c != "none" for c, _ in caches):
        try:
            found = find_stack(backbone.model.net)  # (network, layout): a cache drives only the layouts it knows
            unfit = [c for c, _ in caches if c != "none" and found is not None and not drives(c, found[1])]
            reason = f"{type(found[0]).__name__} declares a {type(found[1]).__name__}, which they do not drive" if unfit else ""
        except CacheError as exc:
            unfit, reason = [c for c, _ in caches if c != "none"], str(exc)
        if unfit:
            if skipped is not None:
                skipped.append(f"caches {unfit} skipped on {backbone.name}: {reason}")
            caches = [c for c in caches if c[0] not in unfit]
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
        n = _n_cells(cfg["sweep"])
        if bb.conditioner is not None:  # a generator backbone may condition inside its generator
            bb.conds([ref.prompts[i % len(ref.prompts)] for i in range(n)])
    if extractor is not None and ref.features is not None:
        m = cfg["metrics"]
        fid_kid(ref.features[:64].clone(), ref, bootstrap=2, ci=m["ci"], kid_subset=4, fid_inf_boot=2, kid_boot=2,
                kid_subsets=2, kid_reference_n=64)


HARNESS_BACKBONE_KEYS = ("name", "reference_n")
"""Keys of a ``backbone`` config the harness reads itself (``reference_n``: the default size of the
reference set, ``metrics.reference.n``); every other key is an option of the backbone's factory."""


def _load_backbone(cfg: dict):
    """The backbone ``cfg.backbone`` names; its other keys (e.g. ``backbone.path`` of ``backbone=diffusers``)
    are its factory's keyword options (loaded once per process and option set)."""
    opts = {k: v for k, v in cfg["backbone"].items() if k not in HARNESS_BACKBONE_KEYS}
    if not opts:
        return load_backbone(cfg["backbone"]["name"], cfg["device"])
    return _load_with_options(cfg["backbone"]["name"], cfg["device"], json.dumps(opts, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _load_with_options(name: str, device: str, options: str):
    factory = registry.get("backbone", name)
    try:
        return factory(device=device, **json.loads(options))
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise ConfigError(f"backbone {name!r} takes no such option: {exc} (check the backbone.* overrides)") from None


def _reference(bb, cfg: dict, results_dir: Path, rank: int):
    """The feature extractor and reference set (FID / KID skipped, with the reason, where they
    cannot be had), the floor and the reference statistics for reports."""
    mcfg, cache_dir = cfg["metrics"], results_dir.parent / "cache"
    try:
        extractor = make_extractor(mcfg["feature"], bb, mcfg) if (mcfg["fid"] or mcfg["kid"]) else None
    except MetricUnavailable as exc:
        print(f"solverzoo: FID/KID skipped: {exc}", file=sys.stderr)
        extractor, why = None, str(exc)
    else:
        why = None
    try:
        ref = load_reference(bb, mcfg, extractor, cache_dir, n_prompts=_n_prompts(cfg))
    except MetricUnavailable as exc:  # e.g. an empty reference folder: FID / KID skipped, stated in every row
        print(f"solverzoo: FID/KID skipped: {exc}", file=sys.stderr)
        extractor = None
        ref = load_reference(bb, {**mcfg, "reference": {**mcfg["reference"], "kind": "world"}}, None, cache_dir,
                             n_prompts=_n_prompts(cfg))
        ref.identity["skipped"] = str(exc)
    if why is not None:  # every record says why FID / KID are missing
        ref.identity["skipped"] = why
    if rank == 0 and extractor is not None:  # for paired comparisons in reports
        write_arrays(results_dir, "reference", {"mu": torch.from_numpy(ref.mu), "sigma": torch.from_numpy(ref.sigma),
                                                "n": torch.tensor(ref.n)})
    return extractor, ref


def _n_cells(sw: dict) -> int:
    """The cells' N (with ``auto``, a provisional N until :func:`_plan` has chosen it)."""
    return min(cost_model.N_CANDIDATES) if sw["n_samples"] == "auto" else int(sw["n_samples"])


def _n_prompts(cfg: dict) -> int:
    """Prompts to draw: the sweep's N, or the largest N ``n_samples=auto`` may choose (a prefix-stable draw)."""
    n = cfg["sweep"]["n_samples"]
    return max(cost_model.N_CANDIDATES) if n == "auto" else int(n)


def _plan(bb, cfg: dict, cells: list[Cell], extractor, ref: Reference, results_dir: Path, t_start: float,
          world_size: int) -> list[Cell]:
    """Measure the unit costs and predict the sweep's time (``plan.json``); with ``n_samples=auto``
    choose the largest N that fits ``sweep.budget_s`` and return the cells at that N."""
    sw = cfg["sweep"]
    auto, budget = sw["n_samples"] == "auto", sw.get("budget_s")
    if not (auto or budget or cfg.get("plan_only")):
        return cells
    if auto and world_size > 1:
        raise ConfigError("sweep.n_samples=auto measures this process's speed; under several processes give a number")
    costs = cost_model.probe(bb, cfg, extractor, ref)
    cached = {"reference_cached": True, "converged_cached": False}  # the reference is loaded by now
    elapsed = time.perf_counter() - t_start
    if auto:
        n, plan = cost_model.choose_n(cells, cfg, costs, float(budget), elapsed_s=elapsed, **cached)
        sw["n_samples"] = n
        cells = [dataclasses.replace(c, n_samples=n) for c in cells]
    else:
        plan = cost_model.predict(cells, cfg, costs, **cached)
    plan.update(budget_s=budget, elapsed_before_plan_s=round(elapsed, 1), chosen_by="cost model" if auto else "config")
    cost_model.write_plan(results_dir, plan)
    print(cost_model.describe(plan), file=sys.stderr, flush=True)
    if budget and plan["total_s"] + elapsed > float(budget):
        print(f"solverzoo: warning: the sweep is predicted to take {plan['total_s'] + elapsed:.0f} s, over sweep.budget_s="
              f"{budget} (fewer cells, a smaller sweep.n_samples, or a larger budget)", file=sys.stderr)
    return cells


def _todo(cells: list[Cell], results_dir: Path, cfg: dict) -> list[Cell]:
    """The cells without a finished, valid record (failed ones too, unless ``retry_failed=false``);
    an ok record whose per-sample arrays (``features/``) are gone is recomputed too, saying so."""
    rdir, fdir = records_dir(results_dir), Path(results_dir) / "features"
    for d in (rdir, fdir):  # a killed run's leftovers (.HASH.PID.tmp): never a live writer's
        for stale in d.glob(".*.tmp") if d.is_dir() else []:
            if not _alive(stale.name.split(".")[-2]):
                stale.unlink(missing_ok=True)
    todo, lost = [], 0
    for c in cells:
        p = rdir / f"{c.hash}.json"
        rec = read_record(p) if p.exists() else None
        if (rec is not None and rec["status"] == "ok" and _wrote_arrays(rec)
                and not (fdir / f"{rec['config_hash']}.safetensors").is_file()):
            lost += 1
            rec = None
        if rec is None or (rec["status"] != "ok" and cfg.get("retry_failed", True)):
            todo.append(c)
    if lost:
        print(f"solverzoo: warning: {lost} finished cell(s) lost their per-sample arrays ({fdir}/HASH.safetensors, "
              "needed for paired comparisons); recomputing them", file=sys.stderr)
    return todo


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()  # our own pid on a leftover: a dead process's, reused


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _wrote_arrays(rec: dict) -> bool:
    """Whether the cell that made ``rec`` saved per-sample arrays (it does with features or prompt hits)."""
    return _finite(rec.get("fid")) or _finite(rec.get("prompt_accuracy"))


def _run_one(cell: Cell, bb, ref: Reference, extractor, cfg: dict, results_dir: Path) -> dict:
    """A cell's record; a failing cell is recorded as failed (unless ``fail_fast``)."""
    try:
        return run_cell(cell, bb, ref, extractor, cfg, results_dir)
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, not fatal
        if cfg.get("fail_fast"):
            raise
        return dict(cell.config(), config_hash=cell.hash, status="failed", nfe=None, wall_s=None,
                    error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5), warnings=[])


def run_sweep(cfg: dict) -> tuple[Path, Path, list[str]]:
    """Run the sweep ``cfg`` (the composed Hydra config as a dict); returns (table, report,
    failures): ``failures`` one line per group of failed cells (empty when every cell ran)."""
    validate_config(cfg)
    results_dir = Path(cfg["results_dir"])
    _, rank, _ = dist_info()
    if rank != 0:  # rank 0 writes; the others only compute their share
        return _run_sweep(cfg, results_dir, rank)
    with ResultsLock(results_dir, shared=_multirun()) as lock:
        return _run_sweep(cfg, results_dir, rank, lock)


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra
        return False


def _run_sweep(cfg: dict, results_dir: Path, rank: int, lock=None) -> tuple[Path, Path, list[str]]:
    import torchmetrics.image.fid  # noqa: F401  one-off imports here, not inside the first timed cell
    import torchmetrics.image.kid  # noqa: F401,F811
    from tqdm import tqdm

    from solverzoo.bench.report import write_report
    t_start = time.perf_counter()
    bb = _load_backbone(cfg)
    bb.require_world()
    skipped: list[str] = []
    cells = expand(cfg, bb, skipped)
    for why in skipped:
        print(f"solverzoo: {why}", file=sys.stderr)
    if not cells:
        raise ConfigError("the sweep has no cells left to run (every one was skipped, see above)")
    extractor, ref = _reference(bb, cfg, results_dir, rank)
    _warm_up(bb, cfg, ref, extractor)
    cells = _plan(bb, cfg, cells, extractor, ref, results_dir, t_start, dist_info()[2])
    if cfg.get("plan_only"):
        return results_dir / "plan.json", results_dir / "plan.json", []
    if rank == 0 and extractor is not None and ref.features is not None:
        write_floor(bb, cfg, ref, extractor, results_dir)
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
            tqdm.write(f"  done {cell.label()}: NFE {rec['nfe']}, backbone evals {rec['backbone_evals']:.1f}, FID "
                       f"{rec['fid']:.3f} [{rec['fid_ci_low']:.3f}, {rec['fid_ci_high']:.3f}], prompt acc "
                       f"{rec['prompt_accuracy']:.3f}, {rec['wall_s']:.1f} s", file=sys.stderr)
        else:
            tqdm.write(f"  FAILED {cell.label()}: {rec['error']}", file=sys.stderr)
    if rank != 0:
        return results_dir, Path(cfg["report_dir"]), []
    if lock is not None:
        lock.exclusive()
    try:
        build_table(results_dir, report_dir=cfg["report_dir"])
        report = write_report(results_dir, cfg["report_dir"])
    except Exception as exc:  # noqa: BLE001 - no stale table or report may look current
        mark_stale(results_dir, f"{type(exc).__name__}: {exc}", cfg["report_dir"])
        raise ResultsError(f"the records were written but the table / report could not be built: "
                           f"{type(exc).__name__}: {exc} (old table and report index removed; see {results_dir}/STALE)") from exc
    return results_dir / "results.parquet", report, failure_summary(cells, results_dir, cfg)


def failure_summary(cells: list[Cell], results_dir: Path, cfg: dict) -> list[str]:
    """Lines saying how many of ``cells`` failed and why (grouped by error), and which metrics the
    user asked for explicitly (``metrics.clip_model``) could not be computed; [] when all is well."""
    rdir = records_dir(results_dir)
    errors, metric_errors, missing = Counter(), Counter(), 0
    for c in cells:
        p = rdir / f"{c.hash}.json"
        rec = read_record(p, quiet=True) if p.exists() else None
        if rec is None:
            missing += 1
            continue
        if rec["status"] != "ok":
            errors[(rec.get("error") or "unknown error").splitlines()[0][:300]] += 1
        elif cfg["metrics"].get("clip_model") and cfg["metrics"].get("clip_score"):
            for w in rec.get("warnings") or []:
                if w.startswith("clip_score skipped:"):
                    metric_errors[f"metrics.clip_model={cfg['metrics']['clip_model']}: {w}"[:300]] += 1
    n_failed = sum(errors.values())
    if not (n_failed or metric_errors or missing):
        return []
    lines = []
    if n_failed:
        lines.append(f"{n_failed} of {len(cells)} cells failed:")
        lines += [f"  {k} x {err}" for err, k in errors.most_common()]
    if missing:
        lines.append(f"{missing} of {len(cells)} cells have no valid record")
    if metric_errors:
        lines.append(f"{sum(metric_errors.values())} of {len(cells)} cells could not compute a metric you asked for:")
        lines += [f"  {k} x {err}" for err, k in metric_errors.most_common()]
    return lines
