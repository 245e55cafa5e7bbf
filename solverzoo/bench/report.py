"""Reports from a results table: index.md plus PNG figures, each captioned with the configs,
N and seeds that made it.

Orchestration only; the sections live in modules named for what they hold:
:mod:`~solverzoo.bench.report_summary` (the opening answer in words),
:mod:`~solverzoo.bench.report_tables` (accuracy against the converged solve, steps to converge,
model quality), :mod:`~solverzoo.bench.report_figures` (figures and labelled sample grids),
:mod:`~solverzoo.bench.report_sections` (caches, grids, seed sets, exact metrics, cost, failures),
:mod:`~solverzoo.bench.paired` (paired bootstrap differences) and
:mod:`~solverzoo.bench.report_context` (the table and what every section reads).
"""
from __future__ import annotations

from pathlib import Path

from solverzoo.bench import report_figures as figs
from solverzoo.bench import report_sections as sec
from solverzoo.bench import report_tables as tab
from solverzoo.bench.records import ResultsError
from solverzoo.bench.report_context import Ctx, load_context
from solverzoo.bench.report_summary import summary_section

__all__ = ["Ctx", "report_main", "write_report"]

_FID_BANDS = ("bands and error bars: each cell's own 95% bootstrap interval over samples (unpaired: wide; compare cells with the "
              "paired tables)")


def write_report(results_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``index.md`` and its figures for the results in ``results_dir`` into ``out_dir``:
    the answer in words first, then solver accuracy (paired, per guidance setting), steps to
    converge, model quality against real data, figures, samples, the comparisons of caches and
    grids, and the cost."""
    results_dir, out = Path(results_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = load_context(results_dir, out)
    body = tab.best_choice_section(c) + tab.steps_section(c, figs.convergence_figure(c)) + tab.comparison_section(c)
    body += tab.quality_section(c) + sec.floor_section(c)
    body += figs.nfe_figure(c, "fid", "nfe_vs_fid.png", "Cost vs FID", "FID (lower is better)",
                            ("fid_ci_low", "fid_ci_high"), _FID_BANDS)
    body += figs.nfe_figure(c, "prompt_accuracy", "nfe_vs_prompt_accuracy.png", "Cost vs prompt accuracy",
                            "prompt accuracy", ("prompt_accuracy_ci_low", "prompt_accuracy_ci_high"))
    body += figs.nfe_figure(c, "clip_score", "nfe_vs_clip_score.png", "Cost vs CLIP score", "CLIP score")
    body += figs.tradeoff_section(c) + figs.samples_section(c)
    for section in (sec.seed_sets_section, sec.exact_section, sec.cache_section, sec.grid_section, sec.cost_section,
                    sec.plan_section, sec.calibration_section, sec.failed_section, sec.warnings_section):
        body += section(c)
    lines = sec.header(c) + summary_section(c) + body  # the summary reads the tables computed above
    (out / "index.md").write_text("\n".join(lines))
    return out / "index.md"


def report_main(results: str, out: str | None) -> Path:
    results_dir = Path(results)
    if not (results_dir / "records").is_dir():
        raise ResultsError(f"{results} is not a solverzoo results directory (no records/ folder inside)")
    return write_report(results_dir, out or results_dir / "report")
