"""The benchmark harness on the video backbones (CI's quick sweep on video): 5-D states, clip
features (FVD-style Fréchet distance), motion-aware prompt accuracy, errors against the converged
solve, a cache, and thumbnails of frames, through the same code path as the image backbones."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("solverzoo.models.nets.video_dit")

# CI-sized: 24 clips, a 256-clip reference; the quick preset's two solvers, cfg 4, teacache.
VIDEO_QUICK = ["sweep=quick", "sweep.n_samples=24", "sweep.steps=[3,6]", "sweep.grids=[default]", "metrics.bootstrap=20",
               "metrics.reference.n=256", "metrics.kid_subset_size=24", "metrics.floor_fid_inf_n=256",
               "metrics.converged.steps=8", "progress=false", "batch_size=24"]


def bench(*args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("backbone", ["shapes-video"])
def test_quick_sweep_on_a_video_backbone(tmp_path, backbone):
    out = bench(f"backbone={backbone}", *VIDEO_QUICK, f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    # 2 solvers x 2 step counts x (no cache, teacache)
    assert len(df) == 8 and (df.status == "ok").all(), df[["solver", "steps", "cache", "status", "error"]]
    assert df.fid.notna().all() and (df.fid_ci_low <= df.fid).all() and (df.fid <= df.fid_ci_high).all()
    assert all(json.loads(f)["name"] == "shapes-video-video-classifier" for f in df.feature)  # stored as JSON
    assert df.prompt_accuracy.between(0, 1).all() and df.clip_score.isna().all()
    assert all("clip_score does not apply to the shapes video world" in str(ws) for ws in df.warnings)
    ode = df[df.cache == "none"]
    assert ode.err_converged.notna().all() and ode.psnr_converged.notna().all() and ode.fd_converged.notna().all()
    for _, g in ode.groupby("solver"):  # more steps: closer to the converged solve of the same ODE
        e = g.sort_values("steps").err_converged.to_numpy()
        assert (np.diff(e) < 0).all(), g[["solver", "steps", "err_converged"]]
    cached = df[df.cache != "none"]
    assert (cached.backbone_evals <= cached.nfe).all()
    # thumbnails: 4 clips, one row of 8 frames each (32x32 frames, 2-pixel padding)
    from PIL import Image

    w, h = Image.open(next((tmp_path / "r" / "samples").glob("*.png"))).size
    assert (w, h) == (8 * 34 + 2, 4 * 34 + 2)
    floor = json.loads((tmp_path / "r" / "floor.json").read_text())
    assert floor["source"].startswith("shapes-video world") and floor["n_fid_inf"] == 256
    assert (tmp_path / "r" / "report" / "index.md").is_file()
