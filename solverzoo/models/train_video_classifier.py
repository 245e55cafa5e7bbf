"""Training recipe of the shapes video world's attribute classifier (``solverzoo train video_classifier``).

Fresh clips of :class:`~solverzoo.models.worlds.video.ShapesVideoWorld` every step, with small
Gaussian pixel noise (robustness to sampler noise, as for the image classifier); per-frame losses
on the first-named object's centre / radius / colour / shape and the count, and a clip loss on the
motion class. The record holds held-out accuracies on fresh clips of another world seed, measured
with the weights as shipped (rounded to float16)."""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from solverzoo.models import weights
from solverzoo.models.nets.video_classifier import GEOMETRY_SCALE, VideoClassifier
from solverzoo.models.train import _log, _versions, model_card
from solverzoo.models.worlds.shapes import COLOUR_NAMES, SHAPES
from solverzoo.models.worlds.video import MOTIONS, ShapesVideoWorld


def video_targets(attrs: list[dict]) -> dict[str, torch.Tensor]:
    """Training targets of a batch from the world's ground truth: per frame (B, T) the first-named
    object's ``geometry`` (B, T, 3: centre and radius, centred and scaled by GEOMETRY_SCALE),
    ``colour`` and ``shape`` indices and ``count`` - 1; per clip the ``motion`` index."""
    tracks = [a["tracks"][0] for a in attrs]
    geo = torch.tensor([[(cx - 16.0, cy - 16.0, r - 5.5) for cx, cy, r, _ in tr] for tr in tracks]) / GEOMETRY_SCALE
    colour = torch.tensor([[COLOUR_NAMES.index(p[3]) for p in tr] for tr in tracks])
    frames = colour.shape[1]
    shape = torch.tensor([SHAPES.index(a["objects"][0]["shape"]) for a in attrs])[:, None].expand(-1, frames)
    count = torch.tensor([a["count"] - 1 for a in attrs])[:, None].expand(-1, frames)
    motion = torch.tensor([MOTIONS.index(a["motion"]) for a in attrs])
    return {"geometry": geo.float(), "colour": colour, "shape": shape, "count": count, "motion": motion}


def video_loss(out: dict[str, torch.Tensor], tg: dict[str, torch.Tensor], geometry_weight: float) -> torch.Tensor:
    """Cross-entropy of the per-frame classes and the motion, plus ``geometry_weight`` x the mean
    squared error of the scaled centre / radius."""
    loss = geometry_weight * F.mse_loss(out["geometry"], tg["geometry"]) + F.cross_entropy(out["motion"], tg["motion"])
    for k in ("colour", "shape", "count"):
        loss = loss + F.cross_entropy(out[k].flatten(0, 1), tg[k].flatten())
    return loss


def evaluate(net: VideoClassifier, seed: int, n: int, frames: int, chunk: int = 100) -> dict:
    """Held-out accuracies on clips 0 .. n-1 of ``ShapesVideoWorld(seed)``: the motion rule
    (:func:`~solverzoo.models.nets.video_classifier.motion_from_frames` on predicted frames) overall
    and per motion, the motion head, per-frame colour and shape, clip count, centre and radius RMSE."""
    world = ShapesVideoWorld(seed, frames=frames)
    rows, err_c, err_r, col, shp = [], [], [], [], []
    for start in range(0, n, chunk):
        x, _, attrs = world.batch(start, min(chunk, n - start))
        pred = net.predict(torch.from_numpy(x))
        for a, p in zip(attrs, pred):
            tr, f = a["tracks"][0], p["frames"]
            err_c += [(f["cx"][t] - tr[t][0]) ** 2 + (f["cy"][t] - tr[t][1]) ** 2 for t in range(frames)]
            err_r += [(f["radius"][t] - tr[t][2]) ** 2 for t in range(frames)]
            col += [COLOUR_NAMES[f["colour"][t]] == tr[t][3] for t in range(frames)]
            shp += [SHAPES[s] == a["objects"][0]["shape"] for s in f["shape"]]
            rows.append((a["motion"], p["motion"] == a["motion"], p["motion_head"] == a["motion"], p["count"] == a["count"]))
    per_motion = {m: float(np.mean([r[1] for r in rows if r[0] == m])) for m in MOTIONS if any(r[0] == m for r in rows)}
    return {"heldout_n": n, "motion_rule_accuracy": float(np.mean([r[1] for r in rows])),
            "motion_head_accuracy": float(np.mean([r[2] for r in rows])), "count_accuracy": float(np.mean([r[3] for r in rows])),
            "frame_colour_accuracy": float(np.mean(col)), "frame_shape_accuracy": float(np.mean(shp)),
            "centre_rmse_px": float(np.sqrt(np.mean(err_c))), "radius_rmse_px": float(np.sqrt(np.mean(err_r))),
            "motion_rule_accuracy_by_motion": per_motion}


def _card_text(cfg: dict, record: dict, meta: dict, sha: str) -> str:
    extra = [
        f"Data: fresh clips of the procedural shapes video world (`solverzoo.models.worlds.video.ShapesVideoWorld`, "
        f"seed {cfg['data_seed']}, {cfg['frames']} frames of 3x32x32 in [-1, 1]; step s uses clips "
        f"s*{cfg['batch']} .. s*{cfg['batch']}+{cfg['batch'] - 1}), with Gaussian pixel noise of std {cfg['noise']}.", "",
        "Objective: per frame, the first-named object's centre and radius (mean squared error in units of "
        f"{GEOMETRY_SCALE:g} px, weight {cfg['geometry_weight']}), its colour and shape and the object count "
        "(cross-entropy); per clip, the motion class (cross-entropy). AdamW (weight decay 1e-4), linear warm-up over "
        f"{cfg['warmup']} steps then cosine decay, gradient clipping at 1; {cfg['steps']} steps, batch {cfg['batch']} clips, "
        f"seed {cfg['seed']}.", "",
        f"Evaluation: {cfg['eval_n']} held-out clips of world seed {cfg['eval_seed']}, with the float16 weights as shipped. "
        "`motion_rule_accuracy` is the motion decided by `motion_from_frames` (thresholds on the predicted per-frame "
        "trajectory) - the rule the video evaluation world scores with; `motion_head_accuracy` is the learned head's.", "",
        f"Final loss (mean of the last 100 steps): {record['final_loss']:.4f}; wall time {record['wall_s']:.0f} s "
        "on one CPU thread.",
        ""]
    return model_card(cfg, record, meta, None, weights_sha256=sha) + "\n" + "\n".join(extra)


def _finish(net: VideoClassifier, cfg: dict, record: dict, out_dir) -> Path:
    meta = {"config": cfg, "record": record, "versions": _versions(),
            "command": f"solverzoo train {cfg['_config_name']}" + "".join(f" {o}" for o in cfg.get("_overrides", []))}
    path = weights.save(net, cfg["artifact"], meta, half=True, directory=out_dir)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    card = Path(path).with_suffix(".md")
    card.write_text(_card_text(cfg, record, meta, sha))
    _log(f"wrote {path} and {card}")
    return path


def train_video_classifier(cfg: dict, out_dir=None) -> dict:
    """Trains :class:`VideoClassifier` by ``cfg`` (``configs/video_classifier.yaml``), writes the
    float16 safetensors and its card into ``out_dir`` (default: the shipped weights) and returns
    the training record (final loss, wall time, held-out accuracies)."""
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    world = ShapesVideoWorld(cfg["data_seed"], frames=cfg["frames"])
    net = VideoClassifier(**cfg["net"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    t0, hist = time.time(), []
    for step in range(cfg["steps"]):
        x, _, attrs = world.batch(step * cfg["batch"], cfg["batch"])
        x = torch.from_numpy(x)
        x = x + cfg["noise"] * torch.randn(x.shape, generator=g)
        loss = video_loss(net(x), video_targets(attrs), cfg["geometry_weight"])
        warm = min(1.0, (step + 1) / cfg["warmup"])
        for grp in opt.param_groups:
            grp["lr"] = cfg["lr"] * warm * 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        hist.append(float(loss.detach()))
        if step % 100 == 0 or step == cfg["steps"] - 1:
            _log(f"video classifier step {step} loss {np.mean(hist[-50:]):.4f} ({time.time() - t0:.0f}s)")
    net.eval()
    wall = time.time() - t0
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.half().float())  # evaluate the weights as shipped
    record = {"final_loss": float(np.mean(hist[-100:])), "wall_s": wall, "steps": cfg["steps"]}
    record.update(evaluate(net, cfg["eval_seed"], cfg["eval_n"], cfg["frames"]))
    _log(f"video classifier held-out: {record}")
    _finish(net, cfg, record, out_dir)
    return record
