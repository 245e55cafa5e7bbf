"""benchmarks/video_motion.py: the per-motion report pairs the two weights files on the same captions
and noise (so the shipped weights against themselves differ by exactly 0, clip by clip), and a
baseline that is not a VideoDiT weights file is refused with a clear message."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("solverzoo.models.nets.video_dit")
ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("video_motion", ROOT / "benchmarks" / "video_motion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_against_itself_is_paired_exactly(tmp_path):
    from solverzoo.models import weights

    vm = _script()
    shipped = str(weights.resolve("shapes-dit-video"))
    assert vm.main(["--baseline", shipped, "--n", "6", "--steps", "2", "--threads", "1", "--reps", "50",
                    "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    a, b = res["cells"]["shipped"], res["cells"]["baseline"]
    assert a["by_motion"] == b["by_motion"] and a["motion"]["value"] == b["motion"]["value"]
    d = res["paired"]["motion"]
    assert d["delta"] == 0 and d["ci_low"] == 0 and d["ci_high"] == 0 and not d["resolved"]
    assert sum(v["n"] for v in a["by_motion"].values()) == 6
    md = (tmp_path / "index.md").read_text()
    assert "N = 6 clips" in md and "| asked motion |" in md and "benchmarks/video_motion.py" in md


def test_a_baseline_that_is_not_video_dit_weights_is_refused(tmp_path):
    from solverzoo.models import weights

    vm = _script()
    with pytest.raises(SystemExit, match="no such file"):
        vm.main(["--baseline", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a VideoDiT weights file"):
        vm.main(["--baseline", str(weights.resolve("shapes-dit-flow")), "--n", "2", "--steps", "2", "--threads", "1",
                 "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()  # nothing half-written
