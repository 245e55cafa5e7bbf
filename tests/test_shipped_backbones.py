"""The shipped backbones load after install, sample recognisable images, and run the `quick`
sweep end to end."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import solverzoo as sz
from solverzoo.backbone import Backbone, load_backbone
from solverzoo.bench.generate import UnmetNeedsError, generate
from solverzoo.models.nets.classifier import matches
from solverzoo.models.worlds import ShapesWorld, parse_caption


@pytest.fixture(scope="module", params=["shapes-flow", "shapes-eps"])
def bb(request):
    return load_backbone(request.param)


def test_backbone_follows_prompts(bb):
    """With CFG and 20 DPM-Solver++ steps, most held-out captions are drawn correctly (exact
    match of count, shapes, colours and positions by the attribute classifier); unguided
    sampling is worse. Thresholds sit well below the measured values on the model cards."""
    _, caps, _ = ShapesWorld(909).batch(0, 48)
    out = generate(bb, caps, solver="dpmpp_2m", steps=20, guidance="cfg", scale=4.0, seeds=range(48))
    assert out.images.shape == (48, 3, 32, 32) and out.nfe == 40
    acc = np.mean([matches(parse_caption(c), p) for c, p in zip(caps, bb.classifier.predict(out.images))])
    assert acc >= 0.5, acc


def test_generation_is_seeded_and_batch_independent(bb):
    caps = ["a large red circle at the top left", "a small blue square beside a green triangle"] * 2
    a = generate(bb, caps, steps=6, seeds=[1, 2, 3, 4], batch_size=4).latents
    b = generate(bb, caps[:1], steps=6, seeds=[1], batch_size=1).latents
    assert torch.equal(generate(bb, caps, steps=6, seeds=[1, 2, 3, 4], batch_size=4).latents, a)
    torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=1e-5)


def test_sample_cli_writes_a_grid(tmp_path):
    out = subprocess.run([sys.executable, "-m", "solverzoo.cli", "sample", "--prompt", "a large yellow square at the center",
                          "--steps", "8", "--n", "4", "--out", str(tmp_path / "g.png")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "g.png").stat().st_size > 0 and "NFE per sample: 16" in out.stdout and "wall time" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "solverzoo.cli", "sample", "--backbone", "shapes-xl", "--prompt", "x"],
                         capture_output=True, text=True, timeout=300)
    listed = ("Registered backbones: diffusers, digits, gmm, shapes-eps, shapes-flow, shapes-flow-clip, shapes-video, "
              "shapes-video-ar, shapes-video-frames")
    assert bad.returncode == 2 and listed in bad.stderr


def test_unmet_needs_are_refused_before_sampling(gmm):
    flow = sz.get_schedule("flow")
    bb = Backbone("eps-on-flow", gmm.model(flow, "epsilon"), gmm.conditioner(), (4,), lambda z: z, "flow_shift")
    with pytest.raises(UnmetNeedsError, match="needs x0 at the first grid time, where alpha = 0"):
        generate(bb, [0, 1], solver="dpmpp_2m", steps=4)


def test_quick_sweep_on_the_default_backbone(tmp_path):
    # a 2,000-image reference keeps the test CI-sized (the default, 50,000, takes ~150 s to build once)
    out = subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", "sweep=quick", "progress=false",
                          "metrics.reference.n=2000", f"results_dir={tmp_path}/r"], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    # 2 solvers x (default, optimised) grids x 2 step counts x (no cache, TeaCache)
    assert len(df) == 16 and (df.status == "ok").all() and df.backbone.eq("shapes-flow").all()
    assert set(df.grid) == {"flow_shift", "optimised"} and set(df.cache) == {"none", "teacache"}
    cached = df[df.cache == "teacache"]
    assert (cached.backbone_evals <= cached.nfe).all() and (df.flops_per_sample > 0).all()
    assert cached.delta_fid.notna().all()  # paired with the uncached twin
    index = (tmp_path / "r" / "report" / "index.md").read_text()
    assert "## Caching" in index and "## Optimised grids" in index
    assert df.fid.notna().all() and df.prompt_accuracy.notna().all() and df.kid.notna().all()
    rec = json.loads(next((tmp_path / "r" / "records").glob("*.json")).read_text())
    assert rec["feature"]["name"] == "shapes-attribute-classifier" and rec["reference"]["n"] == 2000
    assert any("N=64 is below" in w for w in rec["warnings"])  # small N is flagged in the row
    assert rec["clip_model"].startswith("shapes-clip") and df.clip_score.notna().all()
    assert (tmp_path / "r" / "report" / "grid_shapes-flow.png").exists()
