"""The report's opening answer in words, generated from its tables and saying only what they
resolve: resolved winners at a budget (paired Δerr interval excluding 0) and NFE whose PSNR
interval to the converged solve clears 40 / 50 dB. Ties and unresolved levels are not claimed."""
from __future__ import annotations

from solverzoo.bench.report_context import Ctx, measured, not_measured
from solverzoo.bench.report_tables import best_choices, steps_table, title_of


def _setting(key: dict, multi_seed: bool) -> str:
    return title_of(key, multi_seed)


def _winner_sentences(c: Ctx, multi: bool) -> list[str]:
    out = []
    for key, budgets in best_choices(c):
        wins = [b for b in budgets if b.verdict == "winner" and b.runner is not None]
        where = _setting(key, multi)
        if not wins:
            if any(b.runner is not None for b in budgets):
                out.append(f"With {where} (N = {int(key['n_samples'])}), no cell is resolved more accurate than every "
                           "other affordable cell at any budget: the differences are within the paired intervals.")
            continue
        picks = [wins[0]] + ([wins[-1]] if wins[-1].best.config_hash != wins[0].best.config_hash else [])
        for b in picks:
            d = b.vs_runner["err"]
            out.append(f"At {b.budget:g} NFE with {where}, **{b.best.cell}** beats {b.runner.cell} by Δerr "
                       f"{d.delta:+.3g} [{d.lo:+.3g}, {d.hi:+.3g}] (median latent RMSE to the converged solve, paired "
                       "95% interval), resolved.")
    return out


def _first_nfe(rows: list[dict], th: int):
    """The smallest NFE resolved above ``th`` dB and every series that reaches it there."""
    hit = [(r[f"nfe_to_{th}db"], r["series"]) for r in rows if isinstance(r[f"nfe_to_{th}db"], int)]
    if not hit:
        return None, []
    nfe = min(h[0] for h in hit)
    return nfe, sorted(s for n, s in hit if n == nfe)


def _converge_sentences(c: Ctx, multi: bool) -> list[str]:
    by_key: dict = {}
    for r in steps_table(c):
        by_key.setdefault(tuple(sorted(r["key"].items())), []).append(r)
    out = []
    for key, rows in by_key.items():
        where, top = _setting(dict(key), multi), max(r["max_nfe"] for r in rows)
        n40, who40 = _first_nfe(rows, 40)
        n50, who50 = _first_nfe(rows, 50)
        if n40 is None:
            out.append(f"With {where}, no cell is resolved above 40 dB decoded PSNR against the converged solve: it "
                       f"needs more than the {top} NFE swept.")
            continue
        s = (f"With {where}, samples are converged to ≥ 40 dB decoded PSNR against the converged solve at {n40} NFE "
             f"({', '.join(who40)})")
        if n50 is not None:
            s += f" and to ≥ 50 dB at {n50} NFE ({', '.join(who50)})."
        else:
            s += f"; no cell is resolved above 50 dB up to the {top} NFE swept."
        out.append(s)
    return out


def summary_section(c: Ctx) -> list[str]:
    lines = ["## In short", ""]
    if not measured(c.ok, "err_converged") and not measured(c.ok, "psnr_converged"):
        return lines + [f"Solver accuracy against the converged solve: {not_measured(c.ok, 'err_converged')}. This "
                        "report therefore makes no claim about which solver is more accurate; the model-quality "
                        "numbers (FID, prompt accuracy) below compare cells against real data only.", ""]
    multi = c.ok.seed_set.nunique() > 1
    said = _winner_sentences(c, multi) + _converge_sentences(c, multi)
    if not said:
        said = ["No difference between cells is resolved at this N."]
    return lines + [f"- {s}" for s in said] + ["", "_Only resolved claims are stated here (paired 95% intervals that "
                                                "exclude 0; PSNR intervals whose lower end clears the level); ties "
                                                "are listed in the tables below._", ""]
