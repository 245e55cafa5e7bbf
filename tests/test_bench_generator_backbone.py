"""The benchmark harness on a backbone that is not a diffusion model (``Backbone.generator``): cells of
the reserved sampler ``autoregressive`` beside solver cells, on a fast in-process stand-in (a
Gaussian mixture's points sampled "token by token" by a toy generator and decoded into tiny clips),
plus one run of the real ``shapes-video-ar`` where its weights are present."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import solverzoo as sz
from solverzoo import hookimpl
from solverzoo.backbone import Backbone, Features, load_backbone
from solverzoo.bench import autoregressive as ar
from solverzoo.bench.cell_spec import Cell
from solverzoo.bench.records import read_arrays
from solverzoo.bench.validate import ConfigError, validate_config
from solverzoo.cli import main
from solverzoo.testbeds import GaussianMixture
from solverzoo_builtin.backbones import MixtureWorld

NAME, TOKENS, FRAMES = "gmm-ar-standin", 6, 2


def to_clips(z: torch.Tensor) -> torch.Tensor:
    """Mixture points ``(B, 4)`` -> tiny clips ``(B, 2, 3, 4, 4)`` in [-1, 1]; frame 0, channel 0, row 0
    holds the point (squashed), so the features below recover it."""
    x = torch.tanh(z.float() / 4)
    clip = x[:, None, None, None, :].expand(len(z), FRAMES, 3, 4, 4).clone()
    clip[:, 1] *= 0.5
    return clip


class ClipWorld(MixtureWorld):
    """The mixture world seen through :func:`to_clips` (5-D decoded samples, like a video world)."""

    name, exact = "gmm-clips", False

    def reference(self, seed, n):
        return to_clips(super().reference(seed, n))

    def samples_for(self, prompts, seed):
        return to_clips(super().samples_for(prompts, seed))

    def features(self):
        return Features("gmm-clip coordinates", "none", 4, lambda v: v[:, 0, 0, 0, :].double(), images=False)

    def exact_samples(self, prompts):
        return None


class ToyGenerator:
    """Samples a mixture point per prompt with the sample's own generator (its class's exact law,
    plus noise scaled by temperature / cfg_scale), as a next-token model would token by token: ``length`` tokens,
    a forward pass per token and guidance branch."""

    length = TOKENS

    def __init__(self, mix):
        self.mix = mix

    def generate(self, prompts, generator, temperature=1.0, top_k=None, cfg_scale=1.0):
        rows = []
        for p, g in zip(prompts, generator):
            x = self.mix.sample(1, g, label=torch.tensor([int(p)]))
            rows.append(x + 0.1 * temperature / cfg_scale * torch.randn(1, 4, generator=g, dtype=torch.float64))
        passes = TOKENS * (2 if cfg_scale != 1.0 else 1)
        return torch.cat(rows).float(), {"forward_passes": passes, "flops": 1e6 * passes, "tokens": TOKENS}


def standin(device="cpu"):
    mix = GaussianMixture.default(dim=4, seed=0)
    return Backbone(NAME, None, mix.conditioner(), (4,), to_clips, "logsnr", {}, None, world=ClipWorld(mix),
                    weights_id="standin-1", generator=ToyGenerator(mix))


class Plugin:
    @hookimpl
    def register_backbones(register):
        register(standin, name=NAME)


@pytest.fixture(scope="module", autouse=True)
def registered():
    sz.registry.add_plugin(Plugin, "generator-backbone-test")
    yield
    sz.registry.remove_plugin("generator-backbone-test")


FAST = [f"backbone={NAME}", "sweep=video_ar", "sweep.n_samples=48", "metrics.bootstrap=20", "metrics.reference.n=1000",
        "metrics.floor_fid_inf_n=256", "metrics.fid_inf_boot=5", "metrics.kid_boot=20", "metrics.kid_subsets=10",
        "progress=false"]


def bench(capsys, *args):
    code = main(["bench", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_generator_backbone_sweeps_end_to_end(tmp_path, capsys):
    code, out, err = bench(capsys, *FAST, "sweep.solvers=[autoregressive,euler]",
                           "sweep.guidance=[{name:none,scale:1.0},{name:cfg,scale:3.0},{name:apg,scale:3.0}]",
                           "+sweep.caches=[none,{name:teacache,threshold:0.05}]", "sweep.steps=[4,8]", "batch_size=16",
                           f"results_dir={tmp_path}/a")
    assert code == 0, err[-3000:]
    assert f"solvers ['euler'] skipped on {NAME}: it is not a diffusion model" in err
    assert f"caches ['teacache'] skipped on {NAME}" in err and f"guidance apg skipped for autoregressive on {NAME}" in err
    assert f"recorded as grid none and steps {TOKENS} (tokens per sample)" in err
    df = pd.read_parquet(tmp_path / "a" / "results.parquet")
    assert len(df) == 2 and (df.status == "ok").all() and set(df.solver) == {"autoregressive"}
    assert (df.grid == "none").all() and (df.steps == TOKENS).all() and (df.cache == "none").all()
    df = df.set_index("guidance")
    assert df.nfe["none"] == TOKENS and df.nfe["cfg"] == 2 * TOKENS  # forward passes per sample
    assert (df.backbone_evals == df.nfe).all() and (df.flops_per_sample == 1e6 * df.nfe).all()
    assert (df.tokens_per_sample == TOKENS).all()
    for col in ("err_converged", "psnr_converged", "fd_converged"):
        assert df[col].isna().all()
        assert all(f"{col}: autoregressive: no ODE to solve" in w for w in df.warnings), col
    assert df.fid.notna().all() and df.kid.notna().all() and (df.prompt_accuracy > 0.8).all()
    assert json.loads(df.solver_options["cfg"]) == {"temperature": 1.0, "top_k": None}
    rep = tmp_path / "a" / "report"
    index = (rep / "index.md").read_text()
    # the cells' series is the sampler alone (a generator has no time grid to name)
    assert "| autoregressive |" in index and "autoregressive (none)" not in index and (rep / "nfe_vs_fid.png").is_file()
    assert "cost = network forward passes per sample" in index
    assert (rep / f"grid_{NAME}.png").is_file() and len(list((tmp_path / "a" / "samples").glob("*.png"))) == 2
    # a second run in a fresh results directory with another batch size: the same samples, the same numbers
    code, _, err = bench(capsys, *FAST, "sweep.guidance=[{name:none,scale:1.0},{name:cfg,scale:3.0}]", "batch_size=7",
                         f"results_dir={tmp_path}/b")
    assert code == 0, err[-3000:]
    again = pd.read_parquet(tmp_path / "b" / "results.parquet").set_index("guidance")
    assert sorted(again.config_hash) == sorted(df.config_hash)
    for col in ("fid", "kid", "prompt_accuracy", "nfe"):
        assert (again[col] == df[col]).all(), col
    for h in df.config_hash:
        a, b = read_arrays(tmp_path / "a", h), read_arrays(tmp_path / "b", h)
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["hits"], b["hits"])


def test_sample_i_depends_only_on_its_seed():
    bb = load_backbone(NAME)
    prompts = [i % 3 for i in range(10)]
    seeds = sz.seeds.sample_seeds(0, range(10))
    whole = ar.generate(bb, prompts, seeds=seeds, batch_size=10, cfg_scale=3.0)
    small = ar.generate(bb, prompts, seeds=seeds, batch_size=3, cfg_scale=3.0)
    odd = ar.generate(bb, prompts[1::2], seeds=seeds[1::2], batch_size=4, cfg_scale=3.0)  # rank 1 of 2
    assert torch.equal(whole.latents, small.latents) and torch.equal(whole.latents[1::2], odd.latents)
    assert whole.images.shape == (10, FRAMES, 3, 4, 4) and whole.nfe == 2 * TOKENS and whole.tokens == TOKENS
    assert whole.times is None and whole.reference is None


METRICS = {"fid": True, "kid": True, "prompt_accuracy": True, "clip_score": False, "feature": "domain", "reference": {},
           "resize": None, "antialias": True, "bootstrap": 20, "ci": 0.95, "kid_subset_size": 8, "clip_model": None,
           "inception_weights": None, "fid_inf_boot": 5, "fid_inf_sizes": 4, "kid_subsets": 4, "kid_boot": 5,
           "kid_reference_n": 64, "converged": {}}


def _cfg(solvers):
    sw = {"name": "t", "solvers": solvers, "grids": ["default"], "steps": [4, 8], "guidance": [{"name": "cfg", "scale": 3.0}],
          "n_samples": 8, "seed_sets": [0], "caches": ["none"]}
    return {"sweep": sw, "metrics": dict(METRICS)}


def test_mismatched_solver_and_backbone_pairs_are_skipped_with_the_reason():
    from solverzoo.bench.sweep import expand

    skipped: list = []
    cells = expand(_cfg(["autoregressive", "euler"]), load_backbone("gmm"), skipped)
    assert {c.solver for c in cells} == {"euler"} and len(cells) == 2
    assert any(s.startswith("solver autoregressive skipped on gmm: it samples a backbone's generator") for s in skipped)
    skipped = []
    cells = expand(_cfg(["euler", "dpmpp_2m", "autoregressive"]), load_backbone(NAME), skipped)
    assert [(c.solver, c.grid, c.steps) for c in cells] == [("autoregressive", "none", TOKENS)]
    assert any(s.startswith(f"solvers ['euler', 'dpmpp_2m'] skipped on {NAME}") for s in skipped)
    assert expand(_cfg(["euler"]), load_backbone(NAME), []) == []
    # a mismatched cell that reaches the runner anyway is an error saying why, not a crash inside a solver
    bad = Cell(backbone=NAME, backbone_weights="w", solver="euler", solver_options={}, grid="none", grid_options={}, steps=4,
               guidance="none", scale=1.0, n_samples=8, seed_set=0, metrics={})
    with pytest.raises(ValueError, match=f"solvers \\['euler'\\] cannot run on {NAME}"):
        ar.is_generator_cell(bad, load_backbone(NAME))


def test_a_sweep_with_only_mismatched_solvers_stops_with_a_user_error(tmp_path, capsys):
    code, _, err = bench(capsys, *FAST, "sweep.solvers=[euler]", f"results_dir={tmp_path}/r")
    assert code == 2 and "the sweep has no cells left to run" in err and "solvers ['euler'] skipped" in err
    code, _, err = bench(capsys, "backbone=gmm", "sweep=video_ar", f"results_dir={tmp_path}/g")
    assert code == 2 and "solver autoregressive skipped on gmm" in err


@pytest.mark.parametrize("opts,fragment", [
    ({"temperature": -0.5}, "temperature=-0.5 must be a number >= 0"),
    ({"temperature": "hot"}, "temperature='hot' must be a number >= 0"),
    ({"top_k": 0}, "top_k=0 must be a positive integer number of tokens, or null"),
    ({"top_k": 2.5}, "top_k=2.5 must be a positive integer"),
    ({"top_k": True}, "top_k=True must be a positive integer"),
    ({"beam": 4}, "unknown option(s) ['beam']; autoregressive takes ['temperature', 'top_k']"),
])
def test_autoregressive_options_are_validated(opts, fragment):
    flags = {k: False for k in ("fail_fast", "progress", "keep_going", "retry_failed", "plan_only")}
    cfg = {"backbone": {"name": NAME}, "batch_size": 8, "device": "cpu", **flags, **_cfg(["autoregressive"]),
           "metrics": {**METRICS, "reference": {"kind": "world", "n": 64, "seed": 1}}}
    validate_config(cfg, paths=False)  # the reserved name is accepted as a solver
    cfg["sweep"]["solver_options"] = {"autoregressive": opts}
    with pytest.raises(ConfigError, match="^sweep.solver_options.autoregressive: ") as exc:
        validate_config(cfg, paths=False)
    assert fragment in str(exc.value)
    cfg["sweep"]["solver_options"] = {"autoregressive": {"temperature": 0, "top_k": 5}}
    validate_config(cfg, paths=False)


def test_bench_rejects_bad_options_before_loading_anything(tmp_path, capsys):
    code, _, err = bench(capsys, *FAST, "sweep.solver_options.autoregressive.temperature=-1", f"results_dir={tmp_path}/r")
    assert code == 2 and "sweep.solver_options.autoregressive: temperature=-1" in err
    assert not (tmp_path / "r" / "records").exists()


def test_the_cost_model_predicts_a_generator_sweep(tmp_path, capsys):
    code, _, err = bench(capsys, *FAST, "sweep.guidance=[{name:none,scale:1.0},{name:cfg,scale:3.0}]", "plan_only=true",
                         f"results_dir={tmp_path}/r")
    assert code == 0, err[-3000:]
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert plan["cells"] == 2 and plan["nfe_per_sample"] == 3 * TOKENS and plan["converged_groups"] == 0
    assert plan["converged_s"] == 0 and plan["unit_costs"]["eval_s"] > 0 and math.isfinite(plan["total_s"])
    assert not (tmp_path / "r" / "records").exists()


def _ar_weights():
    from solverzoo.models import weights

    try:
        return weights.resolve("shapes-video-ar")
    except Exception:  # noqa: BLE001 - not trained (yet)
        return None


def test_the_real_next_token_video_model(tmp_path):
    if _ar_weights() is None:
        pytest.skip("shapes-video-ar weights are not present (solverzoo/models/weights/shapes-video-ar.safetensors)")
    args = ["backbone=shapes-video-ar", "sweep=video_ar", "sweep.n_samples=8", "batch_size=8", "metrics.bootstrap=10",
            "metrics.reference.n=64", "metrics.kid_subset_size=8", "metrics.kid_reference_n=64",
            "metrics.floor_fid_inf_n=64", "metrics.fid_inf_boot=5", "progress=false", f"results_dir={tmp_path}/r"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True,
                         timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert len(df) == 1 and (df.status == "ok").all()
    r = df.iloc[0]
    assert r.solver == "autoregressive" and r.grid == "none" and r.steps > 1 and r.nfe == 2 * r.steps  # cfg 3: 2 rows
    assert r.backbone_evals == r.nfe and r.flops_per_sample > 0 and np.isnan(r.err_converged)
    assert np.isfinite(r.fid) and 0 <= r.prompt_accuracy <= 1
    assert (tmp_path / "r" / "report" / "grid_shapes-video-ar.png").is_file()
