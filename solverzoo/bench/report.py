"""Reports from a results table: index.md plus PNG figures, each captioned with the configs,
N and seeds that made it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from solverzoo.bench.formatting import cache_label, delta, fmt, grid_label, inside, label, pareto, series, why
from solverzoo.bench.records import ResultsError, build_table


@dataclass
class Ctx:
    """What every section reads: the table, its ok / failed rows, where to write figures."""

    df: Any
    ok: Any
    failed: Any
    results_dir: Path
    out: Path
    backbones: list
    note: str


def write_report(results_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``index.md`` and its figures for the results in ``results_dir`` into ``out_dir``:
    one function per section, in this order."""
    results_dir, out = Path(results_dir), Path(out_dir)
    df = build_table(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    df["grid_label"] = [grid_label(g, o) for g, o in zip(df.grid, df.grid_options)]
    df["cache_label"] = [cache_label(c, o) for c, o in zip(df.cache, df.get("cache_options", [None] * len(df)))]
    ok = df[df.status == "ok"].copy()
    n_set = sorted(set(int(n) for n in df.n_samples))
    seeds = sorted(set(int(s) for s in df.seed_set.dropna()))
    note = f"N = {', '.join(map(str, n_set))} samples per cell; seed sets {seeds}; results: {results_dir}"
    c = Ctx(df, ok, df[df.status != "ok"], results_dir, out, sorted(df.backbone.unique()), note)
    lines = _header(c) + _floor_section(c)
    lines += _figure(c, "fid", "nfe_vs_fid.png", "Cost vs FID", "FID (lower is better)", ("fid_ci_low", "fid_ci_high"))
    lines += _figure(c, "prompt_accuracy", "nfe_vs_prompt_accuracy.png", "Cost vs prompt accuracy", "prompt accuracy",
                     ("prompt_accuracy_ci_low", "prompt_accuracy_ci_high"))
    lines += _figure(c, "clip_score", "nfe_vs_clip_score.png", "Cost vs CLIP score", "CLIP score")
    for section in (_tradeoff_section, _samples_section, _best_choice_section, _seed_sets_section, _exact_section):
        lines += section(c)
    lines += _cache_section(ok)
    lines += _grid_section(ok, results_dir)
    for section in (_cost_section, _failed_section, _warnings_section):
        lines += section(c)
    (out / "index.md").write_text("\n".join(lines))
    return out / "index.md"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _header(c: Ctx) -> list[str]:
    return ["# solverzoo benchmark report", "", f"Backbones: {', '.join(c.backbones)}. {len(c.df)} cells "
            f"({len(c.ok)} ok, {len(c.failed)} failed). {c.note}.", "",
            "Every cell uses the same initial noise for sample i (common random numbers) and the same prompts. "
            "FID / KID use the feature extractor and reference set recorded in each row "
            f"(`{c.results_dir / 'results.csv'}`); intervals are 95% bootstrap intervals over samples (for FID, whose "
            "upward bias grows under resampling, the bootstrap spread re-centred on the estimate; percentiles for prompt "
            "accuracy). Prompts are an independent draw from the world, not the reference images' own captions.", ""]


def _floor_section(c: Ctx) -> list[str]:
    floor_path = c.results_dir / "floor.json"
    if not floor_path.exists():
        return []
    fl = json.loads(floor_path.read_text())
    return [f"Real-data floor: {fl['n']} real images of exactly the sweep's prompts ({fl['source']}) score FID "
            f"{fl['fid']:.3f} [{fl['fid_ci_low']:.3f}, {fl['fid_ci_high']:.3f}] against the same reference: what a "
            "perfect sampler would get at this N (FID is biased upward at small N). Compare solvers to each other and "
            "to it.", ""]


def _figure(c: Ctx, metric: str, fname: str, title: str, ylabel: str, ci=None) -> list[str]:
    """Cost (backbone evaluations per sample) against ``metric``, one panel per guidance setting."""
    data = c.ok.dropna(subset=[metric])
    if data.empty:
        return [f"## {title}", "", f"_No {metric} values: " + why(c.df, metric) + "_", ""]
    plt = _pyplot()
    groups = sorted({label(r) for _, r in data.iterrows()})
    n_series = data.groupby(["solver", "grid_label", "cache_label"]).ngroups
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + (3.2 if n_series > 6 else 0), 3.6),
                             squeeze=False, sharey=True)
    markers = "osD^v<>phX*"
    for ax, g in zip(axes[0], groups):
        sub = data[[(label(r) == g) for _, r in data.iterrows()]]
        for k, ((solver, grid, cache), s) in enumerate(sub.groupby(["solver", "grid_label", "cache_label"])):
            s = s.groupby(["steps"], as_index=False).mean(numeric_only=True).sort_values("backbone_evals")
            ax.plot(s.backbone_evals, s[metric], marker=markers[k % len(markers)], ls="--" if cache != "none" else "-",
                    label=series(solver, grid, cache))
            if ci and s[ci[0]].notna().all():
                ax.fill_between(s.backbone_evals, s[ci[0]], s[ci[1]], alpha=0.12)
        ax.set_xscale("log")
        vals = data[metric].astype(float)
        if metric == "fid" and vals.min() > 0 and vals.max() / vals.min() > 5:
            ax.set_yscale("log")  # a few poor grids would otherwise flatten every other curve
        ax.set_xlabel("backbone evaluations / sample (= NFE uncached)")
        ax.set_title(g)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    if n_series > 6:
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{title} — {', '.join(c.backbones)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(c.out / fname, dpi=110)
    plt.close(fig)
    return [f"## {title}", "", f"![{title}]({fname})", "", f"_{c.note}._", ""]


def _tradeoff_section(c: Ctx) -> list[str]:
    """FID against CLIP score (or prompt accuracy) across guidance scales, Pareto front marked."""
    y = "clip_score" if c.ok.clip_score.notna().any() else "prompt_accuracy"
    data = c.ok.dropna(subset=["fid", y])
    lines = [f"## FID vs {y.replace('_', ' ')} across guidance (the trade-off curve)", ""]
    if data.empty:
        return lines + ["_Not enough metrics for the trade-off: " + why(c.df, "fid") + "_", ""]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    front = set(pareto(list(zip(data.fid, data[y]))))
    for (solver, steps, grid, cache), s in data.groupby(["solver", "steps", "grid_label", "cache_label"]):
        s = s.sort_values("scale")
        ax.plot(s.fid, s[y], marker="o", alpha=0.7, label=f"{series(solver, grid, cache)} {steps} steps")
        for _, r in s.iterrows():
            ax.annotate(label(r), (r.fid, r[y]), fontsize=5)
    fr = data.iloc[sorted(front)].sort_values("fid")
    ax.plot(fr.fid, fr[y], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("FID (lower is better)")
    ax.set_ylabel(y.replace("_", " ") + " (higher is better)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(c.out / "tradeoff.png", dpi=110)
    plt.close(fig)
    lines += ["![trade-off](tradeoff.png)", "", f"_{c.note}. Dashed: the Pareto front over all cells._", ""]
    if y == "prompt_accuracy":
        lines += ["_CLIP score was not available for these backbones, so prompt accuracy (the attribute classifier's "
                  "GenEval-style exact match) stands in on the y axis._", ""]
    return lines


def _samples_section(c: Ctx) -> list[str]:
    """Image grids: series x steps for the last guidance setting and the first seed set."""
    from PIL import Image

    lines: list[str] = []
    for bb in c.backbones:
        sub = c.ok[c.ok.backbone == bb]
        if sub.empty:
            continue
        g0 = sorted({label(r) for _, r in sub.iterrows()})[-1]
        sub = sub[[(label(r) == g0) for _, r in sub.iterrows()]]
        sub = sub[sub.seed_set == sub.seed_set.min()]
        sub = sub.assign(series=[series(a, b, k) for a, b, k in zip(sub.solver, sub.grid_label, sub.cache_label)])
        solvers, steps = sorted(sub.series.unique()), sorted(sub.steps.unique())
        tiles = {(r.series, r.steps): c.results_dir / "samples" / f"{r.config_hash}.png" for _, r in sub.iterrows()}
        have = [p for p in tiles.values() if p.exists()]
        if not have:
            continue
        w, h = Image.open(have[0]).size
        canvas = Image.new("RGB", (w * len(steps), h * len(solvers)), "white")
        for i, so in enumerate(solvers):
            for j, st in enumerate(steps):
                p = tiles.get((so, st))
                if p is not None and p.exists():
                    canvas.paste(Image.open(p), (j * w, i * h))
        name = f"grid_{bb}.png"
        canvas.resize((canvas.width * 3, canvas.height * 3), Image.NEAREST).save(c.out / name)
        lines += [f"## Samples: {bb}", "", f"Rows: {', '.join(solvers)}; columns: {', '.join(f'{s} steps' for s in steps)}; "
                  f"{g0}; the same 8 seeds (seed set {int(sub.seed_set.min())}) and prompts in every tile.", "",
                  f"![samples {bb}]({name})", ""]
    return lines


def _best_choice_section(c: Ctx) -> list[str]:
    lines = ["## Best choice at each cost budget", "", "Lowest FID among cells whose backbone evaluations per sample "
             "(= NFE without a cache) are within the budget (ties broken by prompt accuracy).", "",
             "| backbone | budget | solver | grid | cache | steps | guidance | NFE | backbone evals | FID | prompt acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for bb in c.backbones:
        sub = c.ok[(c.ok.backbone == bb)].dropna(subset=["fid"])
        for budget in sorted(sub.backbone_evals.round(1).unique()):
            cand = sub[sub.backbone_evals <= budget + 1e-9].sort_values(["fid", "prompt_accuracy"], ascending=[True, False])
            if cand.empty:
                continue
            r = cand.iloc[0]
            lines.append(f"| {bb} | {budget:g} | {r.solver} | {r.grid_label} | {r.cache_label} | {int(r.steps)} | {label(r)} | "
                         f"{int(r.nfe)} | {r.backbone_evals:.1f} | {r.fid:.3f} | {fmt(r.prompt_accuracy)} |")
    return lines + [""]


def _seed_sets_section(c: Ctx) -> list[str]:
    """Mean over seed sets with a t-interval, where a sweep has several."""
    keys = ["backbone", "solver", "grid", "steps", "guidance", "scale"]
    multi = c.ok.groupby(keys).filter(lambda g: g.seed_set.nunique() > 1)
    if multi.empty:
        return []
    from scipy import stats as st

    lines = ["## Across seed sets", "", "Mean over seed sets with a 95% t-interval (seed sets are independent "
             "draws of the initial noise).", "", "| solver | grid | steps | guidance | seed sets | FID mean [95% CI] | "
             "prompt acc mean [95% CI] |", "|---|---|---|---|---|---|---|"]
    for k, g in multi.groupby(keys):
        cells = []
        for col in ("fid", "prompt_accuracy"):
            v = g[col].dropna().to_numpy(dtype=float)
            if len(v) < 2:
                cells.append("n/a")
                continue
            half = st.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
            cells.append(f"{v.mean():.3f} [{v.mean() - half:.3f}, {v.mean() + half:.3f}]")
        lines.append(f"| {k[1]} | {k[2]} | {int(k[3])} | {k[4]} {k[5]:g} | {g.seed_set.nunique()} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def _exact_section(c: Ctx) -> list[str]:
    ok = c.ok
    if "median_error" not in ok or not ok.median_error.notna().any():
        return []
    lines = ["## Exact metrics (analytic backbone)", "", "Against a DOP853 solve (rtol 1e-10) of the same guided ODE "
             "from the same noise: median endpoint error and mode-flip rate; sliced Wasserstein to exact samples.", "",
             "| solver | grid | cache | steps | guidance | NFE | median error | mode flips | sliced W1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in ok.dropna(subset=["median_error"]).sort_values(["solver", "steps", "grid_label"]).iterrows():
        lines.append(f"| {r.solver} | {r.grid_label} | {r.cache_label} | {int(r.steps)} | {label(r)} | {int(r.nfe)} | "
                     f"{float(r.median_error):.2e} | "
                     f"{float(r.mode_flip_rate):.3f} | {float(r.sliced_wasserstein):.4f} |")
    return lines + [""]


def _cost_section(c: Ctx) -> list[str]:
    lines = ["## Cost", "", "Mean per cell: wall time, sampling (backbone forward vs solver's own work), decoding, metrics.", "",
             "| solver | NFE | wall s | sampling s | backbone s | solver s | decode s | metrics s |", "|---|---|---|---|---|---|---|---|"]
    cost = c.ok.copy()
    for col in ("sampling_s", "backbone_s", "solver_s", "decode_s", "metric_s"):
        cost[col] = cost[col].astype(float)
    for (solver, nfe), s in cost.groupby(["solver", "nfe"]):
        lines.append(f"| {solver} | {int(nfe)} | {s.wall_s.mean():.2f} | {s.sampling_s.mean():.2f} | {s.backbone_s.mean():.2f} | "
                     f"{s.solver_s.mean():.3f} | {s.decode_s.mean():.2f} | {s.metric_s.mean():.2f} |")
    return lines + [""]


def _failed_section(c: Ctx) -> list[str]:
    if not len(c.failed):
        return []
    lines = ["## Failed cells", "", "| solver | grid | steps | guidance | error |", "|---|---|---|---|---|"]
    for _, r in c.failed.iterrows():
        lines.append(f"| {r.solver} | {r.grid} | {r.steps} | {label(r)} | {str(r.error)[:160]} |")
    return lines + [""]


def _warnings_section(c: Ctx) -> list[str]:
    df = c.df
    warn = sorted({w for ws in df.warnings.dropna() for w in json.loads(ws)} if "warnings" in df else set())
    return ["## Warnings stored with the rows", ""] + [f"- {w}" for w in warn] + [""] if warn else []


def _cache_section(ok) -> list[str]:
    """Each cached cell next to the same cell without a cache: the saving and whether FID and
    prompt accuracy stay inside the uncached cell's 95% intervals."""
    cached = ok[ok.cache_label != "none"]
    if cached.empty:
        return []
    keys = ["backbone", "solver", "grid_label", "steps", "guidance", "scale", "seed_set"]
    base = {tuple(r[k] for k in keys): r for _, r in ok[ok.cache_label == "none"].iterrows()}
    lines = ["## Caching", "", "Each cache against the same cell without one (same solver, grid, steps, guidance and "
             "seeds). Backbone evaluations are full-network equivalents per sample actually computed; FLOPs are "
             "torch's FLOP-counter estimate (matrix products; see solverzoo.caching.estimate_flops). 'inside CI' means the cached value "
             "lies within the uncached cell's 95% bootstrap interval. Because sample i shares its noise and prompt "
             "in both cells, the paired differences (cached minus uncached, same bootstrap resamples for both) "
             "are much tighter: an interval containing 0 means no detectable change at this N.", "",
             "| solver | steps | guidance | cache | NFE | backbone evals | saving | FLOPs / sample | FID | no-cache FID [95% CI] | "
             "FID inside CI | paired ΔFID [95% CI] | prompt acc | no-cache prompt acc [95% CI] | acc inside CI | "
             "paired Δacc [95% CI] | wall s (no cache) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in cached.sort_values(["solver", "steps", "cache_label"]).iterrows():
        b = base.get(tuple(r[k] for k in keys))
        if b is None:
            continue
        fid_in = inside(r.fid, b.fid_ci_low, b.fid_ci_high)
        acc_in = inside(r.prompt_accuracy, b.get("prompt_accuracy_ci_low"), b.get("prompt_accuracy_ci_high"))
        flops = f"{r.flops_per_sample / 1e9:.3f} G" if r.flops_per_sample == r.flops_per_sample else "n/a"
        lines.append(f"| {r.solver} | {int(r.steps)} | {label(r)} | {r.cache_label} | {int(r.nfe)} | {r.backbone_evals:.1f} | "
                     f"{b.backbone_evals / r.backbone_evals:.2f}x | {flops} | {fmt(r.fid)} | {fmt(b.fid)} "
                     f"[{fmt(b.fid_ci_low)}, {fmt(b.fid_ci_high)}] | {fid_in} | {delta(r, 'delta_fid')} | "
                     f"{fmt(r.prompt_accuracy)} | {fmt(b.prompt_accuracy)} [{fmt(b.get('prompt_accuracy_ci_low'))}, "
                     f"{fmt(b.get('prompt_accuracy_ci_high'))}] | {acc_in} | {delta(r, 'delta_prompt_accuracy')} | "
                     f"{r.wall_s:.2f} ({b.wall_s:.2f}) |")
    return lines + [""]


def _paired(results_dir: Path, a, b) -> str:
    """Paired bootstrap FID difference of cells ``a`` and ``b`` from their stored features."""
    from solverzoo.bench.metrics import Reference, paired_delta
    from solverzoo.bench.records import read_arrays

    ref, fa, fb = (read_arrays(results_dir, k) for k in ("reference", a.config_hash, b.config_hash))
    if ref is None or fa is None or fb is None or "features" not in fa or "features" not in fb:
        return "n/a"
    r = Reference({}, ref["mu"].double().numpy(), ref["sigma"].double().numpy(), int(ref["n"]))
    from solverzoo.bench.records import arrays_to_numpy

    try:
        d = paired_delta(arrays_to_numpy(fa), arrays_to_numpy(fb), r, 200, 0.95, seed=int(a.seed_set))
    except ValueError:
        return "n/a"
    return f"{d['delta_fid']:+.3f} [{d['delta_fid_ci_low']:+.3f}, {d['delta_fid_ci_high']:+.3f}]"


def _grid_section(ok, results_dir: Path) -> list[str]:
    """Optimised grids against the best built-in grid for the same solver, steps and guidance."""
    opt = ok[ok.grid_label.str.startswith("optimised:") & (ok.cache_label == "none")]
    if opt.empty:
        return []
    exact = "median_error" in ok and ok.median_error.notna().any()
    metric = "median_error" if exact else "fid"
    keys = ["backbone", "solver", "steps", "guidance", "scale", "seed_set"]
    lines = ["## Optimised grids", "", f"Each optimised grid against every built-in grid for the same solver, steps, "
             f"guidance and seeds; 'best built-in' is the built-in grid with the lowest {metric.replace('_', ' ')}. "
             "The optimised grids were fitted on a separate calibration set (own seeds and prompts).", "",
             f"| backbone | solver | steps | guidance | NFE | optimised grid | {metric} | best built-in | its {metric} | "
             "change | FID optimised / best built-in | paired ΔFID [95% CI] | prompt acc optimised / best built-in |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    builtin = ok[~ok.grid_label.str.startswith("optimised:") & (ok.cache_label == "none")]
    for _, r in opt.sort_values(keys).iterrows():
        peers = builtin
        for k in keys:
            peers = peers[peers[k] == r[k]]
        peers = peers.dropna(subset=[metric])
        if peers.empty or r[metric] != r[metric]:
            continue
        b = peers.sort_values(metric).iloc[0]
        change = (float(r[metric]) - float(b[metric])) / float(b[metric])
        lines.append(f"| {r.backbone} | {r.solver} | {int(r.steps)} | {label(r)} | {int(r.nfe)} | {r.grid_label} | "
                     f"{float(r[metric]):.4g} | {b.grid_label} | {float(b[metric]):.4g} | {change:+.1%} | "
                     f"{fmt(r.fid)} / {fmt(b.fid)} | {_paired(results_dir, r, b)} | "
                     f"{fmt(r.prompt_accuracy)} / {fmt(b.prompt_accuracy)} |")
    return lines + ["", "Paired ΔFID: optimised minus best built-in on the same samples' noise and prompts, the same "
                    "bootstrap resamples for both (an interval containing 0: no detectable difference at this N).", ""]


def report_main(results: str, out: str | None) -> Path:
    results_dir = Path(results)
    if not (results_dir / "records").is_dir():
        raise ResultsError(f"{results} is not a solverzoo results directory (no records/ folder inside)")
    return write_report(results_dir, out or results_dir / "report")
