"""One results directory, one writer: a second sweep into a directory another sweep is writing
stops at once (exit 2) naming the other process; the first finishes with every cell once."""
import json
import os
import subprocess
import sys
import time

import pandas as pd

from solverzoo.bench.lock import ResultsLock

ARGS = ["backbone=gmm", "sweep=quick", "sweep.grids=[default]", "sweep.steps=[4,6,8,10,12,14]", "sweep.n_samples=400",
        "metrics.bootstrap=50", "progress=false"]


def test_the_lock_is_exclusive_reentrant_and_names_its_holder(tmp_path):
    with ResultsLock(tmp_path):
        with ResultsLock(tmp_path):  # the same process again: fine
            pass
        info = (tmp_path / ".lock").read_text()
        assert f"pid {os.getpid()}" in info
        other = subprocess.run([sys.executable, "-c", "import sys; from solverzoo.bench.lock import ResultsLock\n"
                                f"ResultsLock({str(tmp_path)!r}).acquire()"], capture_output=True, text=True)
        assert other.returncode != 0 and "ResultsLocked" in other.stderr and f"pid {os.getpid()}" in other.stderr
    ResultsLock(tmp_path).acquire().release()  # released: free again


def test_two_concurrent_sweeps_into_one_results_dir(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "solverzoo.cli", "bench", *ARGS, f"results_dir={r}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not ((r / ".lock").is_file() and (r / ".lock").read_text().strip()):
        time.sleep(0.05)
    assert first.poll() is None, "the first sweep ended before the second could start"
    second = subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *ARGS, f"results_dir={r}"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and "is in use by another solverzoo process" in err[0] and f"pid {first.pid} " in err[0]
    out, errs = first.communicate(timeout=600)
    assert first.returncode == 0, errs[-3000:]
    assert len(list((r / "hydra").iterdir())) == 1  # the second one created nothing, not even Hydra's run folder
    recs = [json.loads(p.read_text()) for p in (r / "records").glob("*.json")]
    df = pd.read_parquet(r / "results.parquet")
    assert len(recs) == len(df) == 12 and len({x["config_hash"] for x in recs}) == 12 and (df.status == "ok").all()
    assert not list(r.rglob("*.tmp"))
