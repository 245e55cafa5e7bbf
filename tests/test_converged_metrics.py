"""Errors against the converged solve and the low-bias FID / KID, wired into a sweep (the fast
analytic backbone): every cell of a guidance setting shares one converged solve, cached on disk;
ODE solvers' errors fall as steps grow; stochastic solvers keep only fd_converged."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from safetensors.torch import load_file

ARGS = ["backbone=gmm", "sweep=quick", "sweep.grids=[default]", "sweep.steps=[4,8,16]", "sweep.solvers=[euler,dpmpp_2m,ddpm]",
        "sweep.guidance=[{name:none,scale:1.0},{name:cfg,scale:4.0}]", "metrics.bootstrap=20", "metrics.reference.n=2000",
        "progress=false"]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_converged_columns_arrays_cache_and_monotone_errors(tmp_path):
    out = bench(*ARGS, f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    r = tmp_path / "r"
    recs = [json.loads(p.read_text()) for p in sorted((r / "records").glob("*.json"))]
    assert len(recs) == 18 and all(x["status"] == "ok" for x in recs)
    df = pd.DataFrame(recs)
    ode = df[df.solver != "ddpm"]
    for col in ("err_converged", "err_converged_ci_low", "err_converged_ci_high", "fd_converged", "fid_inf", "kid", "kid_ci_low"):
        assert ode[col].notna().all(), col
    assert (ode.err_converged_ci_low <= ode.err_converged).all() and (ode.err_converged <= ode.err_converged_ci_high).all()
    # for every ODE solver and guidance setting the error against the converged solve falls strictly with steps
    for (_, _), g in ode.groupby(["solver", "guidance"]):
        e = g.sort_values("steps").err_converged.to_numpy()
        assert (np.diff(e) < 0).all(), g[["solver", "guidance", "steps", "err_converged"]]
    # exact world: DOP853, its own error estimated, and median_error is the same per-sample median
    assert ode.converged_method.str.startswith("dop853").all() and (ode.converged_error_estimate < 1e-6).all()
    np.testing.assert_allclose(ode.median_error, ode.err_converged, rtol=0.1)  # torch median: the lower middle value
    # one converged solve per guidance setting, computed once (the other cells of it reuse it)
    assert df.converged_key.nunique() == 2
    assert sorted(df.converged_cache.value_counts().to_dict().items()) == [("memory", 16), ("miss", 2)]
    assert len(list((tmp_path / "cache").glob("converged-*.safetensors"))) == 2
    # stochastic: per-sample distances are NaN with the reason; the distribution distance stays
    sde = df[df.solver == "ddpm"]
    assert sde.err_converged.isna().all() and sde.fd_converged.notna().all()
    assert all(any("stochastic solver" in w for w in ws) for ws in sde.warnings)
    # arrays: per-sample errors per cell, the converged solve's features once
    for rec in recs:
        a = load_file(str(r / "features" / f"{rec['config_hash']}.safetensors"))
        assert a["features"].shape == (64, 4)
        if rec["solver"] != "ddpm":
            np.testing.assert_allclose(np.median(a["err"].numpy()), rec["err_converged"], rtol=1e-9)
        assert (r / "features" / f"converged-{rec['converged_key']}.safetensors").is_file()
    conv = load_file(str(r / "features" / f"converged-{recs[0]['converged_key']}.safetensors"))
    assert conv["features"].shape == (64, 4) and conv["hits"].shape == (64,)
    # the floor by the same estimators
    floor = json.loads((r / "floor.json").read_text())
    assert {"fid", "fid_inf", "fid_inf_ci_low", "fid_inf_ci_high", "kid", "kid_ci_low", "kid_ci_high"} <= set(floor)
    assert floor["reference_n"] == 2000
    # fid at the sweep's N; fid_inf (N-free) on metrics.floor_fid_inf_n real samples, where its interval is narrow
    assert floor["n"] == 64 and floor["n_fid_inf"] == 4096 and max(floor["subsample_sizes_fid_inf"]) == 4096
    assert floor["fid_inf_ci_low"] <= floor["fid_inf"] <= floor["fid_inf_ci_high"]
    # a second sweep in a new results dir beside it reads the converged solves from the disk cache
    more = bench(*ARGS[:-1], "sweep.solvers=[heun]", "progress=false", f"results_dir={tmp_path}/r2")
    assert more.returncode == 0, more.stderr[-3000:]
    recs2 = [json.loads(p.read_text()) for p in (tmp_path / "r2" / "records").glob("*.json")]
    assert {x["converged_cache"] for x in recs2} == {"hit", "memory"}
    assert {x["converged_key"] for x in recs2} == set(df.converged_key)
