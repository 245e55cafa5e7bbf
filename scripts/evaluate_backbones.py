"""Measure how well the shipped DiTs follow their prompts and write it on their model cards.

For each shapes backbone: N held-out captions (ShapesWorld seed 909), one sample each (seed i),
50 steps of a strong solver, with and without classifier-free guidance; the shipped attribute
classifier checks count, shapes, colours and positions (GenEval-style exact match). The
classifier's own accuracy on real held-out images is the ceiling.

    .venv/bin/python scripts/evaluate_backbones.py [--n 200]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from solverzoo.backbone import load_backbone
from solverzoo.bench.generate import generate
from solverzoo.models import weights
from solverzoo.models.images import save_grid
from solverzoo.models.nets.classifier import matches
from solverzoo.models.train import model_card
from solverzoo.models.worlds import ShapesWorld, parse_caption

SETTINGS = {"shapes-eps": ("dpmpp_2m", None), "shapes-flow": ("dpmpp_2m", None), "digits": ("dpmpp_2m", None)}


def prompt_accuracy(bb, captions, **kw) -> tuple[float, torch.Tensor]:
    out = generate(bb, captions, seeds=range(len(captions)), **kw)
    with torch.no_grad():
        if bb.world.name == "digits":
            pred = bb.classifier(out.images).argmax(-1)
            want = torch.tensor([bb.conditioner.label(c) for c in captions])
            return float((pred == want).float().mean()), out.images
        pred = bb.classifier.predict(out.images)
    return float(np.mean([matches(parse_caption(c), p) for c, p in zip(captions, pred)])), out.images


def load_vae_latents(imgs: np.ndarray) -> torch.Tensor:
    from solverzoo.models.nets import VAE

    vae = weights.load_into(VAE(), "shapes-vae")
    with torch.no_grad():
        return vae.to_latent(torch.from_numpy(imgs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(2)
    world = ShapesWorld(909)
    imgs, captions, _ = world.batch(0, args.n)
    results = {}
    for name, (solver, _) in SETTINGS.items():
        bb = load_backbone(name)
        if bb.world.name == "digits":
            from solverzoo.models.worlds import DigitsWorld

            caps = [DigitsWorld.caption(i % 10) for i in range(args.n)]
            res = {"n": args.n, "steps": args.steps, "solver": solver, "grid": bb.default_grid,
                   "prompts": "a handwritten d, d = i mod 10", "classifier_heldout_accuracy": weights.read_meta(
                       weights.resolve("digits-classifier"))["record"]["heldout_accuracy"]}
        else:
            caps = captions
            with torch.no_grad():
                real = float(np.mean([matches(parse_caption(c), p)
                                      for c, p in zip(captions, bb.classifier.predict(torch.from_numpy(imgs)))]))
                vae_rt = float(np.mean([matches(parse_caption(c), p) for c, p in zip(captions, bb.classifier.predict(
                    bb.decode(load_vae_latents(imgs))))]))
            res = {"n": args.n, "steps": args.steps, "solver": solver, "grid": bb.default_grid, "eval_world_seed": 909,
                   "classifier_on_real_images": real, "classifier_on_vae_reconstructions": vae_rt}
        for label, guidance, scale in (("cfg_scale_4", "cfg", 4.0), ("no_guidance", None, 1.0)):
            acc, images = prompt_accuracy(bb, caps, solver=solver, steps=args.steps, guidance=guidance, scale=scale)
            res[f"prompt_accuracy_{label}"] = acc
            if label == "cfg_scale_4":
                save_grid(images[:64], Path(f"reports/backbones/{name}_samples.png"), ncol=8)
        results[name] = res
        print(name, json.dumps(res), flush=True)
        path = weights.resolve(bb.artifact)
        meta = weights.read_meta(path)
        ev = {**res, "command": f"python scripts/evaluate_backbones.py --n {args.n} --steps {args.steps}",
              "samples": f"reports/backbones/{name}_samples.png (first 64 prompts, CFG 4)"}
        tp = Path("benchmarks/results/dit_throughput.json")
        if tp.exists() and bb.world.name == "shapes":  # the benchmark measures the shapes DiT architecture
            t = json.loads(tp.read_text())
            ev["throughput"] = {"command": t["command"], "threads": t["threads"], "gpu": t["gpu"],
                                "rows": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                                         for r in t["rows"]]}
        path.with_suffix(".md").write_text(model_card(meta["config"], meta["record"], meta, evaluation=ev))
    Path("reports/backbones").mkdir(parents=True, exist_ok=True)
    (Path("reports/backbones") / "evaluation.json").write_text(json.dumps(results, indent=2))
    with open("reports/backbones/captions.txt", "w") as fh:
        fh.write("\n".join(captions[:64]) + "\n")


if __name__ == "__main__":
    main()
