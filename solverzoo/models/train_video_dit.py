"""Training of the space-time video DiT (``solverzoo train video_dit``): rectified flow on per-frame
``shapes-vae`` latents of the procedural shapes-video world's clips, conditioned on the frozen
MiniLM text encoder, optionally started from the trained image DiT (``init_from``, see
:func:`solverzoo.models.nets.video_dit.inflate_from`). Writes EMA weights (fp16) and a model card."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from solverzoo.models import weights
from solverzoo.models.nets import VAE, DiT
from solverzoo.models.nets.video_dit import VideoDiT, inflate_from
from solverzoo.models.train import _log, _optimise, _versions

ENCODE_CHUNK = 64  # clips generated and VAE-encoded at a time (bounds the memory of the pixel clips)


def clip_latents(world, n_clips: int, vae: VAE) -> tuple[torch.Tensor, list[str]]:
    """Per-frame VAE latents ``(n_clips, T, 4, 8, 8)`` of the world's clips 0..n_clips-1 and their captions."""
    lats, caps = [], []
    with torch.no_grad():
        for start in range(0, n_clips, ENCODE_CHUNK):
            clips, c, _ = world.batch(start, min(ENCODE_CHUNK, n_clips - start))
            x = torch.from_numpy(np.asarray(clips, dtype=np.float32))
            B, T = x.shape[:2]
            z = vae.to_latent(x.reshape(B * T, *x.shape[2:]))
            lats.append(z.reshape(B, T, *z.shape[1:]))
            caps += list(c)
    return torch.cat(lats), caps


def video_loss(net, sched, cfg: dict, time_in, x0: torch.Tensor, g: torch.Generator, **cond) -> torch.Tensor:
    """Mean squared error of ``cfg["prediction"]`` on clips ``x0`` (B, T, C, H, W) at logit-normal times
    (one time per clip, clipped from the ends; ``cfg["time_shift"]`` > 1 moves them toward noise, where
    a clip's motion and its direction are decided): :func:`solverzoo.models.train._diffusion_loss`
    for 5-D states."""
    import torch.nn.functional as F

    from solverzoo.prediction import Prediction, to_output

    if sched.discrete_steps:
        raise ValueError("train_video_dit trains on a continuous schedule (e.g. flow); got a discrete one")
    eps = torch.randn(x0.shape, generator=g)
    t = torch.sigmoid(torch.randn(x0.shape[0], generator=g, dtype=torch.float64))
    shift = float(cfg.get("time_shift", 1.0))
    if shift != 1.0:  # toward noise (t = 1), as the flow_shift grid samples: t -> s t / (1 + (s - 1) t)
        t = shift * t / (1.0 + (shift - 1.0) * t)
    t = t.clamp(1e-4, 1 - 1e-4)
    view = (-1,) + (1,) * (x0.dim() - 1)
    a, s = (v.float().reshape(view) for v in sched.alpha_sigma(t))
    ad = sd = None
    if cfg["prediction"] == "velocity":
        ad, sd = (v.float().reshape(view) for v in sched.alpha_sigma_dot(t))
    target = to_output(cfg["prediction"], Prediction(x0, eps), a, s, ad, sd)
    return F.mse_loss(net(a * x0 + s * eps, time_in(sched, t).float(), **cond), target)


def build_net(cfg: dict) -> tuple[VideoDiT, dict | None]:
    """The VideoDiT of ``cfg["net"]`` and, when it continues an earlier video_dit run, that run's metadata.

    ``cfg["init_from"]``: None (random init), a trained image DiT (inflated, see
    :func:`~solverzoo.models.nets.video_dit.inflate_from`), or a trained VideoDiT (its weights
    loaded: a further training stage)."""
    net = VideoDiT(**cfg["net"])
    if not cfg.get("init_from"):
        return net, None
    src = weights.resolve(cfg["init_from"])
    meta = weights.read_meta(src)
    if meta["config"].get("kind") == "video_dit":
        return _continue(net, src, meta, cfg), meta
    image = weights.load_into(DiT(**meta["config"]["net"]), src).float()
    return inflate_from(net, image), None


def _continue(net: VideoDiT, src, meta: dict, cfg: dict) -> VideoDiT:
    """Load an earlier stage's weights into ``net``. The nets must match, except that this stage
    may switch ``frame_embed`` on (its zero-initialised map then starts the stage as exactly the
    earlier network)."""
    old, new = dict(meta["config"]["net"]), dict(cfg["net"])
    adds_frame_embed = new.pop("frame_embed", False) and not old.pop("frame_embed", False)
    if not adds_frame_embed:
        old.pop("frame_embed", None)
    if old != new:
        raise ValueError(f"init_from {cfg['init_from']}: its net {meta['config']['net']} differs from {cfg['net']} "
                         "(a further stage may only switch frame_embed on)")
    if not adds_frame_embed:
        return weights.load_into(net, src).float()
    from solverzoo.models.safe_load import load_state_dict_safely

    state = {k: v.float() for k, v in load_state_dict_safely(src, what="weights").items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("frame_embed.") for k in missing):
        raise ValueError(f"init_from {cfg['init_from']}: unexpected weights {unexpected}, missing {missing}")
    return net.float()


def _lr(cfg: dict, step: int) -> float:
    """The learning rate at ``step``: linear warm-up over 200 steps, then constant, or with
    ``lr_schedule: cosine`` a cosine decay to 0 at the last step."""
    warm = cfg["lr"] * min(1.0, (step + 1) / 200)
    if cfg.get("lr_schedule", "constant") == "constant":
        return warm
    if cfg["lr_schedule"] != "cosine":
        raise ValueError(f"lr_schedule {cfg['lr_schedule']!r}: expected 'constant' or 'cosine'")
    return warm * 0.5 * (1.0 + math.cos(math.pi * step / cfg["steps"]))


def train_video_dit(cfg: dict, out_dir=None) -> dict:
    """Train the VideoDiT of ``cfg`` (see ``configs/video_dit.yaml``); returns the training record."""
    from solverzoo import schedule_from_spec
    from solverzoo.model import TIME_INPUTS
    from solverzoo.models.conditioners import conditioner_by_name
    from solverzoo.models.worlds.video import ShapesVideoWorld

    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    world = ShapesVideoWorld(cfg["data_seed"], frames=cfg["net"]["frames"])
    vae = weights.load_into(VAE(), cfg["vae"])
    lat, caps = clip_latents(world, cfg["n_clips"], vae)
    cond = conditioner_by_name(cfg.get("conditioner"))
    uniq = sorted(set(caps) | {""})
    row = {c: i for i, c in enumerate(uniq)}
    enc = cond.encode(uniq)
    cap_idx = torch.tensor([row[c] for c in caps])
    null_row = row[""]
    _log(f"video dit data ready: {len(lat)} clips {tuple(lat.shape[1:])}, {len(uniq)} captions, {time.time() - t0:.0f}s")
    sched = schedule_from_spec(cfg["schedule"])
    time_in = TIME_INPUTS[cfg["time_input"]]
    net, earlier = build_net(cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=0.0)
    hist, t_train = [], time.time()
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(lat), (cfg["batch"],), generator=g)
        ci = cap_idx[idx]
        drop = torch.rand(cfg["batch"], generator=g) < cfg["cond_dropout"]
        ci = torch.where(drop, torch.full_like(ci, null_row), ci)
        loss = video_loss(net, sched, cfg, time_in, lat[idx], g, tokens=enc["tokens"][ci], mask=enc["mask"][ci],
                               pooled=enc["pooled"][ci])
        _optimise(net, ema, opt, loss, step, cfg, lr=_lr(cfg, step))
        hist.append(float(loss.detach()))
        if step % 50 == 0:
            _log(f"video dit step {step} loss {np.mean(hist[-50:]):.4f} ({time.time() - t0:.0f}s, "
                 f"{(time.time() - t_train) / (step + 1):.2f} s/step)")
    record = {"final_loss": float(np.mean(hist[-200:])), "wall_s": time.time() - t0, "train_s": time.time() - t_train,
              "s_per_step": (time.time() - t_train) / max(1, cfg["steps"]), "threads": torch.get_num_threads(),
              "n_clips": len(lat), "n_captions": len(uniq)}
    if earlier is not None:  # a further stage: what the weights it started from went through
        record["earlier_stages"] = earlier["record"].get("earlier_stages", []) + [
            {"command": earlier["command"], "config": {k: v for k, v in earlier["config"].items() if not k.startswith("_")},
             "record": {k: v for k, v in earlier["record"].items() if k != "earlier_stages"}}]
    path = save(ema, cfg, record, out_dir)
    _log(f"wrote {path} and {path.with_suffix('.md')}")
    return record


def save(module: VideoDiT, cfg: dict, record: dict, out_dir=None) -> Path:
    """Write the weights (fp16) with config, record and command in the metadata, and the model card beside them."""
    command = f"solverzoo train {cfg['_config_name']}" + "".join(f" {o}" for o in cfg.get("_overrides", []))
    meta = {"config": cfg, "record": record, "versions": _versions(), "command": command}
    path = weights.save(module, cfg["artifact"], meta, half=True, directory=out_dir)
    path.with_suffix(".md").write_text(model_card(cfg, record, command, hashlib.sha256(path.read_bytes()).hexdigest()))
    return path


def model_card(cfg: dict, record: dict, command: str, sha256: str) -> str:
    """The model card of a trained VideoDiT: data, objective, steps, seed, final loss, wall time, command."""
    n = cfg["net"]
    stages = record.get("earlier_stages", [])
    if stages:  # a further stage: the whole chain reproduces the weights
        command = " && ".join([st["command"] for st in stages] + [command])
    source = stages[0]["config"].get("init_from") if stages else cfg.get("init_from")
    init = (f"{'stage 1 ' if stages else ''}inflated from the trained image DiT `{source}` (its embeddings, "
            "spatial attention, cross-attention, MLPs and modulation copied; the new temporal attention gated at zero, "
            "so training starts from the image model applied to every frame)" if source else "initialised at random (adaLN-Zero)")
    lines = [
        f"# {cfg['artifact']}", "",
        f"Kind: {cfg['kind']} (`solverzoo.models.nets.video_dit.VideoDiT`, the `shapes-video` backbone). "
        f"Reproduce: `{command}` (seeded; CPU; each stage's thread count below).", "",
        f"Weights: `{cfg['artifact']}.safetensors` (EMA {cfg['ema']}, fp16), SHA-256 `{sha256}`.", "",
        f"Network: space-time DiT over per-frame latents (B, {n['frames']}, {n['in_channels']}, {n['input_size']}, "
        f"{n['input_size']}); {n['patch']}x{n['patch']} patches, hidden {n['hidden']}, depth {n['depth']}, {n['heads']} heads; "
        "each block spatial self-attention + temporal self-attention + cross-attention to the text tokens + MLP, adaLN-Zero "
        f"from timestep + pooled text{_frame_embed_words(n, stages)}; {init}.", "", *_stage_lines(stages, record),
        f"Data: the procedural shapes-video world (`solverzoo.models.worlds.video.ShapesVideoWorld`, seed {cfg['data_seed']}, "
        f"clips 0..{cfg['n_clips'] - 1}, {n['frames']} frames of 3x32x32), every frame encoded by `{cfg['vae']}`; captions "
        f"encoded by the frozen MiniLM-L6 (all-MiniLM-L6-v2), dropped to the empty prompt with p = {cfg['cond_dropout']} "
        "for classifier-free guidance.", "",
        f"Objective: mean squared error of the `{cfg['prediction']}` prediction on the `{cfg['schedule']['name']}` path "
        "(rectified flow) at logit-normal times"
        + (f" shifted toward noise (t -> s t / (1 + (s - 1) t), s = {cfg['time_shift']:g})"
           if float(cfg.get("time_shift", 1.0)) != 1.0 else "")
        + ", AdamW, linear warm-up over 200 steps"
        + (", cosine decay to 0" if cfg.get("lr_schedule") == "cosine" else "") + ", gradient clipping at 1.", "",
        f"Training: {cfg['steps']} steps of batch {cfg['batch']}, lr {cfg['lr']}, seed {cfg['seed']}; final loss "
        f"(mean of the last 200 steps) {record['final_loss']:.4f}; wall time {record['wall_s'] / 60:.1f} min "
        f"({record['s_per_step']:.2f} s per step). Training fits in {math.ceil(record['wall_s'] / 60)} min on "
        f"{record['threads']} thread{'s' if record['threads'] != 1 else ''} "
        "(measured on a 2-core machine shared with other jobs).", "",
        "Evaluation: [`reports/video/`](../../../reports/video/index.md) (`benchmarks/video_compare.py`: motion "
        "accuracy, flicker, FVD-style distance and cost against the frame-by-frame and next-token baselines) and "
        "[`reports/video_motion/`](../../../reports/video_motion/index.md) (`benchmarks/video_motion.py`: motion accuracy "
        "per asked motion and how the clips were read, paired against the previous stage's weights).", "",
        "## Config", "", "```json", json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, indent=2), "```", "",
        "## Record", "", "```json", json.dumps(record, indent=2), "```", "", f"Software: {_versions()}.", ""]
    return "\n".join(lines)


def _frame_embed_words(net: dict, stages: list[dict]) -> str:
    """The card's words for the frame-position embedding (``net.frame_embed``), and the stage that switched it on."""
    if not net.get("frame_embed"):
        return ""
    first = next((i for i, st in enumerate(stages, 1) if st["config"]["net"].get("frame_embed")), len(stages) + 1)
    return (", and the frame's position added to every token at the input (a learned linear map of the 1-D sine-cosine "
            f"embedding, zero-initialised; switched on in stage {first})")


def _stage_lines(stages: list[dict], record: dict) -> list[str]:
    """Card lines for a weights file trained in several stages (each stage's data, steps, loss, time)."""
    if not stages:
        return []
    lines = [f"Trained in {len(stages) + 1} stages, each continuing the previous one's EMA weights with a fresh optimiser "
             "(the last stage is described below; all of them in the record):"]
    for i, st in enumerate(stages, 1):
        c, r = st["config"], st["record"]
        lines.append(f"- stage {i}: `{st['command']}`: clips 0..{c['n_clips'] - 1} of world seed {c['data_seed']}, "
                     f"{c['steps']} steps of batch {c['batch']}, lr {c['lr']}, seed {c['seed']}, "
                     f"final loss {r['final_loss']:.4f}, "
                     f"wall time {r['wall_s'] / 60:.1f} min on {r['threads']} thread(s)")
    lines.append(f"- stage {len(stages) + 1}: this run; total wall time "
                 f"{(record['wall_s'] + sum(st['record']['wall_s'] for st in stages)) / 60:.1f} min")
    return lines + [""]
