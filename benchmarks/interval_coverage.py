"""Empirical coverage of the harness's 95 % intervals, measured over independent replicates.

Two parts, both at the default sweep's N (384) on the default backbone (shapes-flow):

A. **Real data (the floor).** ``--sets`` independent sets of N real images of the world (fresh
   prompts and images per set), each scored against the 50k-image reference exactly as the
   harness scores a cell (``metrics.fid_kid``). Truth for ``fid_inf`` and KID: the same
   estimators on all sets pooled (``sets x N`` images); truth for FID at N: its mean over sets
   (FID at N is biased; its interval is for FID at that N).
B. **Sampler cells.** The harness runs ``sweep=coverage`` (euler, 4 and 8 steps, unguided) on
   ``--sets`` seed sets (independent starting noise; the sweep's prompt set is fixed, so the
   truth is the one for these prompts). For each seed set the benchmark reads the intervals the
   record and the report compute (``err_converged``, ``prompt_accuracy``, ``fid_inf``; paired
   ΔFID between the two cells and against the converged solve, from ``bench.paired`` exactly as
   the report does) and checks them against the pooled truth (all seed sets' per-sample arrays
   together: ``sets x N`` samples).

Coverage is the fraction of replicates whose interval holds the truth, with a Clopper-Pearson
95 % interval on that fraction (20 replicates resolve coverage only to about +-10 %).

Run (one at a time: it uses both cores for ~10-25 min on a quiet machine; reruns reuse the
finished cells and the cached reference)::

    .venv/bin/python benchmarks/interval_coverage.py --sets 20 --work /tmp/coverage \
        --out benchmarks/results/interval_coverage.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def coverage(intervals: list[tuple[float, float]], truth: float) -> dict:
    ok = [lo <= truth <= hi for lo, hi in intervals if math.isfinite(lo) and math.isfinite(hi)]
    k, n = int(sum(ok)), len(ok)
    lo, hi = clopper_pearson(k, n) if n else (math.nan, math.nan)
    widths = [hi_ - lo_ for lo_, hi_ in intervals]
    return {"covered": k, "n": n, "coverage": k / n if n else math.nan, "coverage_ci95": [lo, hi],
            "truth": truth, "median_width": float(np.median(widths)) if widths else math.nan}


def _estimate_spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "min": float(v.min()), "max": float(v.max())}


def _setup(cache_dir: Path, n: int):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from solverzoo.backbone import load_backbone
    from solverzoo.bench.metrics import make_extractor
    from solverzoo.bench.reference_set import load_reference

    with initialize_config_module(version_base=None, config_module="solverzoo.bench.configs"):
        cfg = OmegaConf.to_container(compose("config"), resolve=True)  # the default sweep's settings
    bb = load_backbone(cfg["backbone"]["name"], device="cpu")
    m = cfg["metrics"]
    extractor = make_extractor(m["feature"], bb, m)
    ref = load_reference(bb, m, extractor, cache_dir, n_prompts=n)
    return cfg, bb, extractor, ref


def part_real(sets: int, n: int, cache_dir: Path) -> dict:
    """Part A: independent real sets scored like cells, against the pooled truth."""
    import torch

    from solverzoo.bench import estimators
    from solverzoo.bench.metrics import fid_kid, fid_kid_settings

    cfg, bb, extractor, ref = _setup(cache_dir, n)
    world, m = bb.require_world(), cfg["metrics"]
    rows, feats_all = [], []
    t0 = time.perf_counter()
    for k in range(sets):
        seed = 7_000_000 + 1000 * k  # far from the reference (909), prompt (910) and calibration seeds
        prompts = list(world.prompts(seed, n))
        with torch.no_grad():
            f = extractor(world.samples_for(prompts, seed + 1))
        feats_all.append(f.numpy().astype(np.float64))
        out = fid_kid(f, ref, seed=k, **fid_kid_settings(m))
        rows.append({key: out[key] for key in ("fid", "fid_ci_low", "fid_ci_high", "fid_inf", "fid_inf_ci_low",
                                               "fid_inf_ci_high", "kid", "kid_ci_low", "kid_ci_high")})
        print(f"real set {k}: fid {out['fid']:.1f}  fid_inf {out['fid_inf']:.1f} [{out['fid_inf_ci_low']:.1f}, "
              f"{out['fid_inf_ci_high']:.1f}]  kid {out['kid']:.4f}", flush=True)
    pooled = np.concatenate(feats_all)
    fi = estimators.fid_infinity(pooled, ref.mu, ref.sigma, reps=8, rng=np.random.default_rng(1), ref_sqrt=ref.sigma_sqrt)
    kid = estimators.kid_unbiased(pooled, ref.features[:m["kid_reference_n"]].numpy(), subset_size=m["kid_subset_size"],
                                  subsets=m["kid_subsets"], rng=np.random.default_rng(2), boot=2, ci=m["ci"])
    fid_mean = float(np.mean([r["fid"] for r in rows]))
    return {
        "what": f"{sets} independent sets of {n} real images (fresh prompts and images), scored against the "
                f"{ref.n}-image reference like a cell",
        "pooled_n": len(pooled), "seconds": round(time.perf_counter() - t0, 1),
        "pooled_fid_inf": fi["fid_inf"], "pooled_fid_n": fi["fid_n"], "pooled_kid": kid["kid"],
        "fid_inf_at_n": _estimate_spread([r["fid_inf"] for r in rows]),
        "fid_at_n": _estimate_spread([r["fid"] for r in rows]),
        "coverage": {
            "fid_inf (truth: pooled fid_inf)": coverage(
                [(r["fid_inf_ci_low"], r["fid_inf_ci_high"]) for r in rows], fi["fid_inf"]),
            "fid_inf (truth: 0 + the 50k reference's own bias, ~1.4)": coverage(
                [(r["fid_inf_ci_low"], r["fid_inf_ci_high"]) for r in rows], 1.4),
            "fid at N (truth: mean over sets)": coverage([(r["fid_ci_low"], r["fid_ci_high"]) for r in rows], fid_mean),
            "kid (truth: pooled kid)": coverage([(r["kid_ci_low"], r["kid_ci_high"]) for r in rows], kid["kid"]),
        },
        "rows": rows,
    }


def run_cells(work: Path, sets: int, converged_steps: int | None = None) -> Path:
    """Part B's harness run (resumable: finished cells are kept). ``converged_steps``: a cheaper
    converged solve (``metrics.converged.steps``; the pooled truth uses the same references, so
    coverage of the sampling intervals is unaffected; the reference's own error is stored)."""
    results = work / "cells"
    seed_sets = "[" + ",".join(str(k) for k in range(sets)) + "]"
    cmd = [str(Path(sys.executable).with_name("solverzoo")), "bench", "sweep=coverage", f"sweep.seed_sets={seed_sets}",
           f"results_dir={results}", "keep_going=true", "progress=false"]
    if converged_steps:
        cmd.append(f"metrics.converged.steps={converged_steps}")
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return results


def part_cells(results: Path, sets: int) -> dict:
    from solverzoo.bench import estimators, paired
    from solverzoo.bench.records import arrays_to_numpy, read_arrays, read_records

    recs = [r for r in read_records(results) if r.get("status") == "ok" and int(r["seed_set"]) < sets]
    ref = paired.load_reference(results)
    by_steps: dict[int, dict[int, dict]] = {}
    for r in recs:
        by_steps.setdefault(int(r["steps"]), {})[int(r["seed_set"])] = r
    steps = sorted(by_steps)
    if len(steps) != 2:
        raise SystemExit(f"expected two step counts in {results}, found {steps}")
    a_steps, b_steps = steps
    common = sorted(set(by_steps[a_steps]) & set(by_steps[b_steps]))
    arrays = {(s, k): arrays_to_numpy(read_arrays(results, by_steps[s][k]["config_hash"])) for s in steps for k in common}
    for (s, k), a in arrays.items():  # the converged solve's features are stored once per solve (its key in the record)
        a.setdefault(paired.CONVERGED_FEATURES_KEY, paired._converged_features(results, by_steps[s][k]["config_hash"]))

    def pooled(key, s):
        return np.concatenate([arrays[(s, k)][key] for k in common])

    def fd(f):
        return float(estimators.fd_batch(np.asarray(f)[None], ref["mu"], ref_sqrt=ref["sqrt"])[0])

    out: dict = {"what": f"sweep=coverage on {len(common)} seed sets (noise varies, the prompt set is fixed)",
                 "seed_sets": common, "pooled_n": len(common) * int(recs[0]["n_samples"]), "coverage": {}, "rows": {}}
    truth_fd = {s: fd(pooled("features", s)) for s in steps}
    truth_fd_conv = {s: fd(pooled(paired.CONVERGED_FEATURES_KEY, s)) for s in steps}
    for s in steps:
        rows = [by_steps[s][k] for k in common]
        fi = estimators.fid_infinity(pooled("features", s), ref["mu"], ref["sigma"], reps=8, rng=np.random.default_rng(1),
                                     ref_sqrt=ref["sqrt"])
        cov = out["coverage"]
        cov[f"err_converged, euler {s} (truth: pooled median)"] = coverage(
            [(r["err_converged_ci_low"], r["err_converged_ci_high"]) for r in rows], float(np.median(pooled("err", s))))
        cov[f"prompt_accuracy, euler {s} (truth: pooled mean)"] = coverage(
            [(r["prompt_accuracy_ci_low"], r["prompt_accuracy_ci_high"]) for r in rows], float(np.mean(pooled("hits", s))))
        cov[f"fid_inf, euler {s} (truth: pooled fid_inf)"] = coverage(
            [(r["fid_inf_ci_low"], r["fid_inf_ci_high"]) for r in rows], fi["fid_inf"])
        out["rows"][f"euler {s}"] = {"fid_inf_at_n": _estimate_spread([r["fid_inf"] for r in rows]),
                                     "pooled_fid_inf": fi["fid_inf"], "pooled_fid": truth_fd[s]}
    d_ab, d_conv = [], {s: [] for s in steps}
    for k in common:
        ha, hb = by_steps[a_steps][k]["config_hash"], by_steps[b_steps][k]["config_hash"]
        g = paired.PairedGroup(results, [ha, hb], int(recs[0]["n_samples"]), ref, paired.seed_for(k))
        d = g.diff("fid", ha, hb)
        d_ab.append((d.delta, d.lo, d.hi))
        for s, h in ((a_steps, ha), (b_steps, hb)):
            dc = g.fid_vs_converged(h)
            d_conv[s].append((dc.delta, dc.lo, dc.hi))
    name = f"paired dFID euler {a_steps} - euler {b_steps}"
    truth_ab = truth_fd[a_steps] - truth_fd[b_steps]
    out["coverage"][f"{name} (truth: pooled, N = {out['pooled_n']})"] = coverage([(lo, hi) for _, lo, hi in d_ab], truth_ab)
    out["coverage"][f"{name} (truth: mean over seed sets)"] = coverage([(lo, hi) for _, lo, hi in d_ab],
                                                                      float(np.mean([e for e, _, _ in d_ab])))
    out["rows"][name] = {"estimates": _estimate_spread([e for e, _, _ in d_ab]), "pooled": truth_ab,
                         "resolved_sign": sum((lo > 0) or (hi < 0) for _, lo, hi in d_ab)}
    for s in steps:
        cname = f"paired dFID euler {s} - its converged solve"
        truth = truth_fd[s] - truth_fd_conv[s]
        out["coverage"][f"{cname} (truth: pooled)"] = coverage([(lo, hi) for _, lo, hi in d_conv[s]], truth)
        out["coverage"][f"{cname} (truth: mean over seed sets)"] = coverage(
            [(lo, hi) for _, lo, hi in d_conv[s]], float(np.mean([e for e, _, _ in d_conv[s]])))
        out["rows"][cname] = {"estimates": _estimate_spread([e for e, _, _ in d_conv[s]]), "pooled": truth}
    return out


def calibration_summary(res: dict) -> dict:
    """The rows the report prints (``solverzoo/bench/interval_calibration.json``)."""
    rows = []
    for part in ("real", "cells"):
        for name, c in res.get(part, {}).get("coverage", {}).items():
            interval, _, truth = name.partition(" (truth: ")
            rows.append({"interval": interval + (" (real images)" if part == "real" else ""), "truth": truth.rstrip(")"),
                         **{k: c[k] for k in ("covered", "n", "coverage", "coverage_ci95")}})
    what = (f"{res['sets']} independent replicates at N = {res['n']} on shapes-flow (real images: fresh prompts and images; "
            f"cells: sweep=coverage seed sets, fixed prompt set), truth pooled over the replicates; {res['command']}")
    return {"what": what, "rows": rows, "torch": res.get("torch"), "solverzoo": res.get("solverzoo")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=20, help="independent replicates (at least 20 for the issue's target)")
    ap.add_argument("--n", type=int, default=384, help="samples per replicate (the default sweep's N)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/solverzoo-coverage"), help="results and cache folder")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/interval_coverage.json"))
    ap.add_argument("--parts", default="real,cells", help="comma list: real, cells")
    ap.add_argument("--calibration-out", type=Path, default=Path("solverzoo/bench/interval_calibration.json"),
                    help="where the report's coverage table is written (package data)")
    ap.add_argument("--converged-steps", type=int, default=None,
                    help="metrics.converged.steps for part B's cells (default: the harness's, 24)")
    args = ap.parse_args(argv)
    if args.n != 384 and "cells" in args.parts:
        raise SystemExit("--n applies to part 'real' only; the cells use sweep=coverage's n_samples (384)")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    t0 = time.perf_counter()
    res: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "sets": args.sets, "n": args.n,
                 "nominal": 0.95, "python": platform.python_version()}
    import torch

    import solverzoo
    res.update(torch=torch.__version__, solverzoo=solverzoo.__version__, machine=platform.machine())
    if args.out.is_file():  # a part run earlier (e.g. --parts real, then --parts cells) is kept
        old = json.loads(args.out.read_text())
        res.update({k: old[k] for k in ("real", "cells") if k in old and k not in args.parts.split(",")})
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        res["seconds"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(res, indent=1, default=float))

    if "real" in args.parts:
        res["real"] = part_real(args.sets, args.n, args.work / "cache")
        save()
    if "cells" in args.parts:
        res["cells"] = part_cells(run_cells(args.work, args.sets, args.converged_steps), args.sets)
        res["cells"]["converged_steps"] = args.converged_steps or 24
        save()
    args.calibration_out.write_text(json.dumps(calibration_summary(res), indent=1, default=float))
    args.calibration_out.write_text(json.dumps(calibration_summary(res), indent=1, default=float))
    for part in ("real", "cells"):
        for name, c in res.get(part, {}).get("coverage", {}).items():
            print(f"{part:5s} {name:70s} {c['covered']:3d}/{c['n']:<3d} = {c['coverage']:.2f} "
                  f"[{c['coverage_ci95'][0]:.2f}, {c['coverage_ci95'][1]:.2f}]  width {c['median_width']:.4g}")
    print(f"wrote {args.out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
