"""Harness overhead on the `quick` sweep: the share of each cell's wall time that is not
sampling, decoding or metric feature extraction (planning, conditioning, FID / KID / bootstrap
arithmetic, record writing). Target: at most 10%.

This machine is shared and noisy, so the sweep runs ``--repeats`` times (each in a fresh
process and results directory) and every figure is the median over the repeats.

    .venv/bin/python benchmarks/harness_overhead.py [--backbone shapes-flow] [--repeats 3] \
[--out benchmarks/results/harness_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

KEYS = ("wall_s", "sampling_s", "decode_s", "metric_s", "harness_s", "fid_kid_s")


def one_run(backbone: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "solverzoo.cli", "bench", "sweep=quick", f"backbone={backbone}", "progress=false",
               f"results_dir={d}/r"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        recs = [json.loads(p.read_text()) for p in sorted(Path(d, "r", "records").glob("*.json"))]
    failed = [r for r in recs if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} cell(s) failed, e.g. {failed[0]['error']}; fix them before measuring overhead")
    return recs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="shapes-flow")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/harness_overhead.json")
    a = ap.parse_args()
    runs = [one_run(a.backbone) for _ in range(a.repeats)]
    by_cell: dict[str, list[dict]] = {}
    for recs in runs:
        for r in recs:
            by_cell.setdefault(r["config_hash"], []).append(r)
    rows = []
    for reps in by_cell.values():
        row = {k: reps[0][k] for k in ("solver", "grid", "steps", "nfe", "cache")  if k in reps[0]}
        row.update({k: statistics.median(r.get(k, 0.0) for r in reps) for k in KEYS})
        row["overhead_share"] = statistics.median(r["harness_s"] / r["wall_s"] for r in reps)
        row["overhead_share_each_run"] = [r["harness_s"] / r["wall_s"] for r in reps]
        rows.append(row)
    totals = [sum(r["harness_s"] for r in recs) / sum(r["wall_s"] for r in recs) for recs in runs]
    total = statistics.median(totals)
    worst = max(r["overhead_share"] for r in rows)
    print(f"{'solver':<10} {'steps':>5} {'wall s':>8} {'sampling':>9} {'decode':>7} {'metrics':>8} {'harness':>8} {'share':>6}")
    for r in rows:
        print(f"{r['solver']:<10} {r['steps']:>5} {r['wall_s']:>8.3f} {r['sampling_s']:>9.3f} {r['decode_s']:>7.3f} "
              f"{r['metric_s']:>8.3f} {r['harness_s']:>8.3f} {r['overhead_share']:>6.1%}")
    print(f"harness overhead (median of {a.repeats} runs): {total:.1%} of wall time over the sweep "
          f"(runs: {', '.join(f'{t:.1%}' for t in totals)}), worst cell {worst:.1%} (target <= 10%)")
    res = {"benchmark": "harness_overhead", "backbone": a.backbone, "sweep": "quick", "repeats": a.repeats, "rows": rows,
           "overhead_share_total": total, "overhead_share_total_each_run": totals, "overhead_share_worst_cell": worst,
           "target_max": 0.10, "statistic": "median over repeats (fresh process each)",
           "command": f"python benchmarks/harness_overhead.py --backbone {a.backbone} --repeats {a.repeats}"}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
