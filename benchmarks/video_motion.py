"""Does the space-time video DiT move objects as the caption asks? Per asked motion, with the
confusion (asked -> the motion the classifier's rule reads off the clip), for the shipped
``shapes-video`` weights and, paired on the same captions and starting noise, an earlier weights
file (``--baseline``, e.g. the previous training stage out of git).

Both networks are sampled with the same solver, grid, steps, guidance and per-clip noise (clip i:
seed i), for the first ``--n`` captions of the world seed the video report uses
(``ShapesVideoWorld(prompt_seed(909))``), so the difference in motion accuracy is a *paired*
bootstrap over clips and is claimed only where its interval excludes 0.

Run (the committed report: the baseline is the previous training stage's weights, stage 3, from
commit 9c6cd2d; stage 2's are at 132f3f4)::

    git show 9c6cd2d:solverzoo/models/weights/shapes-dit-video.safetensors > /tmp/stage3.safetensors
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video_motion.py --baseline /tmp/stage3.safetensors \\
        --out reports/video_motion
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def _backbone_with(path: str):
    """``shapes-video`` with the VideoDiT weights of ``path`` (its own config from the file's metadata)."""
    from solverzoo.backbone import load_backbone
    from solverzoo.model import Model
    from solverzoo.models import weights
    from solverzoo.models.nets.video_dit import VideoDiT

    bb = load_backbone("shapes-video")
    meta = weights.read_meta(path)
    if meta.get("config", {}).get("kind") != "video_dit":
        raise SystemExit(f"--baseline {path}: not a VideoDiT weights file (its metadata kind is "
                         f"{meta.get('config', {}).get('kind')!r}); pass a shapes-dit-video.safetensors")
    cfg = meta["config"]
    net = weights.load_into(VideoDiT(**cfg["net"]), path).eval()
    model = Model(net, cfg["prediction"], bb.model.schedule, time_input=cfg["time_input"])
    wid = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return dataclasses.replace(bb, model=model, weights_id=wid)


def _sample(bb, prompts, args) -> dict:
    from solverzoo.bench.generate import generate

    t0 = time.perf_counter()
    out = generate(bb, prompts, solver=args.solver, steps=args.steps, guidance="cfg" if args.scale != 1.0 else None,
                   scale=args.scale, seeds=range(len(prompts)), batch_size=args.batch)
    with torch.no_grad():
        preds = bb.world.predict(out.images)
        hits = bb.world.score_attributes(out.images, out.latents, prompts)
    return {"got": [p["motion"] for p in preds], "hits": hits, "wall_s": time.perf_counter() - t0}


def _prop(h: np.ndarray, args) -> dict:
    from solverzoo.bench.metrics import proportion_ci

    p, lo, hi = proportion_ci(h, args.reps, args.ci, seed=args.boot_seed)
    return {"value": p, "ci_low": lo, "ci_high": hi, "n": int(len(h))}


def _summary(cell: dict, asked: list, args) -> dict:
    motion = cell["hits"]["motion"]
    by = {}
    for m in sorted(set(asked)):
        idx = np.array([a == m for a in asked])
        by[m] = {**_prop(motion[idx], args), "got": dict(Counter(g for g, i in zip(cell["got"], idx) if i).most_common())}
    return {"motion": _prop(motion, args), "overall": _prop(cell["hits"]["overall"], args), "by_motion": by,
            "wall_s": cell["wall_s"]}


def run(args) -> dict:
    from solverzoo.backbone import load_backbone
    from solverzoo.bench.resampling import paired_bootstrap
    from solverzoo.models import weights
    from solverzoo.models.worlds.video import parse_video_caption
    from solverzoo.seeds import prompt_seed

    torch.set_num_threads(args.threads)
    shipped = load_backbone("shapes-video")
    prompts = shipped.world.prompts(prompt_seed(909), args.n)
    asked = [parse_video_caption(p)["motion"] for p in prompts]
    base = _backbone_with(args.baseline) if args.baseline else None  # refused before any sampling
    cells = {"shipped": _sample(shipped, prompts, args)}
    names = {"shipped": f"shapes-video (shipped weights {shipped.weights_id})"}
    if base is not None:
        cells["baseline"] = _sample(base, prompts, args)
        names["baseline"] = f"baseline {Path(args.baseline).name} (weights {base.weights_id})"
    res = {"question": "does the space-time video DiT move objects as asked, per asked motion?",
           "n": args.n, "prompts": "ShapesVideoWorld(prompt_seed(909)) first n captions", "seeds": "clip i: seed i",
           "setting": f"{args.solver} {args.steps} steps on the backbone's default grid, cfg {args.scale:g}",
           "names": names, "cells": {k: _summary(c, asked, args) for k, c in cells.items()},
           "shipped_stages": len(weights.read_meta(weights.resolve("shapes-dit-video"))["record"].get("earlier_stages", [])) + 1,
           "command": args.command, "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    if args.baseline:
        rng = lambda k: np.random.default_rng([args.boot_seed, k])  # noqa: E731
        res["paired"] = {}
        for k, attr in enumerate(("motion", "overall")):
            d = paired_bootstrap(cells["shipped"]["hits"][attr], cells["baseline"]["hits"][attr], stat=np.mean,
                                 reps=args.reps, rng=rng(k), ci=args.ci)
            res["paired"][attr] = {**d, "resolved": bool(d["ci_low"] > 0 or d["ci_high"] < 0)}
        by = {}
        for j, m in enumerate(sorted(set(asked))):
            idx = np.array([a == m for a in asked])
            d = paired_bootstrap(cells["shipped"]["hits"]["motion"][idx], cells["baseline"]["hits"]["motion"][idx],
                                 stat=np.mean, reps=args.reps, rng=rng(10 + j), ci=args.ci)
            by[m] = {**d, "resolved": bool(d["ci_low"] > 0 or d["ci_high"] < 0), "n": int(idx.sum())}
        res["paired"]["by_motion"] = by
    return res


def _ci(d: dict) -> str:
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _delta(d: dict) -> str:
    s = f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    return s + (" **resolved**" if d["resolved"] else "")


def markdown(res: dict) -> str:
    cells, names = res["cells"], res["names"]
    keys = list(cells)
    lines = ["# Motion following of the space-time video DiT, per asked motion", "", res["question"], "",
             f"N = {res['n']} clips ({res['prompts']}; {res['seeds']}, the same noise for every weights file); "
             f"{res['setting']}. Motion is decided by the video classifier's per-frame predictions and the world's "
             "stated rule (`solverzoo.models.worlds.video_eval.video_hits`). Intervals: 95% bootstrap over clips; "
             "differences are paired (the same resample indices on both sides) and claimed only where the interval "
             "excludes 0.", ""]
    for k in keys:
        lines.append(f"- **{k}**: {names[k]}: motion {_ci(cells[k]['motion'])}, overall {_ci(cells[k]['overall'])} "
                     f"({cells[k]['wall_s']:.0f} s)")
    if "paired" in res:
        lines += ["", f"Paired shipped - baseline: motion {_delta(res['paired']['motion'])}; overall "
                      f"{_delta(res['paired']['overall'])}."]
    lines += ["", "## By asked motion", "",
              "| asked motion | clips | " + " | ".join(f"{k} accuracy" for k in keys)
              + (" | shipped - baseline" if "paired" in res else "") + " | " + " | ".join(f"{k}: read as" for k in keys) + " |",
              "|---|---|" + "---|" * (2 * len(keys) + ("paired" in res))]
    for m in cells[keys[0]]["by_motion"]:
        row = [m, str(cells[keys[0]]["by_motion"][m]["n"])]
        row += [_ci(cells[k]["by_motion"][m]) for k in keys]
        if "paired" in res:
            row.append(_delta(res["paired"]["by_motion"][m]))
        row += [", ".join(f"{g} {c}" for g, c in cells[k]["by_motion"][m]["got"].items()) for k in keys]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "\"read as\": how many clips of that asked motion the rule read as each motion (a direction error, "
                  "e.g. left to right read as right to left, shows the network moving the object in the asked axis the "
                  "wrong way).", "", f"Reproduce: `{res['command']}`. Versions: {res['versions']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="an earlier VideoDiT weights file to compare with, paired")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--ci", type=float, default=0.95)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/video_motion")
    args = ap.parse_args(argv)
    if args.baseline and not Path(args.baseline).is_file():
        raise SystemExit(f"--baseline {args.baseline}: no such file (e.g. git show "
                         "132f3f4:solverzoo/models/weights/shapes-dit-video.safetensors > /tmp/stage2.safetensors)")
    args.command = (f"OMP_NUM_THREADS={args.threads} .venv/bin/python benchmarks/video_motion.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]))
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (out / "index.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
