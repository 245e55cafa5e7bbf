"""The report's figures: cost against a metric, the FID / prompt-following trade-off, NFE against
PSNR to the converged solve, and labelled sample grids. Legends sit outside the axes; each
caption states N, the seed sets and what its bands are."""
from __future__ import annotations

import re

from solverzoo.bench.formatting import label, pareto, series
from solverzoo.bench.report_context import Ctx, measured, not_measured

MARKERS = "osD^v<>phX*"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_outside(fig, ax, n_series: int, axes=None) -> None:
    """One legend right of ``ax`` holding every series drawn in any of ``axes`` (each once)."""
    seen: dict = {}
    for a in (axes if axes is not None else [ax]):
        for h, lab in zip(*a.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        ax.legend(list(seen.values()), list(seen), fontsize=6 if n_series > 6 else 7, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)


def _styles(names) -> dict:
    """The same colour and marker for a series in every panel."""
    colours = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: (colours[k % len(colours)], MARKERS[k % len(MARKERS)]) for k, n in enumerate(sorted(set(names)))}


def _plot_with_band(ax, x, y, lo, hi, style, name: str, ls: str = "-") -> None:
    """A series with its interval: a shaded band between points and error bars on each point (a
    lone point has no band to shade)."""
    colour, marker = style
    x, y = list(x), list(y)
    ax.plot(x, y, marker=marker, ls=ls, color=colour, label=name)
    if lo is not None and all(v == v for v in list(lo) + list(hi)):
        lo, hi = list(lo), list(hi)
        ax.errorbar(x, y, yerr=[[max(a - b, 0) for a, b in zip(y, lo)], [max(b - a, 0) for a, b in zip(y, hi)]],
                    fmt="none", ecolor=colour, elinewidth=0.8, capsize=2)
        if len(x) > 1:
            ax.fill_between(x, lo, hi, alpha=0.12, color=colour)


def _save(fig, c: Ctx, fname: str) -> None:
    fig.savefig(c.out / fname, dpi=110, bbox_inches="tight")  # "tight" keeps the outside legend in the file
    pyplot().close(fig)


def _panels(c: Ctx, data, n_series: int):
    groups = sorted({label(r) for _, r in data.iterrows()})
    fig, axes = pyplot().subplots(1, len(groups), figsize=(4.2 * len(groups) + 0.4, 3.6), squeeze=False, sharey=True)
    return groups, fig, axes[0]


def nfe_figure(c: Ctx, metric: str, fname: str, title: str, ylabel: str, ci=None, bands: str = "") -> list[str]:
    """Cost (backbone evaluations per sample) against ``metric``, one panel per guidance setting,
    points averaged over seed sets, bands the mean of the cells' own 95 % intervals."""
    data = c.ok.dropna(subset=[metric]) if metric in c.ok else c.ok.iloc[:0]
    if data.empty:
        return [f"## {title}", "", f"_No {metric} values: {not_measured(c.df, metric)}._", ""]
    n_series = data.series.nunique()
    groups, fig, axes = _panels(c, data, n_series)
    styles = _styles(data.series)
    for ax, g in zip(axes, groups):
        sub = data[data.setting == g]
        for (name, cache), s in sub.groupby(["series", "cache_label"]):
            s = s.groupby(["steps"], as_index=False).mean(numeric_only=True).sort_values("backbone_evals")
            band = ci if ci and ci[0] in s else (None, None)
            _plot_with_band(ax, s.backbone_evals, s[metric], s[band[0]] if band[0] else None,
                            s[band[1]] if band[1] else None, styles[name], name, "--" if cache != "none" else "-")
        ax.set_xscale("log")
        vals = data[metric].astype(float)
        if metric == "fid" and vals.min() > 0 and vals.max() / vals.min() > 5:
            ax.set_yscale("log")  # a few poor grids would otherwise flatten every other curve
        ax.set_xlabel("backbone evaluations / sample (= NFE uncached)")
        ax.set_title(g, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    _legend_outside(fig, axes[-1], n_series, axes)
    fig.suptitle(f"{title} — {', '.join(c.backbones)}", fontsize=9)
    _save(fig, c, fname)
    band = bands or ("bands and error bars: each cell's 95% bootstrap interval over samples" if ci else "no bands")
    gen = ("; autoregressive cells (a generator backbone's): cost = network forward passes per sample, one per token "
           "and guidance branch" if (data.solver == "autoregressive").any() else "")
    return [f"## {title}", "", f"![{title}]({fname})", "",
            f"_{c.seeds_text(data)}; points: mean over seed sets; {band}; dashed: cached cells{gen}._", ""]


def tradeoff_section(c: Ctx) -> list[str]:
    """FID against CLIP score (or prompt accuracy) across guidance scales, Pareto front marked."""
    y = "clip_score" if c.ok.clip_score.notna().any() else "prompt_accuracy"
    data = c.ok.dropna(subset=["fid", y])
    lines = [f"## FID vs {y.replace('_', ' ')} across guidance (the trade-off curve)", ""]
    if data.empty:
        return lines + [f"_Not enough metrics for the trade-off: {not_measured(c.df, 'fid')}._", ""]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    front = set(pareto(list(zip(data.fid, data[y]))))
    n_series = 0
    for (solver, steps, grid, cache), s in data.groupby(["solver", "steps", "grid_label", "cache_label"]):
        s = s.sort_values("scale")
        ax.plot(s.fid, s[y], marker="o", alpha=0.7, label=f"{series(solver, grid, cache)} {steps} steps")
        n_series += 1
        for _, r in s.iterrows():
            ax.annotate(label(r), (r.fid, r[y]), fontsize=5)
    fr = data.iloc[sorted(front)].sort_values("fid")
    ax.plot(fr.fid, fr[y], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("FID (lower is better)")
    ax.set_ylabel(y.replace("_", " ") + " (higher is better)")
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax, n_series)
    _save(fig, c, "tradeoff.png")
    lines += ["![trade-off](tradeoff.png)", "", f"_{c.seeds_text(data)}; one point per cell (no bands); "
              "dashed: the Pareto front over all cells; labels: guidance setting._", ""]
    if y == "prompt_accuracy":
        lines += ["_CLIP score was not available for these backbones, so prompt accuracy (the attribute classifier's "
                  "GenEval-style exact match) stands in on the y axis._", ""]
    return lines


def convergence_figure(c: Ctx) -> list[str]:
    """NFE against median decoded PSNR to the converged solve, per series, with its 95 % interval
    as a band and the 30 / 40 / 50 dB levels; one panel per guidance setting."""
    if not measured(c.ok, "psnr_converged"):
        return []
    data = c.ok.dropna(subset=["psnr_converged"])
    n_series = data.series.nunique()
    groups, fig, axes = _panels(c, data, n_series)
    styles = _styles(data.series)
    for ax, g in zip(axes, groups):
        sub = data[data.setting == g]
        for name, s in sub.groupby("series"):
            s = s.groupby("nfe", as_index=False).mean(numeric_only=True).sort_values("nfe")
            _plot_with_band(ax, s.nfe, s.psnr_converged, s.psnr_converged_ci_low, s.psnr_converged_ci_high,
                            styles[name], name)
        for th, ls in zip((30, 40, 50), (":", "-.", "--")):
            ax.axhline(th, color="0.4", lw=0.8, ls=ls)
            ax.annotate(f"{th} dB", (1.0, th), xycoords=("axes fraction", "data"), fontsize=6, ha="right", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("NFE (model evaluations / sample)")
        ax.set_title(g, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("decoded PSNR to converged solve (dB)")
    _legend_outside(fig, axes[-1], n_series, axes)
    fig.suptitle(f"Steps to converge — {', '.join(c.backbones)}", fontsize=9)
    _save(fig, c, "nfe_vs_psnr_converged.png")
    return ["![steps to converge](nfe_vs_psnr_converged.png)", "",
            f"_{c.seeds_text(data)}; points: median per-sample PSNR (mean over seed sets); bands and error bars: "
            "its 95% bootstrap interval over samples; horizontal lines: 30, 40 and 50 dB._", ""]


# -- labelled sample grids ---------------------------------------------------------------------------
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()


def _compose(tiles: dict, rows: list, cols: list, title: str, scale: int = 3):
    """One image: a tile per (row, column) upscaled ``scale`` times, row labels at the left, column
    labels on top and ``title`` above, drawn with PIL's default font."""
    from PIL import Image, ImageDraw, ImageFont

    first = next(p for p in tiles.values() if p.exists())
    w, h = Image.open(first).size
    w, h = w * scale, h * scale
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(probe.textlength(s, font=font))  # noqa: E731
    left = max(text_w(r) for r in rows) + 12
    line_h = 14
    top = 2 * line_h + 8
    gap = 6  # white space between step columns
    canvas = Image.new("RGB", (left + (w + gap) * len(cols), top + h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill="black", font=font)
    for j, col in enumerate(cols):
        draw.text((left + j * (w + gap) + (w - text_w(col)) // 2, line_h + 6), col, fill="black", font=font)
    for i, row in enumerate(rows):
        draw.text((4, top + i * h + h // 2 - 6), row, fill="black", font=font)
        for j, col in enumerate(cols):
            p = tiles.get((row, col))
            if p is not None and p.exists():
                canvas.paste(Image.open(p).convert("RGB").resize((w, h), Image.NEAREST), (left + j * (w + gap), top + i * h))
    return canvas


def samples_section(c: Ctx) -> list[str]:
    """Per backbone and guidance setting: rows solver (grid) [+ cache], columns steps, the first seed
    set's first 8 samples in every tile, labels drawn in the image."""
    lines: list[str] = []
    for bb in c.backbones:
        sub_bb = c.ok[c.ok.backbone == bb]
        settings = sorted(sub_bb.setting.unique())
        for k, setting in enumerate(reversed(settings)):  # the last (strongest) setting keeps the plain name
            sub = sub_bb[sub_bb.setting == setting]
            sub = sub[sub.seed_set == sub.seed_set.min()] if sub.seed_set.notna().any() else sub
            tiles = {(r.series, f"{int(r.steps)} steps"): c.results_dir / "samples" / f"{r.config_hash}.png"
                     for _, r in sub.iterrows()}
            if not any(p.exists() for p in tiles.values()):
                continue
            rows = sorted(sub.series.unique())
            cols = [f"{int(s)} steps" for s in sorted(sub.steps.unique())]
            seed = int(sub.seed_set.min()) if sub.seed_set.notna().any() else "n/a"
            title = f"{bb} - {setting} - seed set {seed}, the first samples (same noise and prompts in every tile)"
            name = f"grid_{bb}.png" if k == 0 else f"grid_{bb}_{_slug(setting)}.png"
            _compose(tiles, rows, cols, title).save(c.out / name)
            lines += [f"## Samples: {bb}, {setting}", "",
                      f"![samples {bb} {setting}]({name})", "",
                      f"_Rows: solver (grid) [+ cache]; columns: steps; {setting}; each tile: samples 0-7 of the N = "
                      f"{int(sub.n_samples.max())} per cell (a video backbone's: samples 0-3, one row of frames each), the "
                      f"same seeds (seed set {seed}) and prompts in every tile; no bands._", ""]
    return lines
