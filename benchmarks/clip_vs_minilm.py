"""CLIP eyes vs a language model's brain, on equal terms: prompt accuracy per attribute and FID
of two shapes DiTs trained by one recipe (data, steps, seed) that differ only in the frozen text
encoder: ``shapes-flow`` (MiniLM-L6, a text-only sentence encoder) and ``shapes-flow-clip`` (the
text tower of the small CLIP trained here on the shapes world's image-caption pairs).

Both backbones are sampled with the same solver, grid, NFE, guidance scales, per-sample seeds and
prompts (common random numbers: sample i shares its starting noise and prompt across backbones),
so every CLIP - MiniLM difference comes with a *paired* bootstrap interval over samples; a
difference is claimed only where that 95 % interval excludes zero.

* prompt accuracy: the shapes world's attribute classifier (GenEval-style exact match), overall
  and per attribute (count, colour, shape, position, relation:
  :func:`solverzoo.models.worlds.shapes_eval.attribute_hits`; size is not judged: the classifier
  has no size head);
* FID on the world's domain features (the classifier's 128-d penultimate layer) against the
  pinned 50,000-image reference (``metrics/default.yaml``; cached by identity in ``--cache-dir``),
  by :func:`solverzoo.bench.metrics.fid_kid`, and the paired FID difference by
  :func:`solverzoo.bench.metrics.paired_delta`.

Run (about 5 minutes on 2 quiet CPU cores, plus ~2.5 minutes once if the reference cache is cold)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/clip_vs_minilm.py --out reports/clip_vs_minilm
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

BACKBONES = ("shapes-flow", "shapes-flow-clip")  # MiniLM, CLIP text tower
ATTRS = ("overall", "count", "colour", "shape", "position", "relation")


def _metrics_cfg() -> dict:
    from omegaconf import OmegaConf

    import solverzoo.bench.configs as configs

    return OmegaConf.to_container(OmegaConf.load(Path(configs.__file__).parent / "metrics" / "default.yaml"), resolve=True)


def _accuracy(hits: np.ndarray, reps: int, ci: float, seed: int) -> dict:
    """Mean of the tested prompts' hits with a percentile-bootstrap interval over them."""
    from solverzoo.bench.metrics import proportion_ci

    tested = hits[~np.isnan(hits)]
    p, lo, hi = proportion_ci(tested, reps, ci, seed=seed)
    return {"accuracy": p, "ci_low": lo, "ci_high": hi, "n_tested": int(len(tested))}


def _cell(bb, prompts, scale: float, args, ref, extractor) -> dict:
    """Sample one backbone at one guidance scale; per-sample hits, features and the FID record."""
    from solverzoo.bench.generate import generate
    from solverzoo.bench.metrics import fid_kid, fid_kid_settings

    t0 = time.perf_counter()
    guidance = None if scale == 1.0 else "cfg"  # scale 1 is the conditional model alone (1 NFE / step)
    out = generate(bb, prompts, solver=args.solver, steps=args.steps, guidance=guidance, scale=scale,
                   seeds=range(len(prompts)), batch_size=128)
    with torch.no_grad():
        hits = bb.world.score_attributes(out.images, out.latents, prompts)
        feats = extractor(out.images)
    fk = fid_kid(feats, ref, **{**fid_kid_settings(args.mcfg), "bootstrap": args.reps}, seed=args.boot_seed)
    return {"hits": hits, "features": feats.numpy(), "fid": fk, "nfe": out.nfe, "sampling_s": out.sampling_s,
            "wall_s": time.perf_counter() - t0, "images": out.images[:32]}


def _summary(cell: dict, args) -> dict:
    fk = cell["fid"]
    acc = {a: _accuracy(cell["hits"][a], args.reps, args.ci, args.boot_seed) for a in ATTRS}
    fid = {k: fk[k] for k in ("fid", "fid_ci_low", "fid_ci_high", "fid_inf", "fid_inf_ci_low", "fid_inf_ci_high",
                              "kid", "kid_ci_low", "kid_ci_high")}
    return {"nfe": cell["nfe"], "sampling_s": round(cell["sampling_s"], 2), "wall_s": round(cell["wall_s"], 2),
            "prompt_accuracy": acc, "fid": fid, "fid_ci_method": fk["fid_ci_method"]}


def _paired(clip: dict, mini: dict, ref, args) -> dict:
    """CLIP - MiniLM: per-attribute accuracy (paired bootstrap over the prompts testing it) and FID."""
    from solverzoo.bench.metrics import paired_delta
    from solverzoo.bench.resampling import paired_bootstrap

    out = {}
    for a in ATTRS:
        h_c, h_m = clip["hits"][a], mini["hits"][a]
        tested = ~np.isnan(h_m)
        d = paired_bootstrap(h_c[tested], h_m[tested], stat=np.mean, reps=args.reps,
                             rng=np.random.default_rng(args.boot_seed), ci=args.ci)
        out[a] = {**d, "n_tested": int(tested.sum()), "claim": _claim(d["ci_low"], d["ci_high"])}
    fa = {"features": clip["features"], "fid": clip["fid"]["fid"], "fid_boot": clip["fid"]["_fid_boot"]}
    fb = {"features": mini["features"], "fid": mini["fid"]["fid"], "fid_boot": mini["fid"]["_fid_boot"]}
    pd = paired_delta(fa, fb, ref, args.reps, args.ci, seed=args.boot_seed)
    out["fid"] = {"delta": pd["delta_fid"], "ci_low": pd["delta_fid_ci_low"], "ci_high": pd["delta_fid_ci_high"],
                  "method": f"paired bootstrap over samples (same resample indices for both), spread re-centred on the "
                            f"estimate, {args.reps} resamples, {args.ci:.0%}",
                  "claim": _claim(pd["delta_fid_ci_low"], pd["delta_fid_ci_high"], lower_is_better=True)}
    return out


def _claim(lo: float, hi: float, lower_is_better: bool = False) -> str:
    if lo <= 0.0 <= hi or not (math.isfinite(lo) and math.isfinite(hi)):
        return "no difference resolved (interval contains 0)"
    clip_better = (hi < 0.0) if lower_is_better else (lo > 0.0)
    return "CLIP better" if clip_better else "MiniLM better"


def _floor(world, prompts, ref, extractor, args) -> dict:
    """The real images these prompts came with: the classifier's per-attribute ceiling and the FID floor."""
    from solverzoo.bench.metrics import fid_kid, fid_kid_settings
    from solverzoo.seeds import prompt_seed

    real = world.samples_for(prompts, prompt_seed(args.reference_seed))
    with torch.no_grad():
        hits = world.score_attributes(real, None, prompts)
        fk = fid_kid(extractor(real), ref, **{**fid_kid_settings(args.mcfg), "bootstrap": args.reps}, seed=args.boot_seed)
    return {"prompt_accuracy": {a: _accuracy(hits[a], args.reps, args.ci, args.boot_seed) for a in ATTRS},
            "fid": {k: fk[k] for k in ("fid", "fid_ci_low", "fid_ci_high", "fid_inf")}}


def _setup(args):
    from solverzoo.backbone import load_backbone
    from solverzoo.bench.metrics import make_extractor
    from solverzoo.bench.reference_set import load_reference

    bbs = {name: load_backbone(name) for name in BACKBONES}
    ex = {name: make_extractor("domain", bb, args.mcfg) for name, bb in bbs.items()}
    if len({json.dumps(e.identity(), sort_keys=True) for e in ex.values()}) != 1:
        raise RuntimeError("the two backbones' worlds give different domain feature extractors: FID would not be comparable")
    if bbs[BACKBONES[0]].default_grid != bbs[BACKBONES[1]].default_grid:
        raise RuntimeError("the two backbones have different default grids; pass the same grid to both")
    extractor = ex[BACKBONES[0]]
    t0 = time.perf_counter()
    ref = load_reference(bbs[BACKBONES[0]], args.mcfg, extractor, Path(args.cache_dir), n_prompts=args.n)
    print(f"reference: {ref.n} real images, cache {ref.info.get('cache')} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return bbs, extractor, ref


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    bbs, extractor, ref = _setup(args)
    prompts = ref.prompts[: args.n]
    world = bbs[BACKBONES[0]].world
    rows, cells = [], {}
    for scale in args.scales:
        for name, bb in bbs.items():
            cells[(name, scale)] = _cell(bb, prompts, scale, args, ref, extractor)
            s = _summary(cells[(name, scale)], args)
            rows.append({"backbone": name, "scale": scale, **s})
            print(f"{name} scale {scale}: accuracy {s['prompt_accuracy']['overall']['accuracy']:.3f}, "
                  f"FID {s['fid']['fid']:.2f} ({s['wall_s']:.0f} s)", flush=True)
    diffs = [{"scale": s, **_paired(cells[("shapes-flow-clip", s)], cells[("shapes-flow", s)], ref, args)} for s in args.scales]
    floor = _floor(world, prompts, ref, extractor, args)
    _save_grids(cells, prompts, args)
    bb0 = bbs[BACKBONES[0]]
    return {
        "question": "does a text-only language model (MiniLM) or CLIP's text tower condition the shapes DiT better?",
        "backbones": {n: {"artifact": b.artifact, "weights_id": b.weights_id, "text_encoder": b.conditioner.name}
                      for n, b in bbs.items()},
        "settings": {"n": args.n, "solver": args.solver, "steps": args.steps, "grid": bb0.default_grid,
                     "grid_options": bb0.default_grid_options, "scales": args.scales,
                     "guidance": "none at scale 1 (1 NFE / step), cfg above (2 NFE / step)",
                     "seeds": f"range({args.n}) on both backbones (common random numbers)",
                     "prompts": f"ShapesWorld(prompt_seed({args.reference_seed})) first {args.n} captions",
                     "bootstrap_resamples": args.reps, "ci": args.ci, "bootstrap_seed": args.boot_seed,
                     "threads": args.threads},
        "feature_extractor": extractor.identity(), "reference": {"identity": ref.identity, "n": ref.n, "info": ref.info},
        "attribute_definitions": "solverzoo.models.worlds.shapes_eval.attribute_hits; size is not judged (no size head)",
        "cells": rows, "differences_clip_minus_minilm": diffs, "real_images": floor,
        "wall_s": round(time.perf_counter() - t_start, 1), "command": args.command,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def _save_grids(cells: dict, prompts, args) -> None:
    from solverzoo.models.images import save_grid

    scale = max(args.scales)
    for name in BACKBONES:
        save_grid(cells[(name, scale)]["images"], Path(args.out) / f"{name}_scale{scale:g}.png", ncol=8)
    (Path(args.out) / "grid_prompts.txt").write_text("\n".join(prompts[:32]) + "\n")


def _fmt_acc(a: dict) -> str:
    return f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def _fmt_d(d: dict, digits: int = 3) -> str:
    return f"{d['delta']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def markdown(res: dict) -> str:
    st = res["settings"]
    lines = ["# CLIP text tower vs MiniLM conditioning on the shapes world", "",
             f"{res['question']} Two DiTs trained by one recipe (data, steps, seed; see their model cards) differ only in "
             "the frozen text encoder. Both sampled with "
             f"`{st['solver']}`, {st['steps']} steps on the `{st['grid']}` grid {st['grid_options']}, the same "
             f"{st['n']} prompts and per-sample seeds (common random numbers). Intervals: 95 % bootstrap over samples "
             f"({st['bootstrap_resamples']} resamples); differences are CLIP - MiniLM with *paired* intervals, and a "
             "difference is claimed only where its interval excludes 0.", "",
             "## Paired differences (CLIP - MiniLM)", "",
             "| scale | NFE | overall | count | colour | shape | position | relation | FID |", "|---|---|" + "---|" * 7]
    nfe = {(r["backbone"], r["scale"]): r["nfe"] for r in res["cells"]}
    for d in res["differences_clip_minus_minilm"]:
        cells = [_fmt_d(d[a]) for a in ATTRS] + [_fmt_d(d["fid"], 2)]
        lines.append(f"| {d['scale']:g} | {nfe[('shapes-flow', d['scale'])]} | " + " | ".join(cells) + " |")
    lines += ["", "Claims (interval excludes 0):", ""]
    for d in res["differences_clip_minus_minilm"]:
        claims = [f"{a}: {d[a]['claim']}" for a in (*ATTRS, "fid") if not d[a]["claim"].startswith("no difference")]
        lines.append(f"- scale {d['scale']:g}: " + ("; ".join(claims) if claims else "no difference resolved"))
    lines += ["", "## Per backbone", "", "| backbone | scale | overall | count | colour | shape | position | relation | "
              "FID [95 %] | FID-inf | wall s |", "|---|---|" + "---|" * 9]
    for r in res["cells"]:
        acc, f = r["prompt_accuracy"], r["fid"]
        lines.append(f"| {r['backbone']} | {r['scale']:g} | " + " | ".join(_fmt_acc(acc[a]) for a in ATTRS)
                     + f" | {f['fid']:.2f} [{f['fid_ci_low']:.2f}, {f['fid_ci_high']:.2f}] | {f['fid_inf']:.2f}"
                     + f" | {r['wall_s']:.0f} |")
    fl = res["real_images"]
    lines.append("| real images (ceiling / floor) | - | " + " | ".join(_fmt_acc(fl["prompt_accuracy"][a]) for a in ATTRS)
                 + f" | {fl['fid']['fid']:.2f} [{fl['fid']['fid_ci_low']:.2f}, {fl['fid']['fid_ci_high']:.2f}] | "
                 f"{fl['fid']['fid_inf']:.2f} | - |")
    n_t = res["cells"][0]["prompt_accuracy"]
    lines += ["", f"Prompts testing each attribute (of {st['n']}): " + ", ".join(f"{a} {n_t[a]['n_tested']}" for a in ATTRS)
              + ". Attributes (`solverzoo.models.worlds.shapes_eval.attribute_hits`): count; colour and shape of each "
              "named object in its slot (pairs: first named on the left); position of a single object; relation = a "
              "pair in the named left/right order (not swapped). Size is named in captions but not judged: the "
              "attribute classifier has no size head. An overall hit is a hit on every tested attribute.", "",
              f"FID: {res['feature_extractor']['name']} features ({res['feature_extractor']['num_features']}-d) against "
              f"{res['reference']['n']} real images (world seed {res['reference']['identity']['seed']}). At N = {st['n']} "
              "FID carries a 1/N bias shared by both backbones; the real-image row is the floor at this N.", "",
              "Encoders: " + ", ".join(f"{k}: {v['text_encoder']} (weights {v['weights_id']})"
                                       for k, v in res["backbones"].items()) + ".",
              "Samples at the largest scale: " + ", ".join(f"`{b}_scale{max(st['scales']):g}.png`" for b in BACKBONES)
              + " (prompts in `grid_prompts.txt`).", "",
              f"Reproduce: `{res['command']}` ({res['wall_s']:.0f} s wall on {st['threads']} threads).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--ci", type=float, default=0.95)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--reference-seed", type=int, default=None, help="default: metrics/default.yaml's reference.seed")
    ap.add_argument("--cache-dir", default="outputs/default/cache", help="reference-statistics cache (the default sweep's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/clip_vs_minilm")
    args = ap.parse_args(argv)
    args.mcfg = _metrics_cfg()
    if args.reference_seed is None:
        args.reference_seed = int(args.mcfg["reference"]["seed"])
    args.mcfg["reference"]["seed"] = args.reference_seed
    script = "benchmarks/clip_vs_minilm.py " + " ".join(argv or sys.argv[1:])
    args.command = f"OMP_NUM_THREADS={args.threads} .venv/bin/python {script}"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    res = run(args)
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (Path(args.out) / "index.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
