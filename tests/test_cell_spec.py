"""The typed sweep cell keeps every config hash of the dict form it replaced, and a cell's timing
parts add up to its wall time exactly (the ledger's wall is their sum)."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from solverzoo.bench import sweep
from solverzoo.bench.cell import TIMING_PARTS
from solverzoo.bench.cell_spec import Cell, TimingLedger
from solverzoo.bench.record_schema import config_hash, record_config


def _cfg(caches):
    metrics = {k: None for k in sweep.METRIC_SETTINGS}
    metrics.update(fid=True, kid=True, bootstrap=20, ci=0.95, converged={"method": "dpmpp_3m", "steps": 24})
    return {"sweep": {"seed_sets": [0, 1], "guidance": [{"name": "cfg", "scale": 4.0}, {"name": "none", "scale": 1}],
                      "solvers": ["euler", "dpmpp_2m"], "grids": ["default", {"name": "karras", "rho": 7}], "steps": [5, 10],
                      "caches": caches, "n_samples": 64, "solver_options": {"euler": {"s_churn": 0.0}}},
            "metrics": metrics}


BACKBONE = SimpleNamespace(name="fake", weights_id="fake-w1", default_grid="logsnr", default_grid_options={"lo": -3},
                           model=SimpleNamespace(net=None))


def _old_expand(cfg, backbone):
    """The dict form ``expand`` returned before cells were typed (grids, caches resolved the same way)."""
    sw, m = cfg["sweep"], cfg["metrics"]
    out = []
    for seed_set in sw["seed_sets"]:
        for g in sw["guidance"]:
            for solver in sw["solvers"]:
                for grid in sw["grids"]:
                    grid_name, grid_opts = sweep._grid_entry(grid, backbone)
                    for steps in sw["steps"]:
                        for cache in sw["caches"]:
                            cache, cache_opts = sweep._cache_entry(cache)
                            extra = {"cache": cache, "cache_options": cache_opts} if cache != "none" else {}
                            out.append({"backbone": backbone.name, "backbone_weights": backbone.weights_id, "solver": solver,
                                        "solver_options": dict(sw.get("solver_options", {}).get(solver, {})),
                                        "grid": grid_name, "grid_options": grid_opts, "steps": int(steps),
                                        "guidance": g["name"], "scale": float(g["scale"]), "n_samples": int(sw["n_samples"]),
                                        "seed_set": int(seed_set), "metrics": {k: m[k] for k in sweep.METRIC_SETTINGS},
                                        **extra})
    return out


@pytest.mark.parametrize("caches", [["none"], ["none", {"name": "teacache", "threshold": 0.05}]])
def test_expanded_cells_keep_the_dict_form_and_its_hashes(monkeypatch, caches):
    monkeypatch.setattr(sweep, "find_stack", lambda net: None)  # let the fake backbone take a cache
    cfg = _cfg(caches)
    cells, old = sweep.expand(cfg, BACKBONE), _old_expand(cfg, BACKBONE)
    assert all(isinstance(c, Cell) for c in cells) and len(cells) == len(old) == 32 * len(caches)
    for c, d in zip(cells, old):
        assert c.config() == d and set(c.config()) == set(d)
        assert c.hash == config_hash(d)
        assert Cell.from_config(d) == c and Cell.from_config(c.config()).hash == c.hash
        assert c.label()


def test_cache_keys_only_on_cached_cells():
    base = dict(backbone="b", backbone_weights="w", solver="euler", solver_options={}, grid="logsnr", grid_options={},
                steps=5, guidance="cfg", scale=4.0, n_samples=8, seed_set=0, metrics={"fid": True})
    plain, cached = Cell(**base), Cell(**base, cache="teacache", cache_options={"threshold": 0.05})
    assert "cache" not in plain.config() and "cache_options" not in plain.config()
    assert cached.config()["cache"] == "teacache" and cached.config()["cache_options"] == {"threshold": 0.05}
    assert cached.hash != plain.hash and cached.without_cache() == plain and cached.without_cache().hash == plain.hash
    assert Cell(**base, cache="none").config() == plain.config()  # "none" is no cache
    assert config_hash(base) == plain.hash
    assert Cell.from_config(record_config({**cached.config(), "status": "ok", "wall_s": 1.0})) == cached
    with pytest.raises(ValueError):
        Cell.from_config({**base, "wall_s": 1.0})


def test_ledger_parts_sum_to_wall_exactly():
    ticks = iter([0.0, 0.1, 0.35, 0.36, 1.0])  # start, then one tick per lap
    led = TimingLedger(("a", "b", "c"), clock=lambda: next(ticks))
    assert led.lap("a") == pytest.approx(0.1)
    led.lap("b")
    led.lap("a")
    assert led.move("b", "c", 0.05) == 0.05
    assert led.move("c", "a", 5.0) == 0.05  # clipped: no part goes negative
    assert led.move("a", "b", -1.0) == 0.0
    led.lap("c")
    assert all(v >= 0 for v in led.parts.values())
    assert led.wall == math.fsum(led.parts.values()) == pytest.approx(1.0)
    assert led.fields() == {"a_s": led.parts["a"], "b_s": led.parts["b"], "c_s": led.parts["c"], "wall_s": led.wall}
    with pytest.raises(ValueError):
        led.lap("typo")


def test_real_gmm_cell_record_parts_sum_to_wall(tmp_path):
    r = tmp_path / "r"
    out = subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", "backbone=gmm", "sweep=quick", "sweep.solvers=[euler]",
                          "sweep.grids=[default]", "sweep.steps=[5]", "metrics.bootstrap=20", "metrics.reference.n=2000",
                          "progress=false", f"results_dir={r}"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    paths = sorted((r / "records").glob("*.json"))
    assert len(paths) == 1
    rec = json.loads(paths[0].read_text())
    assert rec["status"] == "ok"
    parts = [rec[f"{p}_s"] for p in TIMING_PARTS]
    assert all(v >= 0 for v in parts)
    assert math.fsum(parts) == rec["wall_s"] > 0
    assert rec["sampling_s"] == rec["backbone_s"] + rec["solver_s"]
    assert Cell.from_config(record_config(rec)).hash == rec["config_hash"] == paths[0].stem
