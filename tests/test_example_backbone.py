"""A third-party backbone package (examples/solverzoo-ring), installed with pip, is evaluated
by ``solverzoo bench backbone=ring`` on its own world's terms: its prompts, reference data,
features and prompt scorer, with nothing of the shipped worlds leaking in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "solverzoo-ring"


@pytest.fixture(scope="module")
def ring_site(tmp_path_factory):
    """The example installed by pip into a temporary target directory (a real distribution with
    its entry point, outside the venv: nothing to uninstall); put it on PYTHONPATH to use it."""
    target = tmp_path_factory.mktemp("ring_site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return target


def _bench(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_third_party_backbone_runs_the_quick_sweep_on_its_own_world(ring_site, tmp_path):
    # CFG scale 0 samples the unconditional mixture: about 1 in 8 samples lands on the prompted
    # mode, so the scorer's hits are a mix of 0 and 1 that only the ring's own scorer reproduces
    out = _bench(ring_site, "backbone=ring", "sweep=quick", "sweep.guidance=[{name:cfg,scale:0.0},{name:cfg,scale:4.0}]",
                 "progress=false", f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped on ring" in out.stderr  # no transformer: the quick preset's cache is skipped, saying why
    df = pd.read_parquet(tmp_path / "r" / "results.parquet")
    assert len(df) == 8 and (df.status == "ok").all() and df.backbone.eq("ring").all()
    assert df.fid.notna().all() and df.prompt_accuracy.notna().all() and df.clip_score.isna().all()
    assert (df[df.scale == 0.0].prompt_accuracy < 0.4).all() and df[df.scale == 4.0].prompt_accuracy.max() == 1.0

    sys.path.insert(0, str(ring_site))
    try:
        import solverzoo_ring as ring
    finally:
        sys.path.remove(str(ring_site))
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "r" / "records").glob("*.json"))]
    seed = records[0]["reference"]["seed"]
    prompts = ring.RingWorld().prompts(seed + 1, records[0]["reference"]["n"])  # the harness's independent draw
    for rec in records:
        # the world's own reference set and features
        assert rec["reference"]["world"] == "ring" and rec["feature"]["name"] == "identity(ring coordinates)"
        assert rec["feature"]["num_features"] == 2
        assert "clip_score does not apply to the ring world's 2-D points" in rec["warnings"]
        assert rec["median_error"] is not None and rec["mode_flip_rate"] is not None  # its exact-metric hooks
        # its scorer: every stored hit is "the nearest mode is the prompted one", recomputed here
        from safetensors.torch import load_file

        arrays = load_file(str(tmp_path / "r" / "features" / f"{rec['config_hash']}.safetensors"))
        points, hits = arrays["features"], arrays["hits"].numpy()
        want = torch.tensor([ring.mode_of(p) for p in prompts[:len(points)]])
        assert np.array_equal(hits, (ring.nearest_mode(points) == want).numpy().astype(np.float64))
        assert rec["prompt_accuracy"] == pytest.approx(hits.mean())
        # nothing of the shapes world (its classifier, captions, CLIP) leaked into the record
        assert "shapes" not in json.dumps(rec).lower()
    floor = json.loads((tmp_path / "r" / "floor.json").read_text())
    assert floor["source"] == f"ring world, seed {seed + 1}"


def test_unknown_backbone_is_still_refused(ring_site, tmp_path):
    out = _bench(ring_site, "backbone=no-such-backbone", "sweep=quick", f"results_dir={tmp_path}/r")
    assert out.returncode != 0 and "Could not find 'backbone/no-such-backbone'" in out.stderr
    assert "ring" in out.stderr  # the stored third-party option is listed with the shipped ones
