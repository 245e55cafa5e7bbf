"""The report on synthetic results: paired winners and ties, monotone best choices, steps to
converge, a summary of resolved claims only, and old results without the new columns."""
from __future__ import annotations

import re

import numpy as np
import pytest

from solverzoo.bench import report_tables as tab
from solverzoo.bench.paired import Diff, PairedGroup, load_reference
from solverzoo.bench.records import config_hash, record_config, write_arrays, write_record
from solverzoo.bench.report import write_report
from solverzoo.bench.report_context import load_context
from solverzoo.bench.resampling import paired_bootstrap, unpaired_bootstrap

N, D = 200, 8


def _cell(root, solver, steps, *, scale=3.0, err=None, psnr=None, psnr_ci=None, feats, conv=None, hits, new=True,
          note=None):
    cell = {"backbone": "toy", "backbone_weights": "toy-weights", "solver": solver, "grid": "logsnr", "grid_options": {},
            "steps": steps, "guidance": "cfg", "scale": scale, "seed_set": 0, "n_samples": N, "solver_options": {},
            "metrics": {}}
    h = config_hash(record_config(cell))
    rec = {**cell, "cache": "none", "config_hash": h, "status": "ok", "error": None, "warnings": [], "nfe": 2 * steps,
           "backbone_evals": 2 * steps, "flops_per_sample": float("nan"), "fid": 10.0, "fid_ci_low": 5.0,
           "fid_ci_high": 15.0, "kid": 0.01, "clip_score": None, "prompt_accuracy": float(hits.mean()),
           "prompt_accuracy_ci_low": 0.4, "prompt_accuracy_ci_high": 0.9, "wall_s": 1.0, "sampling_s": 0.5,
           "backbone_s": 0.4, "solver_s": 0.1, "decode_s": 0.1, "metric_s": 0.2}
    arrays = {"features": feats, "hits": hits}
    if new:
        e_ci = np.quantile(err, [0.45, 0.55])
        p_med = float(np.median(psnr))
        lo, hi = psnr_ci if psnr_ci is not None else (p_med - 1.0, p_med + 1.0)
        rec.update(err_converged=float(np.median(err)), err_converged_ci_low=float(e_ci[0]),
                   err_converged_ci_high=float(e_ci[1]), psnr_converged=p_med, psnr_converged_ci_low=lo,
                   psnr_converged_ci_high=hi, fd_converged=0.1, fid_inf=9.0, fid_inf_ci_low=8.0, fid_inf_ci_high=10.0)
        arrays.update(err=err, psnr=psnr)
        # as the harness stores it: once per converged solve, named by the key in the cell's record
        rec["converged_key"] = "toysolve"
        write_arrays(root, "converged-toysolve", {"features": np.asarray(conv, dtype=np.float64)})
        if note:  # in the warnings: records.py's schema (today) rejects a string in err_converged_note
            rec["warnings"].append(note)
    write_record(root, rec)
    write_arrays(root, h, {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    _tile(root, h)
    return h


def _tile(root, h):
    from PIL import Image

    (root / "samples").mkdir(exist_ok=True)
    Image.new("RGB", (64, 8), (40, 90, 160)).save(root / "samples" / f"{h}.png")


def _results(root, new=True):
    """cfg 3: alpha (4 steps) clearly beats beta (4 steps); gamma and delta (8 steps) are tied
    (the same multiset of per-sample errors, pairs swapped); gamma at 16 steps converges."""
    rng = np.random.default_rng(0)
    base = rng.lognormal(-3, 0.5, N)  # per-sample difficulty shared by every cell (common random numbers)
    conv = rng.normal(0.5, 1.0, (N, D))
    hits = (rng.random(N) < 0.7).astype(float)
    write_arrays(root, "reference", {"mu": np.zeros(D), "sigma": np.eye(D), "n": np.array(1000.0)})
    near = lambda s: conv + s * rng.normal(size=(N, D))  # noqa: E731
    c8 = base * 0.2 * rng.lognormal(0, 0.3, N)
    swap = np.arange(N).reshape(-1, 2)[:, ::-1].reshape(-1)
    mk = lambda solver, steps, err, psnr, feats, **kw: _cell(root, solver, steps, err=err, feats=feats,  # noqa: E731
                                                             psnr=psnr + rng.normal(0, 0.3, N), conv=conv, hits=hits,
                                                             new=new, **kw)
    return {
        "A": mk("alpha", 4, base * 0.5, 25.0, near(0.3)),
        "B": mk("beta", 4, base * 1.0, 20.0, near(0.5)),
        "C8": mk("gamma", 8, c8, 45.0, near(0.05), psnr_ci=(43.0, 47.0)),
        "D8": mk("delta", 8, c8[swap], 50.5, near(0.05), psnr_ci=(49.0, 52.0)),
        "C16": mk("gamma", 16, base * 0.05, 60.0, near(1e-5), psnr_ci=(58.0, 62.0)),
        "S": _cell(root, "ddpm", 4, err=np.full(N, np.nan), psnr=np.full(N, np.nan), feats=near(0.4), conv=conv,
                   hits=hits, new=new, note="stochastic solver: per-sample distance to the ODE solution is not meaningful"),
        "E": mk("alpha", 4, base * 0.3, 30.0, near(0.2), scale=6.0),
        "F": mk("beta", 4, base * 0.31, 30.0, near(0.2), scale=6.0),
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("new")
    cells = _results(root)
    index = write_report(root, root / "report").read_text()
    return root, cells, index


def _budgets(root):
    c = load_context(root, root / "report")
    return c, {key["scale"]: budgets for key, budgets in tab.best_choices(c)}


def test_paired_differences_use_the_same_resamples(synthetic):
    root, cells, _ = synthetic
    g = PairedGroup(root, list(cells.values()), N, load_reference(root), seed=1)
    d = g.diff("err", cells["A"], cells["B"])
    assert d.delta < 0 and d.resolved  # alpha is better on every sample
    tie = g.diff("err", cells["C8"], cells["D8"])
    assert tie.delta == 0 and not tie.resolved  # the same multiset of errors: a median difference of exactly 0
    # the same indices on both sides: exactly estimators.paired_bootstrap with the same generator
    ea, eb = (g.arrays[cells[k]]["err"] for k in ("E", "F"))
    ref = paired_bootstrap(ea, eb, reps=1000, rng=np.random.default_rng(1))
    pe = g.diff("err", cells["E"], cells["F"])
    assert (pe.delta, pe.lo, pe.hi) == pytest.approx((ref["delta"], ref["ci_low"], ref["ci_high"]))
    # a 3 % per-sample difference: resolved paired, hidden by independent resamples
    assert pe.resolved and not Diff(**dict(zip(("delta", "lo", "hi"), (lambda u: (u["delta"], u["ci_low"], u["ci_high"]))(
        unpaired_bootstrap(ea, eb, reps=1000, rng=np.random.default_rng(1)))))).resolved
    assert g.fid_vs_converged(cells["C16"]) is not None and g.diff("fid", cells["A"], cells["B"]) is not None


def test_best_choice_names_the_resolved_winner_and_lists_ties(synthetic):
    root, cells, index = synthetic
    _, per_scale = _budgets(root)
    b8, b16, b32 = per_scale[3.0]
    assert (b8.budget, b8.best.solver, b8.verdict, b8.runner.solver) == (8, "alpha", "winner", "beta")
    assert b16.verdict == "tied" and {b16.best.cell, *b16.tied} == {"gamma (logsnr) 8 steps", "delta (logsnr) 8 steps"}
    assert b32.best.cell == "gamma (logsnr) 16 steps" and b32.verdict == "winner"
    assert "### toy, cfg 3 (N = 200)" in index and "### toy, cfg 6 (N = 200)" in index  # one table per guidance
    assert re.search(r"\| 16 \| (gamma|delta) \(logsnr\) 8 steps \|.*tied with (gamma|delta) \(logsnr\) 8 steps", index)
    assert re.search(r"\| 8 \| alpha \(logsnr\) 4 steps \|.*\*\*winner\*\*", index)
    # cfg 6: alpha and beta differ by 3 % per sample in the same direction: resolved by pairing
    assert per_scale[6.0][0].verdict == "winner"
    # a stochastic solver is left out of the ranking, with the reason
    assert "- Not ranked: ddpm (logsnr) 4 steps (stochastic solver" in index
    assert all("ddpm" not in c for b in per_scale[3.0] for c in [b.best.cell, *b.tied])


def test_a_larger_budget_never_recommends_a_cell_a_smaller_budget_beats(synthetic):
    root, _, _ = synthetic
    _, per_scale = _budgets(root)
    for budgets in per_scale.values():
        beaten = set()
        for b in budgets:
            assert b.best.cell not in beaten and not beaten & set(b.tied)
            if b.verdict == "winner" and b.runner is not None:
                beaten.add(b.runner.cell)
    assert "beta (logsnr) 4 steps" not in {c for b in per_scale[3.0][1:] for c in [b.best.cell, *b.tied]}


def test_steps_to_converge_picks_the_smallest_resolved_nfe(synthetic):
    root, _, index = synthetic
    c, _ = _budgets(root)
    rows = {(r["key"]["scale"], r["series"]): r for r in tab.steps_table(c)}
    g = rows[(3.0, "gamma (logsnr)")]
    assert (g["nfe_to_30db"], g["nfe_to_40db"], g["nfe_to_50db"]) == (16, 16, 32)
    assert g["fid_1pct"] == "32"  # only the 16-step cell's paired ΔFID lies within ±1 % of the converged FID
    d = rows[(3.0, "delta (logsnr)")]
    assert d["nfe_to_40db"] == 16 and d["nfe_to_50db"] == "not distinguishable at this N"
    assert rows[(3.0, "beta (logsnr)")]["nfe_to_30db"] == "not reached"
    assert "| toy, cfg 3 | gamma (logsnr) | 16 | 16 | 32 | 32 |" in index
    assert (root / "report" / "nfe_vs_psnr_converged.png").exists()


def test_summary_states_only_resolved_claims(synthetic):
    _, _, index = synthetic
    summary = index.split("## In short", 1)[1].split("\n## ", 1)[0]
    assert "**alpha (logsnr) 4 steps** beats beta (logsnr) 4 steps by Δerr" in summary and "resolved" in summary
    assert "**gamma (logsnr) 16 steps** beats" in summary
    beats = [ln for ln in summary.splitlines() if "beats" in ln]
    assert not any("8 steps** beats" in ln for ln in beats)  # the tied pair is never claimed
    assert ("converged to ≥ 40 dB decoded PSNR against the converged solve at 16 NFE (delta (logsnr), gamma (logsnr)) "
            "and to ≥ 50 dB at 32 NFE (gamma (logsnr))") in summary
    assert "With toy, cfg 6, no cell is resolved above 40 dB" in summary
    assert index.index("## In short") < index.index("## Best choice")


def test_grids_are_labelled_and_figures_captioned(synthetic):
    from PIL import Image

    root, _, index = synthetic
    assert (root / "report" / "grid_toy.png").exists()  # the strongest guidance keeps the plain name
    grid = Image.open(root / "report" / "grid_toy_cfg-3.png")  # 4 series x 3 step counts, tiles upscaled 3x
    assert grid.width > 3 * 64 * 3 and grid.height > 4 * 8 * 3  # labels widen and heighten the tiles' canvas
    for cap in re.findall(r"!\[[^\]]*\]\([^)]*\)\n\n(_[^\n]*_)", index):
        assert "N = 200" in cap and "seed set" in cap and "band" in cap
    assert "## Cost" in index


def test_old_results_without_the_new_columns_render_and_say_not_measured(tmp_path):
    _results(tmp_path, new=False)
    index = write_report(tmp_path, tmp_path / "report").read_text()
    assert "not measured" in index
    assert "## Best choice" in index and "## Steps to converge" in index and "## Cost" in index
    summary = index.split("## In short", 1)[1].split("\n## ", 1)[0]
    assert "beats" not in summary and "not measured" in summary


def test_plan_and_calibration_sections(tmp_path, monkeypatch):
    """The cost model's prediction is set against the cells' measured time, and the measured coverage
    table is printed from the package's calibration file (when there is one)."""
    import json

    from solverzoo.bench import report_sections as sec
    from solverzoo.bench.cost_model import write_plan

    root = tmp_path / "r"
    _results(root)
    write_plan(root, {"cells": 8, "n": N, "total_s": 123.4, "sampling_s": 100.0, "converged_s": 10.0, "metrics_s": 13.4,
                      "reference_s": 0.0, "floor_s": 0.0, "chosen_by": "cost model"})
    cal = tmp_path / "pkg"
    cal.mkdir()
    (cal / "interval_calibration.json").write_text(json.dumps({"what": "20 replicates", "rows": [
        {"interval": "err_converged, euler 4", "truth": "pooled median", "covered": 19, "n": 20, "coverage": 0.95,
         "coverage_ci95": [0.75, 0.999]}]}))
    monkeypatch.setattr("importlib.resources.files", lambda pkg: cal)
    index = write_report(root, root / "report").read_text()
    c = load_context(root, root / "report")
    measured = sum(float(v) for v in c.ok.wall_s)
    assert "predicted 123 s (sampling 100 s, converged 10 s, metrics 13 s" in index
    assert f"measured wall time sums to {measured:.0f} s" in index and "chosen by cost model" in index
    assert "| err_converged, euler 4 | pooled median | 19/20 | 0.95 [0.75, 1.00] |" in index
    (root / "plan.json").unlink()  # a sweep that made no plan: no section
    assert sec.plan_section(load_context(root, root / "report")) == []
