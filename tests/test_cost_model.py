"""The sweep cost model: its arithmetic against a hand count, the choice of N, and the harness's
``plan_only`` / ``n_samples=auto`` paths end to end on the analytic backbone."""
import json

import pandas as pd
import pytest

from solverzoo.bench.cell_spec import Cell
from solverzoo.bench.cost_model import UnitCosts, choose_n, predict

from .test_bench import QUICK, bench

CFG = {"metrics": {"converged": {"steps": 24}, "reference": {"n": 50000}, "floor_fid_inf_n": 4096}}
COSTS = UnitCosts(eval_s=1e-3, decode_s=2e-4, score_s=1e-4, metric_s=2.0, n_metric=384, real_s=3e-3)


def _cell(solver, steps, guidance="none", scale=1.0, seed_set=0, n=384):
    return Cell(backbone="b", backbone_weights="w", solver=solver, solver_options={}, grid="g", grid_options={},
                steps=steps, guidance=guidance, scale=scale, n_samples=n, seed_set=seed_set, metrics={})


CELLS = [_cell("euler", 4), _cell("heun", 8), _cell("euler", 4, "cfg", 3.0), _cell("heun", 8, "cfg", 3.0)]


def test_predict_matches_a_hand_count():
    p = predict(CELLS, CFG, COSTS, reference_cached=False)
    n = 384
    nfe = 4 + 8 * 2 + 4 * 2 + 8 * 2 * 2  # heun: 2 evaluations per step; CFG: 2 per evaluation
    assert p["nfe_per_sample"] == nfe
    assert p["sampling_s"] == pytest.approx(n * (nfe * 1e-3 + 4 * 2e-4), abs=0.06)
    # one converged solve per (guidance, scale, seed set): 12 + 24 + 48 steps, doubled when guided
    assert p["converged_groups"] == 2
    assert p["converged_s"] == pytest.approx(n * (84 * 3 * 1e-3 + 2 * 2e-4), abs=0.06)
    assert p["metrics_s"] == pytest.approx(4 * (2.0 + n * 1e-4) + 2 * n * 1e-4, abs=0.06)
    assert p["reference_s"] == pytest.approx(50000 * 3e-3, abs=0.06)
    # the floor: fid at N, and fid_inf on metrics.floor_fid_inf_n (4,096) real samples
    assert p["floor_s"] == pytest.approx(4096 * 3e-3 + 2 * 2.0, abs=0.06)
    assert p["total_s"] == pytest.approx(sum(p[k] for k in ("sampling_s", "converged_s", "metrics_s", "reference_s",
                                                             "floor_s")), abs=0.3)
    assert predict(CELLS, CFG, COSTS, converged_cached=True)["converged_s"] == 0.0


def test_metric_cost_scales_between_fixed_and_linear():
    assert COSTS.metric_at(384) == pytest.approx(2.0)
    assert COSTS.metric_at(768) == pytest.approx(3.0)  # half fixed (eigenproblems), half linear in N


def test_choose_n_takes_the_largest_n_that_fits_and_is_monotone_in_the_budget():
    chosen = []
    for budget in (20, 60, 200, 1000, 10_000):
        n, plan = choose_n(CELLS, CFG, COSTS, budget)
        chosen.append(n)
        bigger = [k for k in (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096) if k > n]
        if plan["total_s"] <= budget and bigger:  # the next candidate up would not have fitted
            assert predict(CELLS, CFG, COSTS, bigger[0])["total_s"] > budget
    assert chosen == sorted(chosen) and chosen[0] == 256 and chosen[-1] == 4096
    n, plan = choose_n(CELLS, CFG, COSTS, 1.0)  # nothing fits: the smallest, with its honest prediction
    assert n == 256 and plan["total_s"] > 1.0
    n, _ = choose_n(CELLS, CFG, COSTS, 200, elapsed_s=150)  # time already spent counts against the budget
    assert n < choose_n(CELLS, CFG, COSTS, 200)[0]


def test_plan_only_writes_the_plan_and_runs_no_cell(tmp_path):
    out = bench(*QUICK, f"results_dir={tmp_path}/r", "plan_only=true")
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert plan["cells"] == 4 and plan["n"] == 64 and plan["nfe_per_sample"] == 8 + 8 + 16 + 16
    assert plan["unit_costs"]["eval_s"] > 0 and plan["total_s"] > 0
    assert "predicted" in out.stderr and not (tmp_path / "r" / "records").exists()


def test_auto_n_runs_the_sweep_at_the_chosen_n(tmp_path):
    out = bench(*QUICK, f"results_dir={tmp_path}/r", "sweep.n_samples=auto", "sweep.budget_s=15", "sweep.steps=[4]",
                "sweep.solvers=[euler]")
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert plan["chosen_by"] == "cost model" and (df.n_samples == plan["n"]).all() and plan["n"] >= 256


def test_auto_n_without_a_budget_is_refused(tmp_path):
    out = bench(*QUICK, f"results_dir={tmp_path}/r", "sweep.n_samples=auto")
    assert out.returncode == 2 and "budget_s" in out.stderr
