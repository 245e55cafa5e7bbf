"""Reports from a results table: index.md plus PNG figures, each captioned with the configs,
N and seeds that made it."""
from __future__ import annotations

import json
import math
from pathlib import Path


import numpy as np

from .bench.records import ResultsError, build_table


def _label(r) -> str:
    return f"{r['guidance']} {r['scale']:g}"


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
        fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False, sharey=True)
        for ax, g in zip(axes[0], groups):
            sub = data[[(_label(r) == g) for _, r in data.iterrows()]]
            for (solver, grid), s in sub.groupby(["solver", "grid"]):
                s = s.groupby("nfe", as_index=False).mean(numeric_only=True).sort_values("nfe")
                ax.plot(s.nfe, s[metric], marker="o", label=f"{solver} ({grid})")
                if ci and s[ci[0]].notna().all():
                    ax.fill_between(s.nfe, s[ci[0]], s[ci[1]], alpha=0.2)
            ax.set_xscale("log")
            ax.set_xlabel("NFE (every guidance branch counted)")
            ax.set_title(g)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{title} — {', '.join(backbones)}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        lines.extend([f"## {title}", "", f"![{title}]({fname})", "", f"_{note}._", ""])
        figs.append(fname)

    fig_lines("fid", "nfe_vs_fid.png", "NFE vs FID", "FID (lower is better)", ("fid_ci_low", "fid_ci_high"))
    fig_lines("prompt_accuracy", "nfe_vs_prompt_accuracy.png", "NFE vs prompt accuracy", "prompt accuracy",
              ("prompt_accuracy_ci_low", "prompt_accuracy_ci_high"))
    fig_lines("clip_score", "nfe_vs_clip_score.png", "NFE vs CLIP score", "CLIP score")

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
        for (solver, steps), s in data.groupby(["solver", "steps"]):
            s = s.sort_values("scale")
            ax.plot(s.fid, s[y], marker="o", alpha=0.7, label=f"{solver} {steps} steps")
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
        solvers, steps = sorted(sub.solver.unique()), sorted(sub.steps.unique())
        tiles = {(r.solver, r.steps): results_dir / "samples" / f"{r.config_hash}.png" for _, r in sub.iterrows()}
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
    lines += ["## Best choice at each NFE budget", "", "Lowest FID among cells whose NFE is within the budget "
              "(ties broken by prompt accuracy).", "", "| backbone | NFE budget | solver | grid | steps | guidance | NFE | FID | prompt acc |",
              "|---|---|---|---|---|---|---|---|---|"]
    for bb in backbones:
        sub = ok[(ok.backbone == bb)].dropna(subset=["fid"])
        for budget in sorted(sub.nfe.unique()):
            cand = sub[sub.nfe <= budget].sort_values(["fid", "prompt_accuracy"], ascending=[True, False])
            if cand.empty:
                continue
            r = cand.iloc[0]
            lines.append(f"| {bb} | {int(budget)} | {r.solver} | {r.grid} | {int(r.steps)} | {_label(r)} | {int(r.nfe)} | "
                         f"{r.fid:.3f} | {_fmt(r.prompt_accuracy)} |")
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
                  "| solver | steps | guidance | NFE | median error | mode flips | sliced W1 |", "|---|---|---|---|---|---|---|"]
        for _, r in ok.dropna(subset=["median_error"]).sort_values(["solver", "steps"]).iterrows():
            lines.append(f"| {r.solver} | {int(r.steps)} | {_label(r)} | {int(r.nfe)} | {float(r.median_error):.2e} | "
                         f"{float(r.mode_flip_rate):.3f} | {float(r.sliced_wasserstein):.4f} |")
        lines.append("")
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
