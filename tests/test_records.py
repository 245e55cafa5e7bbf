"""Records are validated against a declared schema before they count as done; the table is built
only from valid records, atomically, and a failed build leaves no stale table that looks current."""
import json
import math

import pandas as pd
import pytest

from solverzoo.bench import records as R


def make_record(**over):
    cell = {"backbone": "gmm", "backbone_weights": "analytic-seed0", "solver": "euler", "solver_options": {},
            "grid": "logsnr", "grid_options": {}, "steps": 4, "guidance": "cfg", "scale": 4.0, "n_samples": 64,
            "seed_set": 0, "metrics": {"fid": True, "bootstrap": 20}}
    rec = dict(cell, config_hash=R.config_hash(cell), status="ok", nfe=8, wall_s=0.5, fid=1.2, fid_ci_low=1.0,
               fid_ci_high=1.5, kid=0.01, clip_score=None, prompt_accuracy=0.9, warnings=[], error=None,
               cache="none", backbone_evals=8.0)
    rec.update(over)
    return rec


def write(d, rec, name=None):
    (d / "records").mkdir(parents=True, exist_ok=True)
    p = d / "records" / f"{name or rec['config_hash']}.json"
    p.write_text(json.dumps(rec) if not isinstance(rec, str) else rec)
    return p


def test_a_valid_record_passes_and_new_metric_columns_are_allowed():
    assert R.validate_record(make_record())
    rec = make_record(err_converged=0.01, psnr_converged_db=31.5, fd_converged=None, fid_inf=0.3, kid_ci_low=0.0,
                      something_new="text", another={"a": 1}, err_converged_note="stochastic solver: no ODE solution",
                      fid_inf_ci_method="bootstrap, re-centred")
    assert R.validate_record(rec, rec["config_hash"])
    failed = make_record(status="failed", nfe=None, error="ValueError: boom")
    for k in ("wall_s", "fid", "prompt_accuracy", "warnings"):
        failed.pop(k)
    assert R.validate_record(failed)


@pytest.mark.parametrize("change,fragment", [
    ({"__only__": True}, "missing field(s)"),
    ({"prompt_accuracy": 7.5}, "'prompt_accuracy' = 7.5 is not a number in [0, 1]"),
    ({"nfe": -3}, "'nfe' = -3 is not a positive integer"),
    ({"nfe": 2.5}, "'nfe' = 2.5 is not a positive integer"),
    ({"fid": "banana"}, "'fid' = 'banana' is not a finite number >= 0"),
    ({"fid": -1.0}, "'fid' = -1.0"),
    ({"steps": "ten"}, "'steps' = 'ten' is not a positive integer"),
    ({"steps": True}, "'steps' = True"),
    ({"status": "done"}, "'status' = 'done'"),
    ({"fid_inf": "x"}, "'fid_inf' = 'x'"),
    ({"err_converged_rms": [1, 2]}, "'err_converged_rms'"),
    ({"fid_ci_low": 2.0, "fid_ci_high": 1.0}, "fid_ci_low 2.0 > fid_ci_high 1.0"),
    ({"scale": 8.0}, "is not the hash of the record's own config"),
    ({"status": "failed", "error": None}, "a failed record must say why"),
])
def test_invalid_records_are_refused(change, fragment):
    rec = make_record()
    if change.pop("__only__", False):
        rec = {"config_hash": rec["config_hash"], "status": "ok"}
    rec.update(change)
    with pytest.raises(R.RecordError) as e:
        R.validate_record(rec)
    assert fragment in str(e.value)


def test_hash_must_match_the_file_name(tmp_path, capsys):
    rec = make_record()
    p = write(tmp_path, rec, name="0123456789abcdef")
    assert R.read_record(p) is None
    err = capsys.readouterr().err
    assert f"invalid record {p}" in err and "does not match the file name" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["{not json", '{"fid": NaN}', "[1, 2]", "\xff\xfe"])
def test_unreadable_records_are_reported_in_one_line(tmp_path, capsys, text):
    p = tmp_path / "records"
    p.mkdir()
    f = p / "0123456789abcdef.json"
    f.write_bytes(text.encode("latin-1"))
    assert R.read_record(f) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0]


def test_table_holds_only_valid_records_and_is_written_atomically(tmp_path, capsys):
    good = make_record()
    write(tmp_path, good)
    bad = make_record(solver="heun")
    bad["config_hash"] = R.config_hash(R.record_config(bad))
    bad["prompt_accuracy"] = 7.5
    write(tmp_path, bad)
    write(tmp_path, make_record(steps="ten"), name="aaaaaaaaaaaaaaaa")
    write(tmp_path, {"config_hash": "bbbbbbbbbbbbbbbb", "status": "ok"}, name="bbbbbbbbbbbbbbbb")
    df = R.build_table(tmp_path)
    assert list(df.solver) == ["euler"] and len(df) == 1
    assert "invalid record" in capsys.readouterr().err
    assert (tmp_path / "results.parquet").is_file() and not list(tmp_path.glob(".*.tmp"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results.parquet"), df)
    # new numeric metric columns reach the table as numbers
    rec = make_record(solver="dpmpp_2m", err_converged=0.25)
    rec["config_hash"] = R.config_hash(R.record_config(rec))
    write(tmp_path, rec)
    df = R.build_table(tmp_path)
    assert df.err_converged.dtype.kind == "f" and math.isnan(df.err_converged[df.solver == "euler"].iloc[0])


def test_a_failed_table_build_removes_the_stale_table_and_report(tmp_path, monkeypatch):
    write(tmp_path, make_record())
    R.build_table(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.md").write_text("old report")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(R.ResultsError, match="could not build the table.*disk full.*STALE"):
        R.build_table(tmp_path)
    assert not (tmp_path / "results.parquet").exists() and not (tmp_path / "results.csv").exists()
    assert not (tmp_path / "report" / "index.md").exists()
    assert "disk full" in R.stale_reason(tmp_path)
    monkeypatch.undo()
    R.build_table(tmp_path)  # a good build clears the marker
    assert R.stale_reason(tmp_path) is None and (tmp_path / "results.parquet").is_file()


def test_read_only_builds_write_nothing(tmp_path):
    write(tmp_path, make_record())
    with R.read_only():
        R.build_table(tmp_path)
    assert not (tmp_path / "results.parquet").exists()


def test_a_sweep_recomputes_invalid_records_lost_arrays_and_a_corrupt_reference_cache(tmp_path):
    """End to end on the fast backbone: a tampered record, a deleted features/ folder and a
    damaged reference-statistics cache are each detected, said in one line, and recomputed, with
    values identical to the first run."""
    import os
    import subprocess
    import sys

    args = ["backbone=gmm", "sweep=quick", "sweep.grids=[default]", "sweep.steps=[4,8]", "metrics.bootstrap=20",
            "progress=false", f"results_dir={tmp_path}/r/gmm"]

    def bench():
        return subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = bench()
    assert first.returncode == 0, first.stderr[-2000:]
    r = tmp_path / "r" / "gmm"
    before = pd.read_parquet(r / "results.parquet")
    recs = sorted((r / "records").glob("*.json"))
    tampered = json.loads(recs[0].read_text())
    tampered["prompt_accuracy"] = 7.5
    recs[0].write_text(json.dumps(tampered))
    for f in (r / "features").glob("*.safetensors"):
        if f.stem == json.loads(recs[1].read_text())["config_hash"]:
            f.unlink()
    caches = list((tmp_path / "r" / "cache").glob("reference-*.safetensors"))
    assert caches
    caches[0].write_bytes(b"\xff" * 64)  # SafetensorError: header too large
    again = bench()
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"invalid record {recs[0]}: field 'prompt_accuracy' = 7.5" in again.stderr
    assert "1 finished cell(s) lost their per-sample arrays" in again.stderr
    assert "corrupt reference-statistics cache" in again.stderr
    assert "2 already done, 2 to run" in again.stdout
    after = pd.read_parquet(r / "results.parquet")
    cols = ["config_hash", "fid", "fid_ci_low", "fid_ci_high", "kid", "prompt_accuracy", "nfe", "median_error"]
    pd.testing.assert_frame_equal(before[cols], after[cols])
    assert all(R.read_record(p) for p in recs)
