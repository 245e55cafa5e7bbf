"""Reports from a results table: index.md plus PNG figures, each captioned with the configs,
N and seeds that made it."""
from __future__ import annotations

import json
import math
from pathlib import Path


import numpy as np

from solverzoo.bench.records import ResultsError, build_table


def _label(r) -> str:
    return f"{r['guidance']} {r['scale']:g}"


def _series(solver, grid, cache) -> str:
    return f"{solver} ({grid})" + ("" if cache in (None, "none") else f" + {cache}")


def _pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices on the Pareto front of (lower FID, higher accuracy)."""
    front = []
    for i, (f, a) in enumerate(points):
        if not any((f2 <= f and a2 >= a) and (f2 < f or a2 > a) for j, (f2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


def write_report(results_dir: str | Path, out_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    results_dir, out = Path(results_dir), Path(out_dir)
    df = build_table(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    df["grid_label"] = [_grid_label(g, o) for g, o in zip(df.grid, df.grid_options)]
    df["cache_label"] = [_cache_label(c, o) for c, o in zip(df.cache, df.get("cache_options", [None] * len(df)))]
    ok = df[df.status == "ok"].copy()
    failed = df[df.status != "ok"]
    backbones = sorted(df.backbone.unique())
    n_set = sorted(set(int(n) for n in df.n_samples))
    seeds = sorted(set(int(s) for s in df.seed_set.dropna()))
    note = f"N = {', '.join(map(str, n_set))} samples per cell; seed sets {seeds}; results: {results_dir}"
    lines = ["# solverzoo benchmark report", "", f"Backbones: {', '.join(backbones)}. {len(df)} cells "
             f"({len(ok)} ok, {len(failed)} failed). {note}.", "",
             "Every cell uses the same initial noise for sample i (common random numbers) and the same prompts. "
             "FID / KID use the feature extractor and reference set recorded in each row "
             f"(`{results_dir / 'results.csv'}`); intervals are 95% bootstrap intervals over samples (for FID, whose upward bias grows under resampling, the bootstrap spread re-centred on the estimate; percentiles for prompt accuracy). Prompts are an independent draw from the world, not the reference images' own captions.", ""]
    figs = []
    floor_path = results_dir / "floor.json"
    if floor_path.exists():
        fl = json.loads(floor_path.read_text())
        lines += [f"Real-data floor: {fl['n']} real images of exactly the sweep's prompts ({fl['source']}) score FID {fl['fid']:.3f} "
                  f"[{fl['fid_ci_low']:.3f}, {fl['fid_ci_high']:.3f}] against the same reference: what a perfect "
                  "sampler would get at this N (FID is biased upward at small N). Compare solvers to each other and to it.", ""]

    def fig_lines(metric, fname, title, ylabel, ci=None):
        data = ok.dropna(subset=[metric])
        if data.empty:
            lines.extend([f"## {title}", "", f"_No {metric} values: " + _why(df, metric) + "_", ""])
            return
        groups = sorted({_label(r) for _, r in data.iterrows()})
        n_series = data.groupby(["solver", "grid_label", "cache_label"]).ngroups
        fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + (3.2 if n_series > 6 else 0), 3.6),
                                 squeeze=False, sharey=True)
        markers = "osD^v<>phX*"
        for ax, g in zip(axes[0], groups):
            sub = data[[(_label(r) == g) for _, r in data.iterrows()]]
            for k, ((solver, grid, cache), s) in enumerate(sub.groupby(["solver", "grid_label", "cache_label"])):
                s = s.groupby(["steps"], as_index=False).mean(numeric_only=True).sort_values("backbone_evals")
                ax.plot(s.backbone_evals, s[metric], marker=markers[k % len(markers)], ls="--" if cache != "none" else "-",
                        label=_series(solver, grid, cache))
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
        fig.suptitle(f"{title} — {', '.join(backbones)}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        lines.extend([f"## {title}", "", f"![{title}]({fname})", "", f"_{note}._", ""])
        figs.append(fname)

    fig_lines("fid", "nfe_vs_fid.png", "Cost vs FID", "FID (lower is better)", ("fid_ci_low", "fid_ci_high"))
    fig_lines("prompt_accuracy", "nfe_vs_prompt_accuracy.png", "Cost vs prompt accuracy", "prompt accuracy",
              ("prompt_accuracy_ci_low", "prompt_accuracy_ci_high"))
    fig_lines("clip_score", "nfe_vs_clip_score.png", "Cost vs CLIP score", "CLIP score")

    # trade-off across guidance scales, Pareto front marked
    y = "clip_score" if ok.clip_score.notna().any() else "prompt_accuracy"
    data = ok.dropna(subset=["fid", y])
    lines.append(f"## FID vs {y.replace('_', ' ')} across guidance (the trade-off curve)")
    lines.append("")
    if data.empty:
        lines += ["_Not enough metrics for the trade-off: " + _why(df, "fid") + "_", ""]
    else:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        pts = list(zip(data.fid, data[y]))
        front = set(_pareto(pts))
        for (solver, steps, grid, cache), s in data.groupby(["solver", "steps", "grid_label", "cache_label"]):
            s = s.sort_values("scale")
            ax.plot(s.fid, s[y], marker="o", alpha=0.7, label=f"{_series(solver, grid, cache)} {steps} steps")
            for _, r in s.iterrows():
                ax.annotate(_label(r), (r.fid, r[y]), fontsize=5)
        fr = data.iloc[sorted(front)].sort_values("fid")
        ax.plot(fr.fid, fr[y], "k--", lw=1, label="Pareto front")
        ax.set_xlabel("FID (lower is better)")
        ax.set_ylabel(y.replace("_", " ") + " (higher is better)")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "tradeoff.png", dpi=110)
        plt.close(fig)
        lines += ["![trade-off](tradeoff.png)", "", f"_{note}. Dashed: the Pareto front over all cells._", ""]
        if y == "prompt_accuracy":
            lines += ["_CLIP score was not available for these backbones, so prompt accuracy (the attribute classifier's "
                      "GenEval-style exact match) stands in on the y axis._", ""]

    # image grids: solvers x steps for the first guidance setting and seed set
    for bb in backbones:
        sub = ok[ok.backbone == bb]
        if sub.empty:
            continue
        g0 = sorted({_label(r) for _, r in sub.iterrows()})[-1]
        sub = sub[[(_label(r) == g0) for _, r in sub.iterrows()]]
        sub = sub[sub.seed_set == sub.seed_set.min()]
        sub = sub.assign(series=[_series(a, b, c) for a, b, c in zip(sub.solver, sub.grid_label, sub.cache_label)])
        solvers, steps = sorted(sub.series.unique()), sorted(sub.steps.unique())
        tiles = {(r.series, r.steps): results_dir / "samples" / f"{r.config_hash}.png" for _, r in sub.iterrows()}
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
        canvas.resize((canvas.width * 3, canvas.height * 3), Image.NEAREST).save(out / name)
        lines += [f"## Samples: {bb}", "", f"Rows: {', '.join(solvers)}; columns: {', '.join(f'{s} steps' for s in steps)}; "
                  f"{g0}; the same 8 seeds (seed set {int(sub.seed_set.min())}) and prompts in every tile.", "",
                  f"![samples {bb}]({name})", ""]

    # best choice per NFE budget
    lines += ["## Best choice at each cost budget", "", "Lowest FID among cells whose backbone evaluations per sample "
              "(= NFE without a cache) are within the budget (ties broken by prompt accuracy).", "",
              "| backbone | budget | solver | grid | cache | steps | guidance | NFE | backbone evals | FID | prompt acc |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for bb in backbones:
        sub = ok[(ok.backbone == bb)].dropna(subset=["fid"])
        for budget in sorted(sub.backbone_evals.round(1).unique()):
            cand = sub[sub.backbone_evals <= budget + 1e-9].sort_values(["fid", "prompt_accuracy"], ascending=[True, False])
            if cand.empty:
                continue
            r = cand.iloc[0]
            lines.append(f"| {bb} | {budget:g} | {r.solver} | {r.grid_label} | {r.cache_label} | {int(r.steps)} | {_label(r)} | "
                         f"{int(r.nfe)} | {r.backbone_evals:.1f} | {r.fid:.3f} | {_fmt(r.prompt_accuracy)} |")
    lines.append("")
    # uncertainty over seed sets (where a sweep has several)
    keys = ["backbone", "solver", "grid", "steps", "guidance", "scale"]
    multi = ok.groupby(keys).filter(lambda g: g.seed_set.nunique() > 1)
    if not multi.empty:
        from scipy import stats as st

        lines += ["## Across seed sets", "", "Mean over seed sets with a 95% t-interval (seed sets are independent "
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
        lines.append("")
    if "median_error" in ok and ok.median_error.notna().any():
        lines += ["## Exact metrics (analytic backbone)", "", "Against a DOP853 solve (rtol 1e-10) of the same guided ODE "
                  "from the same noise: median endpoint error and mode-flip rate; sliced Wasserstein to exact samples.", "",
                  "| solver | grid | cache | steps | guidance | NFE | median error | mode flips | sliced W1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, r in ok.dropna(subset=["median_error"]).sort_values(["solver", "steps", "grid_label"]).iterrows():
            lines.append(f"| {r.solver} | {r.grid_label} | {r.cache_label} | {int(r.steps)} | {_label(r)} | {int(r.nfe)} | "
                         f"{float(r.median_error):.2e} | "
                         f"{float(r.mode_flip_rate):.3f} | {float(r.sliced_wasserstein):.4f} |")
        lines.append("")
    lines += _cache_section(ok)
    lines += _grid_section(ok, results_dir)
    # cost table
    lines += ["## Cost", "", "Mean per cell: wall time, sampling (backbone forward vs solver's own work), decoding, metrics.", "",
              "| solver | NFE | wall s | sampling s | backbone s | solver s | decode s | metrics s |", "|---|---|---|---|---|---|---|---|"]
    cost = ok.copy()
    for c in ("sampling_s", "backbone_s", "solver_s", "decode_s", "metric_s"):
        cost[c] = cost[c].astype(float)
    for (solver, nfe), s in cost.groupby(["solver", "nfe"]):
        lines.append(f"| {solver} | {int(nfe)} | {s.wall_s.mean():.2f} | {s.sampling_s.mean():.2f} | {s.backbone_s.mean():.2f} | "
                     f"{s.solver_s.mean():.3f} | {s.decode_s.mean():.2f} | {s.metric_s.mean():.2f} |")
    lines.append("")
    if len(failed):
        lines += ["## Failed cells", "", "| solver | grid | steps | guidance | error |", "|---|---|---|---|---|"]
        for _, r in failed.iterrows():
            lines.append(f"| {r.solver} | {r.grid} | {r.steps} | {_label(r)} | {str(r.error)[:160]} |")
        lines.append("")
    warn = sorted({w for ws in df.warnings.dropna() for w in json.loads(ws)} if "warnings" in df else set())
    if warn:
        lines += ["## Warnings stored with the rows", ""] + [f"- {w}" for w in warn] + [""]
    (out / "index.md").write_text("\n".join(lines))
    return out / "index.md"


def _grid_label(grid, options) -> str:
    opts = json.loads(options) if isinstance(options, str) and options else (options or {})
    if grid == "optimised" and isinstance(opts, dict) and opts.get("key"):
        return f"optimised:{opts['key']}"
    return str(grid)


def _cache_label(cache, options) -> str:
    if cache in (None, "none") or (isinstance(cache, float) and math.isnan(cache)):
        return "none"
    opts = json.loads(options) if isinstance(options, str) and options else (options or {})
    return f"{cache}(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")" if opts else str(cache)


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
        fid_in = _inside(r.fid, b.fid_ci_low, b.fid_ci_high)
        acc_in = _inside(r.prompt_accuracy, b.get("prompt_accuracy_ci_low"), b.get("prompt_accuracy_ci_high"))
        flops = f"{r.flops_per_sample / 1e9:.3f} G" if r.flops_per_sample == r.flops_per_sample else "n/a"
        lines.append(f"| {r.solver} | {int(r.steps)} | {_label(r)} | {r.cache_label} | {int(r.nfe)} | {r.backbone_evals:.1f} | "
                     f"{b.backbone_evals / r.backbone_evals:.2f}x | {flops} | {_fmt(r.fid)} | {_fmt(b.fid)} "
                     f"[{_fmt(b.fid_ci_low)}, {_fmt(b.fid_ci_high)}] | {fid_in} | {_delta(r, 'delta_fid')} | "
                     f"{_fmt(r.prompt_accuracy)} | {_fmt(b.prompt_accuracy)} [{_fmt(b.get('prompt_accuracy_ci_low'))}, "
                     f"{_fmt(b.get('prompt_accuracy_ci_high'))}] | {acc_in} | {_delta(r, 'delta_prompt_accuracy')} | "
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
    from solverzoo.bench.run import _numpy

    try:
        d = paired_delta(_numpy(fa), _numpy(fb), r, 200, 0.95, seed=int(a.seed_set))
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
        lines.append(f"| {r.backbone} | {r.solver} | {int(r.steps)} | {_label(r)} | {int(r.nfe)} | {r.grid_label} | "
                     f"{float(r[metric]):.4g} | {b.grid_label} | {float(b[metric]):.4g} | {change:+.1%} | "
                     f"{_fmt(r.fid)} / {_fmt(b.fid)} | {_paired(results_dir, r, b)} | "
                     f"{_fmt(r.prompt_accuracy)} / {_fmt(b.prompt_accuracy)} |")
    return lines + ["", "Paired ΔFID: optimised minus best built-in on the same samples' noise and prompts, the same "
                    "bootstrap resamples for both (an interval containing 0: no detectable difference at this N).", ""]


def _delta(r, col) -> str:
    v, lo, hi = (_num(r.get(c)) for c in (col, col + "_ci_low", col + "_ci_high"))
    if any(math.isnan(x) for x in (v, lo, hi)):
        return "n/a"
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _inside(v, lo, hi) -> str:
    vals = [v, lo, hi]
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in vals):
        return "n/a"
    return "yes" if float(lo) <= float(v) <= float(hi) else "no"


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _why(df, metric) -> str:
    ws = sorted({w for ws in df.warnings.dropna() for w in json.loads(ws) if metric.split("_")[0] in w})
    return "; ".join(ws) if ws else "the metric was disabled or does not apply"


def report_main(results: str, out: str | None) -> Path:
    results_dir = Path(results)
    if not (results_dir / "records").is_dir():
        raise ResultsError(f"{results} is not a solverzoo results directory (no records/ folder inside)")
    return write_report(results_dir, out or results_dir / "report")
