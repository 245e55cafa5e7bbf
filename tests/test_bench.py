"""The benchmark harness end to end on the fast analytic backbone (the shapes backbones are
exercised by test_shipped_backbones.py): sweeps, resume, SIGKILL safety, failures, launchers,
2-process evaluation, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from solverzoo.bench.metrics import frechet, stats
from solverzoo.bench.records import COLUMNS

# the quick preset pinned to one grid and two step counts: these tests are about the harness itself.
# metrics.reference.n=2000: the default 50,000-sample reference costs ~30 s per fresh cache on the
# mixture (drawn one sample at a time); the harness tests do not need its vanishing floor
QUICK = ["backbone=gmm", "sweep=quick", "sweep.grids=[default]", "sweep.steps=[4,8]", "metrics.bootstrap=20", "progress=false",
         "metrics.reference.n=2000"]


def bench(*args, cwd=None, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def test_quick_sweep_writes_table_and_report(tmp_path):
    out = bench(*QUICK, f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-2:]
    assert last[0] == f"table: {tmp_path}/r/results.parquet" and last[1] == f"report: {tmp_path}/r/report/index.md"
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert set(COLUMNS) <= set(df.columns) and len(df) == 4 and (df.status == "ok").all()
    assert sorted(df.nfe) == [8, 8, 16, 16]  # CFG: 2 evaluations per step
    assert df.fid.notna().all() and (df.fid_ci_low <= df.fid_ci_high).all() and df.clip_score.isna().all()
    assert (tmp_path / "r" / "results.csv").exists()
    for f in ("index.md", "nfe_vs_fid.png", "nfe_vs_prompt_accuracy.png", "tradeoff.png"):
        assert (tmp_path / "r" / "report" / f).exists(), f
    # more steps -> closer to the data for the same solver (common random numbers)
    e = df[df.solver == "euler"].sort_values("steps")
    assert e.fid.iloc[1] < e.fid.iloc[0]
    # re-running skips every finished cell and leaves the records untouched
    recs = sorted((tmp_path / "r" / "records").glob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in recs]
    again = bench(*QUICK, f"results_dir={tmp_path}/r")
    assert "4 already done, 0 to run" in again.stdout
    assert [p.stat().st_mtime_ns for p in recs] == mtimes


def test_the_quick_preset_covers_an_optimised_grid_and_skips_caches_with_a_reason(tmp_path):
    out = bench("backbone=gmm", "sweep=quick", "metrics.bootstrap=20", "metrics.reference.n=2000", "progress=false",
                f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "caches ['teacache'] skipped on gmm" in out.stderr  # no transformer block stack on the analytic backbone
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert len(df) == 8 and (df.status == "ok").all() and set(df.grid) == {"logsnr", "optimised"}
    assert (df.cache == "none").all() and (df.backbone_evals == df.nfe).all()
    opt = df[df.grid == "optimised"]
    assert opt.median_error.notna().all()
    index = (tmp_path / "r" / "report" / "index.md").read_text()
    assert "## Optimised grids" in index and "optimised:gmm-dpmpp_2m-cfg4" in index
    # a sweep naming a saved grid that was made for other step counts skips those cells, saying why
    out = bench("backbone=gmm", "sweep=quick", "sweep.steps=[4]", "metrics.bootstrap=20", "metrics.reference.n=2000",
                "progress=false", f"results_dir={tmp_path}/r4")
    assert out.returncode == 0 and "has no 4-step grid" in out.stderr
    assert set(pd.read_parquet(tmp_path / "r4" / "results.parquet").grid) == {"logsnr"}


def test_sigkill_mid_sweep_then_resume(tmp_path):
    args = ["backbone=gmm", "sweep=quick", "sweep.grids=[default]", "sweep.steps=[3,5,7,9,11,13,15,17,19,21,23,25]",
            "sweep.n_samples=400",
            "metrics.bootstrap=200", "metrics.reference.n=2000", "progress=false", f"results_dir={tmp_path}/r"]
    proc = subprocess.Popen([sys.executable, "-m", "solverzoo.cli", "bench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    rec_dir = tmp_path / "r" / "records"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(rec_dir.glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(rec_dir.glob("*.json")))
    assert 3 <= done < 24, "the kill should land mid-sweep"
    out = bench(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{done} already done" in out.stdout
    recs = list(rec_dir.glob("*.json"))
    assert len(recs) == 24 and not list(rec_dir.glob(".*"))  # every cell exactly once, no partial file
    for p in recs:
        rec = json.loads(p.read_text())
        assert rec["status"] == "ok" and rec["config_hash"] == p.stem


def test_failed_cell_is_recorded_and_fail_fast_stops(tmp_path):
    # a cell failing at run time (an option value only the solver checks): written, reported, exit 3
    failing = ["sweep.solvers=[euler,ddim]", "+sweep.solver_options={ddim:{eta:5}}"]
    out = bench(*QUICK, *failing, f"results_dir={tmp_path}/r")
    assert out.returncode == 3, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-3:]
    assert last[0] == "solverzoo: 2 of 4 cells failed:"
    assert last[1] == "solverzoo:   2 x ValueError: ddim: eta must lie in [0, 1], got 5"
    assert last[2].startswith("solverzoo: exit 3")
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    bad = df[df.solver == "ddim"]
    assert len(bad) == 2 and (bad.status == "failed").all() and bad.error.str.contains("eta must lie").all()
    assert (df[df.solver == "euler"].status == "ok").all()
    assert "Failed cells" in (tmp_path / "r" / "report" / "index.md").read_text()
    kept = bench(*QUICK, *failing, "--keep-going", f"results_dir={tmp_path}/r")  # retried, fail again, exit 0
    assert kept.returncode == 0 and "2 already done, 2 to run" in kept.stdout and "keep_going=true: exit 0" in kept.stdout
    ff = bench(*QUICK, "sweep.solvers=[no_such_solver]", "--fail-fast", f"results_dir={tmp_path}/ff")
    assert ff.returncode != 0 and "unknown solver 'no_such_solver'" in ff.stderr


def test_corrupt_record_is_reported_and_recomputed(tmp_path):
    assert bench(*QUICK, f"results_dir={tmp_path}/r").returncode == 0
    victim = sorted((tmp_path / "r" / "records").glob("*.json"))[0]
    victim.write_text("{not json")
    out = bench(*QUICK, f"results_dir={tmp_path}/r")
    assert f"invalid record {victim}" in out.stderr and "3 already done, 1 to run" in out.stdout
    assert json.loads(victim.read_text())["status"] == "ok"


def test_unknown_config_option_lists_the_valid_ones():
    out = bench("sweep=nope")
    assert out.returncode != 0 and "Could not find 'sweep/nope'" in out.stderr and "quick" in out.stderr


def test_report_on_a_directory_that_is_not_results(tmp_path):
    out = subprocess.run([sys.executable, "-m", "solverzoo.cli", "report", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "is not a solverzoo results directory" in out.stderr


def test_empty_reference_folder_skips_fid_with_a_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    out = bench(*QUICK, "metrics.reference.kind=folder", f"metrics.reference.path={tmp_path}/empty", f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert df.fid.isna().all() and df.prompt_accuracy.notna().all()
    assert df.warnings.str.contains("holds no images").all()


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_multirun_launchers(tmp_path, launcher):
    plugin = {"joblib": "hydra_plugins.hydra_joblib_launcher",
              "submitit_local": "hydra_plugins.hydra_submitit_launcher"}[launcher]
    pytest.importorskip(plugin, reason=f"the {launcher} launcher is in the 'launchers' extra "
                                       "(pip install 'solverzoo[launchers]')")
    out = bench("-m", f"hydra/launcher={launcher}", *QUICK, "sweep.steps=[4],[8]", f"results_dir={tmp_path}/r",
                f"hydra.sweep.dir={tmp_path}/multirun", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert sorted(df.steps) == [4, 4, 8, 8] and (df.status == "ok").all()


def test_two_processes_give_the_same_fid(tmp_path):
    common = [*QUICK, "sweep.solvers=[dpmpp_2m]", "sweep.steps=[6]", "sweep.n_samples=64"]
    one = bench(*common, f"results_dir={tmp_path}/one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "solverzoo.bench.app", *common, f"results_dir={tmp_path}/two"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (pd.read_parquet(tmp_path / d / "results.parquet") for d in ("one", "two"))
    rec_b = json.loads(next((tmp_path / "two" / "records").glob("*.json")).read_text())
    assert rec_b["ranks"] == 2
    for col in ("fid", "fid_ci_low", "fid_ci_high", "fid_inf", "kid", "kid_ci_low", "prompt_accuracy", "err_converged",
                "fd_converged"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-6, err_msg=col)


def test_frechet_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from solverzoo.bench.metrics import _identity_module

    g = np.random.default_rng(0)
    x, y = g.normal(size=(300, 6)), g.normal(loc=0.3, size=(200, 6)) * 1.2
    fid = FrechetInceptionDistance(feature=_identity_module(6), normalize=True)
    fid.update(torch.from_numpy(x), real=True)
    fid.update(torch.from_numpy(y), real=False)
    assert abs(float(fid.compute()) - frechet(*stats(x), *stats(y))) < 1e-6


@pytest.mark.parametrize("n", [40, 400])
def test_bootstrap_fid_equals_the_direct_formula(n):
    from solverzoo.bench.metrics import Reference, bootstrap_fid

    g = np.random.default_rng(1)
    real, fake = g.normal(size=(500, 64)), g.normal(loc=0.2, size=(n, 64))
    mu, sig = stats(real)
    ref = Reference({}, mu, sig, 500, torch.from_numpy(real))
    fast = bootstrap_fid(fake, ref, 5, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    slow = []
    for _ in range(5):
        m, s = stats(fake[rng.integers(0, n, n)])
        slow.append(frechet(m, s, mu, sig))
    # rank-deficient covariances (n < d) leave ~1e-8 relative noise from clipping tiny eigenvalues
    np.testing.assert_allclose(fast, slow, rtol=1e-6)


def test_exact_metrics_and_seed_set_intervals(tmp_path):
    out = bench(*QUICK, "sweep.seed_sets=[0,1,2]", "sweep.solvers=[dpmpp_2m,ddpm]", f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    ode = df[df.solver == "dpmpp_2m"].sort_values("steps")
    assert ode.median_error.notna().all() and (ode.mode_flip_rate >= 0).all()
    e4, e8 = (ode[ode.steps == s].median_error.astype(float).mean() for s in (4, 8))
    assert e8 < e4  # converges towards the reference solve of the same guided ODE (pre-asymptotic at 4-8 steps)
    assert df[df.solver == "ddpm"].median_error.isna().all()  # no ODE reference for an SDE sampler
    assert df.sliced_wasserstein.notna().all()
    report = (tmp_path / "r" / "report" / "index.md").read_text()
    assert "## Across seed sets" in report and "## Exact metrics (analytic backbone)" in report


def test_reused_torchmetrics_objects_give_the_fresh_objects_numbers():
    # the harness keeps one FID / KID object per reference (real side filled once) across cells
    from solverzoo.bench.metrics import Reference, fid_kid

    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 16, generator=g, dtype=torch.float64)
    fakes = [torch.randn(64, 16, generator=g) + 0.1 * i for i in range(3)]
    ref = Reference({}, real.numpy().mean(0), np.cov(real.numpy(), rowvar=False), 500, real.float(), [])
    reused = [fid_kid(f, ref, bootstrap=50, ci=0.95, kid_subset=100) for f in fakes]
    for f, a in zip(fakes, reused):
        ref.metrics.clear()  # a fresh object each time
        b = fid_kid(f, ref, bootstrap=50, ci=0.95, kid_subset=100)
        assert a == b
    assert reused[0]["fid"] < reused[2]["fid"]


def test_seed_policy_is_pinned():
    # every recorded number depends on these: changing one silently changes all records
    from solverzoo import seeds

    assert seeds.sample_seeds(2, [0, 5]) == [2_000_006, 2_000_011]
    assert seeds.step_noise_seed(3) == 10_000_022
    assert seeds.prompt_seed(909) == seeds.floor_seed(909) == 910
    assert seeds.exact_sample_seed(4) == 11 and seeds.calibration_seeds(2) == [2_000_000_011, 2_000_000_012]


def test_a_backbone_without_a_world_is_refused_with_a_fix(gmm, tmp_path):
    from solverzoo.backbone import Backbone, World
    from solverzoo.bench.reference_set import load_reference

    bb = Backbone("bare", gmm.model(__import__("solverzoo").get_schedule("vp")), gmm.conditioner(), (4,), lambda z: z)
    mcfg = {"reference": {"kind": "world", "seed": 0, "n": 4, "path": None}}
    with pytest.raises(ValueError, match="carries no World.*world=MyWorld"):
        load_reference(bb, mcfg, None, tmp_path)
    bb.world = World()
    with pytest.raises(NotImplementedError, match="must implement prompts"):
        load_reference(bb, mcfg, None, tmp_path)
