"""Optimised time grids: the optimiser never does worse than its starting grid on the calibration
set, does better on held-out samples of the analytic testbed (exact reference), and the saved grid
is served by key with clear errors."""
import json

import numpy as np
import pytest
import torch

import solverzoo as sz
from solverzoo.bench.grid_optimiser import _theta, _times, optimise_grid
from solverzoo.timegrid import GridError


def test_parametrisation_round_trips_any_decreasing_grid():
    times = np.array([1.0, 0.7, 0.31, 0.3, 0.05, 0.0])
    np.testing.assert_allclose(_times(_theta(times), 1.0, 0.0), times, atol=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(20):  # any parameter gives a strictly decreasing grid with the same ends
        t = _times(rng.normal(size=5) * 3, 0.9, 0.1)
        assert t[0] == 0.9 and t[-1] == 0.1 and np.all(np.diff(t) < 0)


def test_optimised_grid_beats_the_best_builtin_on_held_out_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLVERZOO_GRIDS", str(tmp_path))
    path, data = optimise_grid("gmm", "dpmpp_2m", [4], n=96, max_evals=120, key="t-gmm", out_dir=tmp_path, log=lambda *_: None)
    run = data["runs"]["4"]
    assert run["mean_error_after"] <= run["mean_error_before"]
    saved = json.loads(path.read_text())
    assert saved["calibration"]["noise_seeds"].startswith("2000000011") and saved["solver"] == "dpmpp_2m"
    # held out: the harness's own seeds and prompts, exact reference by DOP853
    from solverzoo.backbone import load_backbone
    from solverzoo.bench.generate import generate

    bb = load_backbone("gmm")
    prompts = list(np.random.default_rng(5).integers(0, 3, 200))
    errs = {}
    for grid, opts in ((run["base_grid"], run["base_grid_options"]), ("optimised", {"key": "t-gmm"})):
        g = generate(bb, prompts, solver="dpmpp_2m", steps=4, grid=grid, grid_options=opts, guidance=None, seeds=range(200),
                     reference=True)
        errs[grid] = float(((g.latents.double() - g.reference.double()) ** 2).mean(1).sqrt().median())
    assert errs["optimised"] < 0.8 * errs[run["base_grid"]], errs


def test_saved_grid_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLVERZOO_GRIDS", str(tmp_path))
    vp, flow = sz.get_schedule("vp"), sz.get_schedule("flow")
    with pytest.raises(GridError, match="pass key=NAME"):
        sz.get_grid("optimised")(vp, 4)
    with pytest.raises(GridError, match="no optimised grid 'nope'.*optimise-grid"):
        sz.get_grid("optimised")(vp, 4, key="nope")
    with pytest.raises(GridError, match="must be a non-empty name"):
        sz.get_grid("optimised")(vp, 4, key="../etc")
    optimise_grid("gmm", "dpmpp_2m", [3], n=16, max_evals=5, key="small", out_dir=tmp_path, log=lambda *_: None)
    assert len(sz.get_grid("optimised")(vp, 3, key="small")) == 4
    with pytest.raises(GridError, match="has no 5-step grid"):
        sz.get_grid("optimised")(vp, 5, key="small")
    with pytest.raises(GridError, match="was made for schedule"):
        sz.get_grid("optimised")(flow, 3, key="small")
    with pytest.raises(ValueError, match="deterministic fixed-step solver"):
        optimise_grid("gmm", "ddpm", [3], n=8, max_evals=2, key="x", out_dir=tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(GridError, match="unreadable"):
        sz.get_grid("optimised")(vp, 3, key="broken")


def test_shipped_grids_load_for_their_backbones():
    from solverzoo.backbone import load_backbone

    g = sz.get_grid("optimised")(load_backbone("gmm").model.schedule, 10, key="gmm-dpmpp_2m-none")
    assert len(g) == 11 and torch.all(g[1:] < g[:-1])


def test_decoded_space_equals_latent_space_when_decoding_is_the_identity(tmp_path):
    # the mixture's decoder is the identity: both spaces must pick the same grid
    kw = dict(n=32, max_evals=30, out_dir=tmp_path, log=lambda *_: None)
    _, lat = optimise_grid("gmm", "dpmpp_2m", [3], key="lat", **kw)
    _, dec = optimise_grid("gmm", "dpmpp_2m", [3], key="dec", space="decoded", **kw)
    assert lat["grids"]["3"] == dec["grids"]["3"] and "decoded space" in dec["criterion"]
    with pytest.raises(ValueError, match="space must be"):
        optimise_grid("gmm", "dpmpp_2m", [3], key="bad", space="pixels", **kw)
