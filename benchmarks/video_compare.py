"""Space-time vs frame-by-frame vs next-token video, on the shapes video world, on equal terms.

Three backbones sample clips for the same captions:

* ``shapes-video``: the space-time DiT (the whole clip is one sample: spatial and temporal
  attention over per-frame VAE latents; Lumiere's idea in small);
* ``shapes-video-frames``: the frame-by-frame baseline the space-time model argues against (the
  image DiT samples each frame from its own noise with that frame's caption);
* ``shapes-video-ar``: the next-token baseline (VideoPoet's idea in small: VQ tokens of the
  per-frame latents predicted by a causal transformer, sampled with temperature / top-k).

The two diffusion backbones share the solver, grid, steps, guidance and per-sample starting noise
(common random numbers: clip i starts from the same (T, 4, 8, 8) noise in both); all three share
the captions, so every difference is a *paired* bootstrap over clips (the same resample indices on
both sides) and is claimed only where its 95% interval excludes 0.

Measured per cell (``solverzoo.models.worlds.video_eval``):

* motion accuracy: does the first-named object move as the caption says, decided from the video
  classifier's per-frame attributes (centre, radius, colour) by the world's stated rule; and the
  overall prompt check (count, shape, colour and motion);
* temporal consistency: the clips' mean squared frame-to-frame change over that of the real clips
  of the same captions (1 = as smooth as real data; above 1 flickers), and identity flicker (how
  often the first object's predicted shape changes between consecutive frames);
* FVD-style distance: the Fréchet distance between clip features (the video classifier's pooled
  space-time features, trained here) of the samples and of real clips, at N and extrapolated to
  infinite N (FID-infinity's estimator), against a reference of ``--reference-n`` real clips;
* cost: network evaluations (diffusion NFE, or forward passes of the AR model) per clip, FLOPs per
  clip (torch's FLOP counter, the same for all three), and measured wall time per clip.

Run (see ``--help``)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video_compare.py --out reports/video
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

SPACE_TIME, FRAMES, AR = "shapes-video", "shapes-video-frames", "shapes-video-ar"
ATTRS = ("overall", "motion", "count", "colour", "shape")
ATTRS_SHOWN = ("overall", "motion", "colour", "shape", "count")


def _metrics_cfg(reference_n: int) -> dict:
    from omegaconf import OmegaConf

    import solverzoo.bench.configs as configs

    m = OmegaConf.to_container(OmegaConf.load(Path(configs.__file__).parent / "metrics" / "default.yaml"), resolve=True)
    m["reference"]["n"] = int(reference_n)
    return m


def _proportion(hits: np.ndarray, args) -> dict:
    from solverzoo.bench.metrics import proportion_ci

    tested = hits[~np.isnan(hits)]
    p, lo, hi = proportion_ci(tested, args.reps, args.ci, seed=args.boot_seed)
    return {"value": p, "ci_low": lo, "ci_high": hi, "n_tested": int(len(tested))}


def _ratio_ci(num: np.ndarray, den: np.ndarray, args) -> dict:
    """mean(num) / mean(den) with a paired percentile bootstrap over clips (same indices both sides)."""
    rng = np.random.default_rng([args.boot_seed, 7])
    idx = rng.integers(0, len(num), (args.reps, len(num)))
    boots = num[idx].mean(1) / den[idx].mean(1)
    lo, hi = np.quantile(boots, [(1 - args.ci) / 2, 1 - (1 - args.ci) / 2])
    return {"value": float(num.mean() / den.mean()), "ci_low": float(lo), "ci_high": float(hi)}


def _flops_per_eval(bb, prompt) -> float:
    """FLOPs of one network evaluation on one clip (torch's FLOP counter), conditional branch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *bb.latent_shape))
    t = torch.full((1,), 0.5)
    cond = bb.conds([prompt])["cond"]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        bb.model.denoiser(cond)(x, t)
    return float(fc.get_total_flops())


def _ar_flops(bb, prompt, options: dict) -> float:
    """FLOPs of generating one clip with the AR model (every forward pass, CFG included)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        bb.generator.generate([prompt], [torch.Generator().manual_seed(0)], **options)
    return float(fc.get_total_flops())


def _sample_diffusion(bb, prompts, args, steps: int) -> dict:
    from solverzoo.bench.generate import generate

    t0 = time.perf_counter()
    out = generate(bb, prompts, solver=args.solver, steps=steps, guidance="cfg" if args.scale != 1.0 else None,
                   scale=args.scale, seeds=range(len(prompts)), batch_size=args.batch)
    wall = time.perf_counter() - t0
    flops = _flops_per_eval(bb, prompts[0]) * out.nfe
    return {"images": out.images, "latents": out.latents, "evals": out.nfe, "flops": flops, "wall_s": wall,
            "setting": f"{args.solver} {steps} steps" + (f", cfg {args.scale:g}" if args.scale != 1.0 else "")}


def _sample_ar(bb, prompts, args) -> dict:
    from solverzoo.noise import generators

    opts = {"temperature": args.ar_temperature, "top_k": args.ar_top_k or None, "cfg_scale": args.ar_scale}
    t0 = time.perf_counter()
    lat, stats = [], None
    for i in range(0, len(prompts), args.batch):
        p = list(prompts[i:i + args.batch])
        with torch.no_grad():
            x, stats = bb.generator.generate(p, generators(range(i, i + len(p))), **opts)
        lat.append(x)
    latents = torch.cat(lat)
    images = torch.cat([bb.decode(latents[i:i + 256]) for i in range(0, len(latents), 256)])
    wall = time.perf_counter() - t0
    return {"images": images, "latents": latents, "evals": int(stats["forward_passes"]),
            "flops": _ar_flops(bb, prompts[0], opts), "flops_own_count": float(stats.get("flops", math.nan)), "wall_s": wall,
            "setting": f"temperature {args.ar_temperature:g}, top-k {args.ar_top_k or 'off'}, cfg {args.ar_scale:g} on logits"}


def _identity_flicker(world, clips) -> np.ndarray:
    """Per clip: how often the first object's predicted shape changes between consecutive frames."""
    from solverzoo.models.worlds import video_eval as ve

    with torch.no_grad():
        preds = world.predict(clips)
    return ve.identity_flicker(np.stack([np.asarray(p["frames"]["shape"]) for p in preds]))


def _measure(cell: dict, world, prompts, real: dict, ref, extractor, args) -> dict:
    """Per-clip hits, flicker and features; the cell's summary with intervals."""
    from solverzoo.bench.metrics import fid_kid, fid_kid_settings
    from solverzoo.models.worlds import video_eval as ve

    with torch.no_grad():
        hits = world.score_attributes(cell["images"], cell["latents"], prompts)
        feats = extractor(cell["images"])
    change = ve.temporal_consistency(cell["images"])
    ident = _identity_flicker(world, cell["images"])
    fk = fid_kid(feats, ref, **{**fid_kid_settings(args.mcfg), "bootstrap": args.reps}, seed=args.boot_seed)
    cell.update(hits=hits, feats=feats.numpy(), change=change, ident=ident, fid=fk)
    n = len(prompts)
    return {"setting": cell["setting"], "evals_per_clip": cell["evals"], "flops_per_clip": cell["flops"],
            "wall_s_per_clip": cell["wall_s"] / n,
            **{a: _proportion(hits[a], args) for a in ATTRS},
            "flicker_ratio": _ratio_ci(change, real["change"], args),
            "identity_flicker": _proportion(ident, args),
            "fvd": {k: fk[k] for k in ("fid", "fid_ci_low", "fid_ci_high", "fid_inf", "fid_inf_ci_low", "fid_inf_ci_high")}}


def _paired(a: dict, b: dict, ref, args) -> dict:
    """a - b over the same captions (and, for the two diffusion backbones, the same noise)."""
    from solverzoo.bench.metrics import paired_delta
    from solverzoo.bench.resampling import paired_bootstrap

    rng = lambda k: np.random.default_rng([args.boot_seed, k])  # noqa: E731
    out = {}
    for k, attr in enumerate(ATTRS):
        ha, hb = a["hits"][attr], b["hits"][attr]
        tested = ~np.isnan(ha) & ~np.isnan(hb)
        out[attr] = paired_bootstrap(ha[tested], hb[tested], stat=np.mean, reps=args.reps, rng=rng(k), ci=args.ci)
    out["frame_change"] = paired_bootstrap(a["change"], b["change"], stat=np.mean, reps=args.reps, rng=rng(20), ci=args.ci)
    out["identity_flicker"] = paired_bootstrap(a["ident"], b["ident"], stat=np.mean, reps=args.reps, rng=rng(21), ci=args.ci)
    pd = paired_delta({"features": a["feats"], "fid": a["fid"]["fid"], "fid_boot": a["fid"]["_fid_boot"]},
                      {"features": b["feats"], "fid": b["fid"]["fid"], "fid_boot": b["fid"]["_fid_boot"]},
                      ref, args.reps, args.ci, seed=args.boot_seed)
    out["fvd"] = {"delta": pd["delta_fid"], "ci_low": pd["delta_fid_ci_low"], "ci_high": pd["delta_fid_ci_high"]}
    for v in out.values():
        v["resolved"] = bool(v["ci_low"] > 0 or v["ci_high"] < 0)
    return out


def _real(world, prompts, ref, extractor, args) -> dict:
    """The real clips of these captions: the classifier's ceiling, the FVD floor, the frame change flicker is measured against."""
    from solverzoo.bench.metrics import fid_kid, fid_kid_settings
    from solverzoo.models.worlds import video_eval as ve
    from solverzoo.seeds import prompt_seed

    clips = world.samples_for(prompts, prompt_seed(args.mcfg["reference"]["seed"]))
    with torch.no_grad():
        hits = world.score_attributes(clips, None, prompts)
        fk = fid_kid(extractor(clips), ref, **{**fid_kid_settings(args.mcfg), "bootstrap": args.reps}, seed=args.boot_seed)
    change, ident = ve.temporal_consistency(clips), _identity_flicker(world, clips)
    return {"clips": clips, "change": change,
            "summary": {**{a: _proportion(hits[a], args) for a in ATTRS}, "identity_flicker": _proportion(ident, args),
                        "mean_frame_change": float(change.mean()),
                        "fvd": {k: fk[k] for k in ("fid", "fid_ci_low", "fid_ci_high", "fid_inf", "fid_inf_ci_low",
                                                   "fid_inf_ci_high")}}}


def _setup(args):
    from solverzoo.backbone import load_backbone
    from solverzoo.bench.metrics import make_extractor
    from solverzoo.bench.reference_set import load_reference

    bbs = {name: load_backbone(name) for name in (SPACE_TIME, FRAMES, AR) if name in args.backbones}
    ex = {name: make_extractor("domain", bb, args.mcfg) for name, bb in bbs.items()}
    if len({json.dumps(e.identity(), sort_keys=True) for e in ex.values()}) != 1:
        raise RuntimeError("the backbones' worlds give different clip feature extractors: FVD would not be comparable")
    first = next(iter(bbs.values()))
    t0 = time.perf_counter()
    ref = load_reference(first, args.mcfg, ex[first.name], Path(args.cache_dir), n_prompts=args.n)
    print(f"reference: {ref.n} real clips, cache {ref.info.get('cache')} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return bbs, ex[first.name], ref


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    bbs, extractor, ref = _setup(args)
    prompts = ref.prompts[: args.n]
    world = next(iter(bbs.values())).world
    real = _real(world, prompts, ref, extractor, args)
    cells, rows = {}, []
    for name, bb in bbs.items():
        for steps in (args.steps if name != AR else [None]):
            cell = _sample_diffusion(bb, prompts, args, steps) if name != AR else _sample_ar(bb, prompts, args)
            rows.append({"backbone": name, "steps": steps, **_measure(cell, world, prompts, real, ref, extractor, args)})
            cells[(name, steps)] = cell
            r = rows[-1]
            print(f"{name} {cell['setting']}: motion {r['motion']['value']:.3f}, flicker {r['flicker_ratio']['value']:.2f}, "
                  f"FVD {r['fvd']['fid']:.1f} ({cell['wall_s']:.0f} s)", flush=True)
    diffs = []
    for steps in args.steps:
        st = cells.get((SPACE_TIME, steps))
        if st is not None and (FRAMES, steps) in cells:
            diffs.append({"a": SPACE_TIME, "b": FRAMES, "steps": steps, **_paired(st, cells[(FRAMES, steps)], ref, args)})
        if st is not None and (AR, None) in cells:
            diffs.append({"a": SPACE_TIME, "b": AR, "steps": steps, **_paired(st, cells[(AR, None)], ref, args)})
    _save_strips(cells, real["clips"], prompts, args)
    return {"question": "does generating the whole clip at once (space-time) beat frame-by-frame and next-token generation "
                        "on motion, temporal consistency and clip quality, and at what cost?",
            "backbones": {n: {"artifact": b.artifact, "weights_id": b.weights_id} for n, b in bbs.items()},
            "settings": {"n": args.n, "solver": args.solver, "steps": args.steps, "scale": args.scale,
                         "ar": {"temperature": args.ar_temperature, "top_k": args.ar_top_k or None, "cfg_scale": args.ar_scale},
                         "seeds": "clip i: seed i (diffusion: the same starting noise on both diffusion backbones)",
                         "prompts": f"ShapesVideoWorld(prompt_seed({args.mcfg['reference']['seed']})) first {args.n} captions",
                         "bootstrap_resamples": args.reps, "ci": args.ci, "threads": args.threads},
            "feature_extractor": extractor.identity(), "reference": {"identity": ref.identity, "n": ref.n, "info": ref.info},
            "cells": rows, "paired_differences": diffs, "real_clips": real["summary"],
            "wall_s": round(time.perf_counter() - t_start, 1), "command": args.command,
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}


def _save_strips(cells: dict, real, prompts, args) -> None:
    from solverzoo.models.images import save_grid

    k = 6
    for (name, steps), cell in cells.items():
        clips = cell["images"][:k]
        tag = f"{name}_{steps}steps" if steps else name
        save_grid(clips.reshape(-1, *clips.shape[2:]), Path(args.out) / f"{tag}.png", ncol=clips.shape[1], scale=3)
    save_grid(real[:k].reshape(-1, *real.shape[2:]), Path(args.out) / "real.png", ncol=real.shape[1], scale=3)
    (Path(args.out) / "strip_prompts.txt").write_text("\n".join(prompts[:k]) + "\n")


def _ci(d: dict, digits: int = 3) -> str:
    return f"{d['value']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"


def _d(d: dict, digits: int = 3) -> str:
    mark = " **resolved**" if d["resolved"] else ""
    return f"{d['delta']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]{mark}"


def _claims(res: dict) -> list[str]:
    """The resolved differences, in words."""
    better = {"overall": 1, "motion": 1, "count": 1, "colour": 1, "shape": 1, "frame_change": -1, "identity_flicker": -1,
              "fvd": -1}
    words = {"overall": "overall prompt accuracy", "motion": "motion accuracy", "count": "count accuracy",
             "colour": "colour accuracy", "shape": "shape accuracy", "frame_change": "frame-to-frame change (flicker)",
             "identity_flicker": "identity flicker", "fvd": "FVD-style distance"}
    out = []
    for d in res["paired_differences"]:
        won = [f"{words[k]} {_d(d[k])}" for k in better if d[k]["resolved"] and d[k]["delta"] * better[k] > 0]
        lost = [f"{words[k]} {_d(d[k])}" for k in better if d[k]["resolved"] and d[k]["delta"] * better[k] < 0]
        head = f"- {d['a']} ({d['steps']} steps) vs {d['b']}: "
        out.append(head + (("better on " + "; ".join(won)) if won else "better on nothing resolved")
                   + ((". Worse on " + "; ".join(lost)) if lost else "") + ".")
    return out


def markdown(res: dict) -> str:
    st = res["settings"]
    lines = ["# Space-time vs frame-by-frame vs next-token video (shapes video world)", "", res["question"], "",
             f"N = {st['n']} clips per cell, the same captions for every backbone ({st['prompts']}); {st['seeds']}. "
             f"Diffusion: `{st['solver']}` on each backbone's default grid, guidance scale {st['scale']:g}; next-token: "
             f"{st['ar']}. Intervals: 95% bootstrap over clips ({st['bootstrap_resamples']} resamples); differences are "
             "paired (the same resample indices on both sides) and claimed only where the interval excludes 0.", "",
             "## In short", "", *_claims(res), "",
             "Reading it: the frame-by-frame baseline is told the motion frame by frame (each frame's caption names "
             "that frame's position, size or colour, `frame_captions`), so its motion accuracy measures the image "
             "model following frame captions, not motion planning; what it cannot do is keep one clip coherent "
             "across independently sampled frames: its frame-to-frame change (flicker ratio against real clips) and "
             "its FVD-style distance, which sees the clip as a whole, are where it fails. The space-time model is "
             "given only the clip caption and must plan the motion itself. The next-token model's shape accuracy "
             "is capped by its tokenizer (2x2 latent patches round corners; its model card measures 0.76 on "
             "tokenized real clips).", "",
             "## Per cell", "",
             "| backbone | setting | evals / clip | GFLOPs / clip | s / clip | overall | motion | colour | shape | count | "
             "flicker ratio | identity flicker | FVD [95%] | FVD-inf [95%] |", "|---|---|" + "---|" * 12]
    for r in res["cells"]:
        f = r["fvd"]
        lines.append(f"| {r['backbone']} | {r['setting']} | {r['evals_per_clip']} | {r['flops_per_clip'] / 1e9:.2f} | "
                     f"{r['wall_s_per_clip']:.3f} | " + " | ".join(_ci(r[a]) for a in ATTRS_SHOWN)
                     + f" | {_ci(r['flicker_ratio'], 2)} | {_ci(r['identity_flicker'])} | "
                     f"{f['fid']:.1f} [{f['fid_ci_low']:.1f}, "
                     f"{f['fid_ci_high']:.1f}] | {f['fid_inf']:.1f} [{f['fid_inf_ci_low']:.1f}, {f['fid_inf_ci_high']:.1f}] |")
    rl = res["real_clips"]
    lines.append("| real clips (ceiling / floor) | - | - | - | - | " + " | ".join(_ci(rl[a]) for a in ATTRS_SHOWN)
                 + f" | 1 | {_ci(rl['identity_flicker'])} | {rl['fvd']['fid']:.1f} [{rl['fvd']['fid_ci_low']:.1f}, "
                 f"{rl['fvd']['fid_ci_high']:.1f}] | {rl['fvd']['fid_inf']:.1f} [{rl['fvd']['fid_inf_ci_low']:.1f}, "
                 f"{rl['fvd']['fid_inf_ci_high']:.1f}] |")
    lines += ["", "## Paired differences", "",
              "| a - b | steps | overall | motion | colour | shape | count | frame change | identity flicker | FVD |",
              "|---|---|" + "---|" * 8]
    for d in res["paired_differences"]:
        lines.append(f"| {d['a']} - {d['b']} | {d['steps']} | " + " | ".join(_d(d[k]) for k in
                     (*ATTRS_SHOWN, "frame_change", "identity_flicker")) + f" | {_d(d['fvd'], 1)} |")
    fe = res["feature_extractor"]
    lines += ["", "## How each number is measured", "",
              "- motion / overall / colour / shape / count: `solverzoo.models.worlds.video_eval` (the shipped video "
              "classifier's per-frame predictions; motion decided by the world's stated rule on the predicted track). "
              "The real-clips row is the classifier's ceiling on real data.",
              "- flicker ratio: the clips' mean squared frame-to-frame pixel change over that of the real clips of the same "
              "captions (1 = as smooth as real data; above 1: flicker; below 1: too static). Frame change in the paired "
              "table is the difference of the per-clip mean squared change.",
              "- identity flicker: the fraction of consecutive frame pairs where the first object's predicted shape changes.",
              f"- FVD-style distance: Fréchet distance of `{fe['name']}` clip features ({fe['num_features']}-d) against "
              f"{res['reference']['n']} real clips (world seed {res['reference']['identity']['seed']}); FVD-inf: the "
              "FID-infinity extrapolation of the same (Chong & Forsyth 2020). At this N both carry a 1/N bias shared by "
              "every row; the real-clips row is the floor.",
              "- cost: network evaluations per clip (diffusion NFE, guided evaluations counted once per branch; AR forward "
              "passes, one per token, CFG branches batched and counted as in the model card), FLOPs per clip by torch's "
              "FLOP counter on the same path for all three (matrix products and convolutions), wall seconds per clip on "
              f"{st['threads']} CPU threads (batch sampling, decoding included; other jobs may share the machine: "
              "`benchmarks/video_speed.py` times sampling alone).", "",
              "Samples: `real.png` and one strip per cell (`<backbone>_<steps>steps.png`, `shapes-video-ar.png`): six clips, "
              "one row of frames each (captions in `strip_prompts.txt`).", "",
              f"Reproduce: `{res['command']}` ({res['wall_s']:.0f} s wall). Versions: {res['versions']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--scale", type=float, default=3.0, help="diffusion guidance scale (cfg)")
    ap.add_argument("--ar-temperature", type=float, default=0.7,
                    help="AR sampling temperature (0.7 and --ar-scale 2: the best of the settings its model card compares, "
                         "chosen on prompts the report does not use)")
    ap.add_argument("--ar-scale", type=float, default=2.0, help="AR guidance scale on logits")
    ap.add_argument("--ar-top-k", type=int, default=0, help="0: off")
    ap.add_argument("--backbones", nargs="+", default=[SPACE_TIME, FRAMES, AR])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reference-n", type=int, default=5000, help="real clips behind the FVD reference statistics")
    ap.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--ci", type=float, default=0.95)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="outputs/video/cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/video")
    ap.add_argument("--render-only", action="store_true", help="rewrite index.md from the results.json in --out")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.loads((Path(args.out) / "results.json").read_text())
        (Path(args.out) / "index.md").write_text(markdown(res))
        return 0
    args.mcfg = _metrics_cfg(args.reference_n)
    script = "benchmarks/video_compare.py " + " ".join(argv or sys.argv[1:])
    args.command = f"OMP_NUM_THREADS={args.threads} .venv/bin/python {script}"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    res = run(args)
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (Path(args.out) / "index.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
