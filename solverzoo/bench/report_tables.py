"""The report's solver-accuracy tables: best choice at each budget, cells at equal cost, steps to
converge; and model quality against real data, one row per guidance setting.

Accuracy is distance to the converged solve of the same guided ODE from the same noise
(``err_converged``, ``psnr_converged``); every difference between two cells is a paired bootstrap
difference (:mod:`solverzoo.bench.paired`). A winner is named only when the interval of its
difference to every other affordable cell excludes zero; otherwise the cells it is tied with are
listed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from solverzoo.bench.converged import steps_to_converge
from solverzoo.bench.formatting import fmt, num
from solverzoo.bench.paired import Diff
from solverzoo.bench.report_context import PAIR_KEYS, Ctx, measured, not_measured

THRESHOLDS_DB = (30, 40, 50)
FID_TOLERANCE = 0.01  # "indistinguishable": paired ΔFID to the converged solve within ±1 % of its FID
PAIRED_METRICS = (("err", "Δerr"), ("psnr", "Δpsnr dB"), ("fid", "ΔFID"), ("acc", "Δacc"))


def ci_text(v, lo, hi, digits: int = 3, g: bool = False) -> str:
    v, lo, hi = num(v), num(lo), num(hi)
    if math.isnan(v):
        return "n/a"
    f = (lambda x: f"{x:.{digits}g}") if g else (lambda x: f"{x:.{digits}f}")
    return f(v) if math.isnan(lo) or math.isnan(hi) else f"{f(v)} [{f(lo)}, {f(hi)}]"


def col_ci(r, col: str, digits: int = 3, g: bool = False) -> str:
    return ci_text(r.get(col), r.get(col + "_ci_low"), r.get(col + "_ci_high"), digits, g)


def diff_text(d: Diff | None, g: bool = False) -> str:
    return "n/a" if d is None else d.text(3, rel=g) + (" **resolved**" if d.resolved else "")


def groups_of(c: Ctx, rows):
    """``(key dict, rows)`` per :data:`PAIR_KEYS` value, in a stable order."""
    rows = rows.assign(_seed=rows.seed_set.fillna(-1))
    keys = [k if k != "seed_set" else "_seed" for k in PAIR_KEYS]
    for key, g in rows.groupby(keys, sort=True):
        yield dict(zip(PAIR_KEYS, key)), g.drop(columns="_seed")


def title_of(key: dict, multi_seed: bool) -> str:
    t = f"{key['backbone']}, {key['guidance']} {key['scale']:g}"
    return t + (f", seed set {int(key['seed_set'])}" if multi_seed and key["seed_set"] >= 0 else "")


# -- best choice at each budget --------------------------------------------------------------------
@dataclass
class Budget:
    budget: float
    best: object
    runner: object = None
    vs_runner: dict = field(default_factory=dict)
    tied: list = field(default_factory=list)
    dominated: list = field(default_factory=list)  # unresolved against the best, but resolved worse than another cell
    verdict: str = "only candidate"


def _err_key(g, r) -> float:
    s = g.stat("err", r.config_hash)
    return s[0] if s is not None else float(r.err_converged)


def best_at_budgets(g, cand) -> list[Budget]:
    """One :class:`Budget` per distinct cost in ``cand`` (rows with ``err_converged``): the most
    accurate affordable cell, never one resolved-worse than another affordable cell (so a larger
    budget never recommends a cell that a smaller budget beats), its paired differences to the
    runner-up, and the cells it is tied with."""
    cand = cand.assign(_key=[_err_key(g, r) for _, r in cand.iterrows()]).sort_values(["_key", "backbone_evals"])
    out, beaten = [], set()
    for budget in sorted(cand.backbone_evals.unique()):
        afford = cand[cand.backbone_evals <= budget + 1e-9]
        hs = list(afford.config_hash)
        for a in hs:  # resolved-worse than some affordable cell: never recommended or listed as tied again
            if any((d := g.diff("err", o, a)) is not None and d.hi < 0 for o in hs if o != a):
                beaten.add(a)
        ranked = [r for _, r in afford.iterrows() if r.config_hash not in beaten] or [afford.iloc[0]]
        best, others = ranked[0], [r for _, r in afford.iterrows() if r.config_hash != ranked[0].config_hash]
        b = Budget(float(budget), best)
        if others:
            b.runner = others[0]
            b.vs_runner = {m: g.diff(m, best.config_hash, b.runner.config_hash) for m, _ in PAIRED_METRICS}
            diffs = {o.config_hash: g.diff("err", best.config_hash, o.config_hash) for o in others}
            if any(d is None for d in diffs.values()):
                b.verdict, b.tied = "not resolved (no per-sample errors stored)", [o.cell for o in others]
            else:
                open_ = [o for o in others if not diffs[o.config_hash].resolved]
                b.tied = [o.cell for o in open_ if o.config_hash not in beaten]
                b.dominated = [o.cell for o in open_ if o.config_hash in beaten]
                b.verdict = "tied" if open_ else "winner"
        out.append(b)
    return out


def verdict_text(b: Budget) -> str:
    if b.verdict == "winner":
        return "**winner**"
    if b.verdict != "tied":
        return b.verdict
    parts = ["tied with " + ", ".join(b.tied)] if b.tied else []
    if b.dominated:
        parts.append("not resolved against " + ", ".join(b.dominated) + " (each resolved worse than another affordable cell)")
    return "; ".join(parts)


def best_choices(c: Ctx) -> list[tuple[dict, list[Budget]]]:
    """Per paired group with ``err_converged``: its budgets (cached on the context)."""
    if "best" not in c.derived:
        res = []
        if measured(c.ok, "err_converged"):
            for key, rows in groups_of(c, c.ok):
                cand = rows[rows.err_converged.notna()]
                if not cand.empty:
                    res.append((key, best_at_budgets(c.group(rows), cand)))
        c.derived["best"] = res
    return c.derived["best"]


def best_choice_section(c: Ctx) -> list[str]:
    lines = ["## Best choice at each cost budget (accuracy against the converged solve)", "",
             "One table per guidance setting: each guidance setting is a different ODE. Cells are ranked by "
             "`err_converged`, the median per-sample latent RMSE to the converged solve of the same guided ODE from "
             "the same noise and prompts; the budget is backbone evaluations per sample (= NFE without a cache). "
             "Differences (recommended minus runner-up) are paired bootstrap differences (the same resample indices "
             "for both cells) with 95% intervals. **winner**: every other affordable cell is resolved worse (interval "
             "excludes 0); **tied**: the cells listed are not distinguishable from it at this N. A cell resolved worse "
             "than another affordable cell is never recommended or listed as tied at a larger budget. Model quality "
             "against real data is a separate question (its own table below).", ""]
    res = best_choices(c)
    if not res:
        return lines + [f"_Best choice by accuracy: {not_measured(c.ok, 'err_converged')}._", ""]
    multi = c.ok.seed_set.nunique() > 1
    for key, budgets in res:
        lines += [f"### {title_of(key, multi)} (N = {int(key['n_samples'])})", "",
                  "| budget | recommended | err_converged [CI] | psnr_converged dB [CI] | runner-up | "
                  + " | ".join(f"{h} vs runner-up [CI]" for _, h in PAIRED_METRICS) + " | verdict |",
                  "|---|---|---|---|---|" + "---|" * len(PAIRED_METRICS) + "---|"]
        for b in budgets:
            r = b.best
            deltas = " | ".join(diff_text(b.vs_runner.get(m), g=(m == "err")) for m, _ in PAIRED_METRICS)
            verdict = verdict_text(b)
            lines.append(f"| {b.budget:g} | {r.cell} | {col_ci(r, 'err_converged', 3, g=True)} | "
                         f"{col_ci(r, 'psnr_converged', 1)} | {b.runner.cell if b.runner is not None else '—'} | "
                         f"{deltas if b.runner is not None else ' | '.join('—' for _ in PAIRED_METRICS)} | {verdict} |")
        lines += [""] + _unranked(c, key)
    return lines


def _unranked(c: Ctx, key: dict) -> list[str]:
    """The cells of a paired group left out of the ranking (no ``err_converged``), with the reason."""
    rows = c.ok
    for k in PAIR_KEYS:
        rows = rows[(rows[k] == key[k]) | (rows[k].isna() & (key[k] == -1))] if k == "seed_set" else rows[rows[k] == key[k]]
    out = []
    for _, r in rows[rows.err_converged.isna()].iterrows():
        why = r.get("err_converged_note")
        if not (isinstance(why, str) and why):
            ws = [w for w in json.loads(r.warnings) if "err_converged" in w or "stochastic" in w] \
                if isinstance(r.get("warnings"), str) else []
            why = "; ".join(ws) or "err_converged not measured for this cell"
        out.append(f"- Not ranked: {r.cell} ({why}).")
    return out + ([""] if out else [])


# -- cells at equal cost -----------------------------------------------------------------------------
def comparison_section(c: Ctx) -> list[str]:
    """Every cell against the best cell of the same cost, seed set and guidance: paired differences."""
    has_err = measured(c.ok, "err_converged")
    basis = ("lowest `err_converged`" if has_err else
             "the first uncached cell by name: errors against the converged solve were not measured")
    lines = ["## Cells at equal cost: paired differences", "",
             f"Within one guidance setting, seed set and cost, each cell minus the reference cell ({basis}); "
             "paired bootstrap over samples, 95% intervals, **resolved** where the interval excludes 0. ΔFID vs "
             "converged: the cell's FID minus the converged solve's FID on the same resamples.", "",
             "| setting | cost | cell | err_converged [CI] | reference | "
             + " | ".join(f"{h} [CI]" for _, h in PAIRED_METRICS) + " | ΔFID vs converged [CI] |",
             "|---|---|---|---|---|" + "---|" * len(PAIRED_METRICS) + "---|"]
    multi, n_rows = c.ok.seed_set.nunique() > 1, 0
    for key, rows in groups_of(c, c.ok):
        g = c.group(rows)
        for cost, s in rows.groupby("backbone_evals"):
            s = s.assign(_cached=s.cache_label != "none")  # without errors: an uncached cell is the reference
            s = s.sort_values(["err_converged", "cell"] if has_err else ["_cached", "cell"], na_position="last")
            ref = s.iloc[0]
            for _, r in s.iterrows():
                same = r.config_hash == ref.config_hash
                d = " | ".join("—" if same else diff_text(g.diff(m, r.config_hash, ref.config_hash), g=(m == "err"))
                               for m, _ in PAIRED_METRICS)
                conv = diff_text(g.fid_vs_converged(r.config_hash))
                lines.append(f"| {title_of(key, multi)} | {cost:g} | {r.cell} | {col_ci(r, 'err_converged', 3, g=True)} | "
                             f"{'(reference)' if same else ref.cell} | {d} | {conv} |")
                n_rows += 1
    if not n_rows:
        return []
    return lines + ["", "_n/a: the per-sample arrays for that statistic are not stored for one of the two cells "
                    "(older results, a stochastic solver for errors, or no converged features for ΔFID vs converged)._", ""]


# -- steps to converge ---------------------------------------------------------------------------------
def _fid_check(g, rows) -> str:
    """Smallest NFE whose paired ΔFID to the converged solve lies within ±1 % of the converged FID."""
    seen_zero = seen = False
    for _, r in rows.sort_values("nfe").iterrows():
        d, conv = g.fid_vs_converged(r.config_hash), g.stat("fid_conv", r.config_hash)
        if d is None or conv is None:
            continue
        seen, tol = True, FID_TOLERANCE * abs(conv[0])
        if -tol <= d.lo and d.hi <= tol:
            return str(int(r.nfe))
        seen_zero |= d.lo <= 0 <= d.hi
    if not seen:
        return "not measured"
    return "not distinguishable at this N" if seen_zero else "not reached"


def steps_table(c: Ctx) -> list[dict]:
    """Per paired group and series: NFE to each PSNR threshold and the ΔFID check (cached)."""
    if "steps" in c.derived:
        return c.derived["steps"]
    res = []
    if measured(c.ok, "psnr_converged"):
        for key, rows in groups_of(c, c.ok):
            g = c.group(rows)
            for name, s in rows.groupby("series"):
                s = s[s.psnr_converged.notna()]
                if s.empty:
                    continue
                st = steps_to_converge([{"solver": name, "nfe": int(r.nfe), "psnr_converged": float(r.psnr_converged),
                                         "psnr_converged_ci_low": num(r.psnr_converged_ci_low)}
                                        for _, r in s.iterrows()], THRESHOLDS_DB)[name]
                top = s.sort_values("nfe").iloc[-1]
                res.append({"key": key, "series": name, **st, "fid_1pct": _fid_check(g, s), "max_nfe": int(top.nfe),
                            "psnr_at_max": col_ci(top, "psnr_converged", 1)})
    c.derived["steps"] = res
    return res


def steps_section(c: Ctx, figure: list[str]) -> list[str]:
    lines = ["## Steps to converge", "",
             "Per solver and guidance setting, the smallest NFE whose median decoded PSNR against the converged solve "
             "is resolved above each level (the lower end of its 95% bootstrap interval is above it): 50 dB is under "
             "one 8-bit grey level of RMS difference. 'not distinguishable at this N': some median reaches the level "
             "but no interval clears it; 'not reached': no cell of the sweep reaches it. ΔFID ±1%: the smallest NFE "
             "whose paired ΔFID to the converged solve lies within ±1% of the converged solve's FID.", ""]
    rows = steps_table(c)
    if not rows:
        return lines + [f"_Steps to converge: {not_measured(c.ok, 'psnr_converged')}._", ""]
    multi = c.ok.seed_set.nunique() > 1
    lines += ["| setting | solver (grid) | " + " | ".join(f"NFE to {t} dB" for t in THRESHOLDS_DB)
              + " | ΔFID within ±1% | largest NFE run | its psnr_converged dB [CI] |",
              "|---|---|" + "---|" * len(THRESHOLDS_DB) + "---|---|---|"]
    for r in rows:
        lines.append(f"| {title_of(r['key'], multi)} | {r['series']} | "
                     + " | ".join(str(r[f"nfe_to_{t}db"]) for t in THRESHOLDS_DB)
                     + f" | {r['fid_1pct']} | {r['max_nfe']} | {r['psnr_at_max']} |")
    return lines + [""] + figure


# -- model quality against real data -------------------------------------------------------------------
def _quality_cell(rows):
    """The cell that stands for a guidance setting's model quality: the most accurate one (closest
    to the converged solve), else the one with most NFE."""
    ode = rows[rows.err_converged.notna()]
    if not ode.empty:
        return ode.sort_values("err_converged").iloc[0], "most accurate cell (lowest err_converged)"
    return rows.sort_values(["nfe", "cell"]).iloc[-1], "cell with the most NFE (err_converged not measured)"


def quality_section(c: Ctx) -> list[str]:
    lines = ["## Model quality against real data (per guidance setting)", "",
             "How close the model's samples are to real data, per guidance setting: not a ranking of solvers (FID "
             "can reward integration errors; see the accuracy tables). Each row scores the cell closest to the "
             "converged solve and, where its features are stored, the converged solve itself. FID at N is biased "
             "upward by about c/N (see the real-data floor); `fid_inf` extrapolates that bias away.", "",
             "| backbone | guidance | N | seed sets | cells | FID of converged solve [CI] | scored cell | FID [CI] | "
             "fid_inf [CI] | KID [CI] | prompt acc [CI] | CLIP score | FID range over cells |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (bb, gd, sc), rows in c.ok.groupby(["backbone", "guidance", "scale"]):
        r, why = _quality_cell(rows)
        conv = c.group(rows.loc[[r.name]]).ci("fid_conv", r.config_hash)
        fids = rows.fid.dropna()
        rng = f"{fids.min():.3f}–{fids.max():.3f}" if len(fids) else "n/a"
        seeds = sorted({int(s) for s in rows.seed_set.dropna()})
        lines.append(f"| {bb} | {gd} {sc:g} | {int(r.n_samples)} | {seeds} | {len(rows)} | "
                     f"{ci_text(*conv) if conv else 'n/a'} | {r.cell} ({why}) | {col_ci(r, 'fid')} | "
                     f"{col_ci(r, 'fid_inf')} | {col_ci(r, 'kid', 4, g=True)} | {col_ci(r, 'prompt_accuracy')} | "
                     f"{fmt(r.clip_score)} | {rng} |")
    lines.append("")
    for col in ("fid_inf", "kid_ci_low", "clip_score"):
        if not measured(c.ok, col):
            lines.append(f"- `{col.replace('_ci_low', ' interval')}`: {not_measured(c.ok, col)}.")
    if c.reference is None:
        lines.append("- FID of the converged solve: not measured (no reference statistics stored with these results).")
    elif not any(g.has("fid_conv", h) for g in c.groups.values() for h in g.arrays):
        lines.append("- FID of the converged solve: not measured (no converged-solve features stored with the cells).")
    return lines + [""]

