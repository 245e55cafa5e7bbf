"""The report's other sections: header, real-data floor, caches and optimised grids against their
twins (paired differences), seed-set means, exact metrics, cost, failed cells and warnings."""
from __future__ import annotations

import json

import numpy as np

from solverzoo.bench.formatting import delta, fmt, inside, label, num
from solverzoo.bench.report_context import Ctx, measured
from solverzoo.bench.report_tables import ci_text, diff_text


def header(c: Ctx) -> list[str]:
    return ["# solverzoo benchmark report", "", f"Backbones: {', '.join(c.backbones)}. {len(c.df)} cells "
            f"({len(c.ok)} ok, {len(c.failed)} failed). {c.note}.", "",
            "Every cell uses the same initial noise for sample i (common random numbers) and the same prompts, so "
            "every difference between two cells of a seed set below is a *paired* bootstrap difference: the same "
            "resample indices on both sides, 95% intervals, **resolved** where the interval excludes 0. Two questions "
            "are kept apart: solver accuracy (distance to the converged solve of the same guided ODE from the same "
            "noise: `err_converged`, `psnr_converged`) ranks solvers; model quality against real data (FID, "
            "`fid_inf`, KID, prompt accuracy, CLIP score) is reported per guidance setting. FID / KID use the "
            f"feature extractor and reference set recorded in each row (`{c.results_dir / 'results.csv'}`); a "
            "single cell's FID interval is the bootstrap spread re-centred on the estimate (FID is biased upward "
            "under resampling); percentiles for medians and prompt accuracy.", ""]


def floor_section(c: Ctx) -> list[str]:
    floor_path = c.results_dir / "floor.json"
    if not floor_path.exists():
        return []
    fl = json.loads(floor_path.read_text())
    lines = [f"Real-data floor: {fl.get('n', '?')} real images of exactly the sweep's prompts ({fl.get('source', '?')}) "
             f"score FID {ci_text(fl.get('fid'), fl.get('fid_ci_low'), fl.get('fid_ci_high'))} against the same "
             "reference: what a perfect sampler would get at this N (FID is biased upward at small N)."]
    if fl.get("fid_inf") is not None:
        lines[0] += (f" Extrapolated to infinite N (FID-infinity of {fl.get('n_fid_inf', fl.get('n', '?'))} real images): "
                     f"fid_inf {ci_text(fl.get('fid_inf'), fl.get('fid_inf_ci_low'), fl.get('fid_inf_ci_high'))}.")
        lines += floor_target_lines(fl, c.ok)
    else:
        lines[0] += " fid_inf of the floor: not measured (floor.json predates it)."
    return lines + ["Compare cells to each other (paired) and to it.", ""]


def floor_target_lines(fl: dict, ok) -> list[str]:
    """The floor's ``fid_inf`` against the spread of ``fid_inf`` between the best and the worst
    cell: the target is at most 5% (the floor's whole interval, not only its estimate)."""
    vals = ok["fid_inf"].dropna() if "fid_inf" in getattr(ok, "columns", ()) else []
    if len(vals) < 2 or not np.isfinite(fl.get("fid_inf_ci_high", np.nan)):
        return []
    spread = float(vals.max() - vals.min())
    if spread <= 0:  # every cell scores the same fid_inf: no spread to set the floor against
        return []
    hi = max(abs(fl["fid_inf_ci_low"]), abs(fl["fid_inf_ci_high"]))
    verdict = "met" if hi <= 0.05 * spread else "not met"
    return [f"Against the cells: the spread of `fid_inf` between the best and the worst cell is {spread:.1f}; the floor's "
            f"`fid_inf` is {100 * abs(fl['fid_inf']) / spread:.1f}% of it and its interval reaches {100 * hi / spread:.1f}% "
            f"(target: at most 5%, {verdict}). The cells' own `fid_inf` at their N is biased (see the calibration table)."]


def cache_section(c: Ctx) -> list[str]:
    """Each cached cell next to the same cell without a cache: the saving and paired differences."""
    ok = c.ok
    cached = ok[ok.cache_label != "none"]
    if cached.empty:
        return []
    keys = ["backbone", "solver", "grid_label", "steps", "guidance", "scale", "seed_set"]
    base = {tuple(r[k] for k in keys): r for _, r in ok[ok.cache_label == "none"].iterrows()}
    lines = ["## Caching", "", "Each cache against the same cell without one (same solver, grid, steps, guidance and "
             "seeds). Backbone evaluations are full-network equivalents per sample actually computed; FLOPs are "
             "torch's FLOP-counter estimate (matrix products; see solverzoo.caching.estimate_flops). 'inside CI' means "
             "the cached value lies within the uncached cell's 95% bootstrap interval. Because sample i shares its noise "
             "and prompt in both cells, the paired differences (cached minus uncached, same bootstrap resamples for "
             "both) are much tighter: an interval containing 0 means no detectable change at this N.", "",
             "| solver (grid) | steps | guidance | cache | NFE | backbone evals | saving | FLOPs / sample | FID | no-cache FID "
             "[95% CI] | FID inside CI | paired ΔFID [95% CI] | prompt acc | no-cache prompt acc [95% CI] | acc inside CI "
             "| paired Δacc [95% CI] | paired Δerr_converged [95% CI] | wall s (no cache) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in cached.sort_values(["solver", "steps", "cache_label"]).iterrows():
        b = base.get(tuple(r[k] for k in keys))
        if b is None:
            continue
        g = c.group(ok.loc[[r.name]])
        fid_in = inside(r.fid, b.fid_ci_low, b.fid_ci_high)
        acc_in = inside(r.prompt_accuracy, b.get("prompt_accuracy_ci_low"), b.get("prompt_accuracy_ci_high"))
        flops = f"{r.flops_per_sample / 1e9:.3f} G" if r.flops_per_sample == r.flops_per_sample else "n/a"
        dfid = delta(r, "delta_fid")
        if dfid == "n/a":
            dfid = diff_text(g.diff("fid", r.config_hash, b.config_hash))
        lines.append(f"| {r.solver} ({r.grid_label}) | {int(r.steps)} | {label(r)} | {r.cache_label} | {int(r.nfe)} | "
                     f"{r.backbone_evals:.1f} | "
                     f"{b.backbone_evals / r.backbone_evals:.2f}x | {flops} | {fmt(r.fid)} | {fmt(b.fid)} "
                     f"[{fmt(b.fid_ci_low)}, {fmt(b.fid_ci_high)}] | {fid_in} | {dfid} | "
                     f"{fmt(r.prompt_accuracy)} | {fmt(b.prompt_accuracy)} [{fmt(b.get('prompt_accuracy_ci_low'))}, "
                     f"{fmt(b.get('prompt_accuracy_ci_high'))}] | {acc_in} | {delta(r, 'delta_prompt_accuracy')} | "
                     f"{diff_text(g.diff('err', r.config_hash, b.config_hash), g=True)} | {r.wall_s:.2f} ({b.wall_s:.2f}) |")
    return lines + [""]


def grid_section(c: Ctx) -> list[str]:
    """Optimised grids against the best built-in grid for the same solver, steps and guidance."""
    ok = c.ok
    opt = ok[ok.grid_label.str.startswith("optimised:") & (ok.cache_label == "none")]
    if opt.empty:
        return []
    metric = next((m for m in ("err_converged", "median_error") if measured(ok, m)), "fid")
    keys = ["backbone", "solver", "steps", "guidance", "scale", "seed_set"]
    lines = ["## Optimised grids", "", f"Each optimised grid against every built-in grid for the same solver, steps, "
             f"guidance and seeds; 'best built-in' is the built-in grid with the lowest {metric.replace('_', ' ')}. "
             "The optimised grids were fitted on a separate calibration set (own seeds and prompts).", "",
             f"| backbone | solver | steps | guidance | NFE | optimised grid | {metric} | best built-in | its {metric} | "
             "change | paired Δerr_converged [95% CI] | FID optimised / best built-in | paired ΔFID [95% CI] | "
             "prompt acc optimised / best built-in |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    builtin = ok[~ok.grid_label.str.startswith("optimised:") & (ok.cache_label == "none")]
    for _, r in opt.sort_values(keys).iterrows():
        peers = builtin
        for k in keys:
            peers = peers[(peers[k] == r[k]) | (peers[k].isna() & (r[k] != r[k]))]
        peers = peers.dropna(subset=[metric])
        if peers.empty or r[metric] != r[metric]:
            continue
        b = peers.sort_values(metric).iloc[0]
        g = c.group(ok.loc[[r.name]])
        change = (float(r[metric]) - float(b[metric])) / float(b[metric])
        lines.append(f"| {r.backbone} | {r.solver} | {int(r.steps)} | {label(r)} | {int(r.nfe)} | {r.grid_label} | "
                     f"{float(r[metric]):.4g} | {b.grid_label} | {float(b[metric]):.4g} | {change:+.1%} | "
                     f"{diff_text(g.diff('err', r.config_hash, b.config_hash), g=True)} | "
                     f"{fmt(r.fid)} / {fmt(b.fid)} | {diff_text(g.diff('fid', r.config_hash, b.config_hash))} | "
                     f"{fmt(r.prompt_accuracy)} / {fmt(b.prompt_accuracy)} |")
    return lines + ["", "Paired differences: optimised minus best built-in on the same samples' noise and prompts, the "
                    "same bootstrap resamples for both (an interval containing 0: no detectable difference at this N).", ""]


def seed_sets_section(c: Ctx) -> list[str]:
    """Mean over seed sets with a t-interval, where a sweep has several."""
    keys = ["backbone", "solver", "grid", "cache_label", "steps", "guidance", "scale"]
    multi = c.ok.groupby(keys).filter(lambda g: g.seed_set.nunique() > 1)
    if multi.empty:
        return []
    from scipy import stats as st

    cols = [m for m in ("err_converged", "fid", "prompt_accuracy") if measured(multi, m)]
    lines = ["## Across seed sets", "", "Mean over seed sets with a 95% t-interval (seed sets are independent "
             "draws of the initial noise).", "", "| solver | grid | cache | steps | guidance | seed sets | "
             + " | ".join(f"{m} mean [95% CI]" for m in cols) + " |", "|---|---|---|---|---|---|" + "---|" * len(cols)]
    for k, g in multi.groupby(keys):
        cells = []
        for col in cols:
            v = g[col].dropna().to_numpy(dtype=float)
            if len(v) < 2:
                cells.append("n/a")
                continue
            half = st.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
            cells.append(f"{v.mean():.4g} [{v.mean() - half:.4g}, {v.mean() + half:.4g}]")
        lines.append(f"| {k[1]} | {k[2]} | {k[3]} | {int(k[4])} | {k[5]} {k[6]:g} | {g.seed_set.nunique()} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def exact_section(c: Ctx) -> list[str]:
    ok = c.ok
    if not measured(ok, "median_error"):
        return []
    lines = ["## Exact metrics (analytic backbone)", "", "Against a DOP853 solve (rtol 1e-10) of the same guided ODE "
             "from the same noise: median endpoint error and mode-flip rate; sliced Wasserstein to exact samples.", "",
             "| solver | grid | cache | steps | guidance | NFE | median error | mode flips | sliced W1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in ok.dropna(subset=["median_error"]).sort_values(["solver", "steps", "grid_label"]).iterrows():
        lines.append(f"| {r.solver} | {r.grid_label} | {r.cache_label} | {int(r.steps)} | {label(r)} | {int(r.nfe)} | "
                     f"{float(r.median_error):.2e} | {fmt(num(r.mode_flip_rate))} | {fmt(num(r.sliced_wasserstein))} |")
    return lines + [""]


def cost_section(c: Ctx) -> list[str]:
    lines = ["## Cost", "", "Mean per cell: wall time, sampling (backbone forward vs solver's own work), decoding, metrics.", "",
             "| solver | NFE | wall s | sampling s | backbone s | solver s | decode s | metrics s |",
             "|---|---|---|---|---|---|---|---|"]
    cost = c.ok.copy()
    for col in ("wall_s", "sampling_s", "backbone_s", "solver_s", "decode_s", "metric_s"):
        cost[col] = cost[col].astype(float)
    for (solver, nfe), s in cost.groupby(["solver", "nfe"]):
        lines.append(f"| {solver} | {int(nfe)} | {s.wall_s.mean():.2f} | {s.sampling_s.mean():.2f} | {s.backbone_s.mean():.2f} | "
                     f"{s.solver_s.mean():.3f} | {s.decode_s.mean():.2f} | {s.metric_s.mean():.2f} |")
    return lines + [""]


def plan_section(c: Ctx) -> list[str]:
    """The cost model's prediction (``plan.json``, written before the cells ran) next to what was measured."""
    path = c.results_dir / "plan.json"
    if not path.exists():
        return []
    p = json.loads(path.read_text())
    measured = float(c.ok.wall_s.astype(float).sum()) if len(c.ok) else float("nan")
    parts = ", ".join(f"{k[:-2]} {p[k]:.0f} s" for k in ("sampling_s", "converged_s", "metrics_s", "reference_s", "floor_s"))
    return [f"Cost model (`bench/cost_model.py`, unit costs probed on this machine before the cells ran): {p['cells']} "
            f"cells at N = {p['n']} predicted {p['total_s']:.0f} s ({parts}); the cells' measured wall time sums to "
            f"{measured:.0f} s (converged solves included where a cell computed them; reference statistics and "
            f"start-up are outside the cells). N was chosen by {p.get('chosen_by', 'the config')}.", ""]


def calibration_section(c: Ctx) -> list[str]:
    """The measured coverage of the report's nominal 95% intervals (``benchmarks/interval_coverage.py``)."""
    from importlib import resources

    f = resources.files("solverzoo.bench") / "interval_calibration.json"
    if not f.is_file():
        return []
    cal = json.loads(f.read_text())
    lines = ["## How well the intervals cover", "", f"Measured by `benchmarks/interval_coverage.py` ({cal['what']}): "
             "the fraction of independent replicates whose nominal 95% interval held the truth, with a Clopper-Pearson "
             "95% interval on that fraction. Read each interval in this report with its measured coverage.", "",
             "| interval | truth | covered | coverage [95% CI] |", "|---|---|---|---|"]
    for row in cal["rows"]:
        lo, hi = row["coverage_ci95"]
        lines.append(f"| {row['interval']} | {row['truth']} | {row['covered']}/{row['n']} | "
                     f"{row['coverage']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return lines + [""]


def failed_section(c: Ctx) -> list[str]:
    if not len(c.failed):
        return []
    lines = ["## Failed cells", "", "| solver | grid | steps | guidance | error |", "|---|---|---|---|---|"]
    for _, r in c.failed.iterrows():
        lines.append(f"| {r.solver} | {r.grid} | {r.steps} | {label(r)} | {str(r.error)[:160]} |")
    return lines + [""]


def warnings_section(c: Ctx) -> list[str]:
    df = c.df
    warn = sorted({w for ws in df.warnings.dropna() for w in json.loads(ws)} if "warnings" in df else set())
    return ["## Warnings stored with the rows", ""] + [f"- {w}" for w in warn] + [""] if warn else []
