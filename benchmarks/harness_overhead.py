"""Harness overhead on the `quick` sweep: the share of each cell's wall time that is not
sampling, decoding or metric feature extraction (planning, conditioning, FID / KID / bootstrap
arithmetic, record writing). Target: at most 10%.

    .venv/bin/python benchmarks/harness_overhead.py [--backbone shapes-flow] [--out benchmarks/results/harness_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="shapes-flow")
    ap.add_argument("--out", default="benchmarks/results/harness_overhead.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "solverzoo.cli", "bench", "sweep=quick", f"backbone={a.backbone}", "progress=false",
               f"results_dir={d}/r"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        recs = [json.loads(p.read_text()) for p in sorted(Path(d, "r", "records").glob("*.json"))]
    failed = [r for r in recs if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} cell(s) failed, e.g. {failed[0]['error']}; fix them before measuring overhead")
    rows = [{k: r[k] for k in ("solver", "steps", "nfe", "wall_s", "sampling_s", "decode_s", "metric_s", "harness_s")}
            for r in recs]
    for r in rows:
        r["overhead_share"] = r["harness_s"] / r["wall_s"]
    total = sum(r["harness_s"] for r in rows) / sum(r["wall_s"] for r in rows)
    worst = max(r["overhead_share"] for r in rows)
    print(f"{'solver':<10} {'steps':>5} {'wall s':>8} {'sampling':>9} {'decode':>7} {'metrics':>8} {'harness':>8} {'share':>6}")
    for r in rows:
        print(f"{r['solver']:<10} {r['steps']:>5} {r['wall_s']:>8.3f} {r['sampling_s']:>9.3f} {r['decode_s']:>7.3f} "
              f"{r['metric_s']:>8.3f} {r['harness_s']:>8.3f} {r['overhead_share']:>6.1%}")
    print(f"harness overhead: {total:.1%} of wall time over the sweep, worst cell {worst:.1%} (target <= 10%)")
    res = {"benchmark": "harness_overhead", "backbone": a.backbone, "sweep": "quick", "rows": rows,
           "overhead_share_total": total, "overhead_share_worst_cell": worst, "target_max": 0.10,
           "note": "the first cell also pays one-off costs (prompt encoding, reference statistics when not cached)",
           "command": f"python benchmarks/harness_overhead.py --backbone {a.backbone}"}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
