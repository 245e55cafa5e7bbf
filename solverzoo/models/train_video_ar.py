"""Training of the next-token video model ``shapes-video-ar`` (``solverzoo train video_ar``).

1. Clips of the shapes video world are encoded frame by frame by the shipped ``shapes-vae``.
2. The tokenizer's codebook is fitted by k-means on 2x2 latent patches, then its decoder's
   refiner by latent regression (the mean squared error of the refined looked-up latents).
3. The causal transformer is trained by next-token cross-entropy on the clips' tokens, the
   captions encoded by the frozen MiniLM-L6 and dropped to the empty prompt with probability
   ``cond_dropout`` (classifier-free guidance); AdamW, linear warm-up, cosine decay, gradient
   clipping at 1, EMA of the weights (shipped).

The record states the tokenizer's reconstruction PSNR (decoded frames against the VAE's own
reconstruction and against the real frames, on held-out clips), its codebook usage, and the
transformer's final and held-out loss; the model card is written beside the weights.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from solverzoo.models import weights
from solverzoo.models.nets import VAE
from solverzoo.models.nets.video_ar import VideoAR, VQTokenizer
from solverzoo.models.train import _log, _optimise, _versions


def clip_latents(world, start: int, n: int, vae: VAE, chunk: int = 200, keep_pixels: bool = False):
    """Clips ``start .. start+n`` of ``world`` as scaled VAE latents ``(n, T, 4, 8, 8)``, their captions
    and (``keep_pixels``) the frames ``(n, T, 3, 32, 32)``."""
    lats, caps, pix = [], [], []
    for i in range(start, start + n, chunk):
        x, c, _ = world.batch(i, min(chunk, start + n - i))
        x = torch.from_numpy(x)
        with torch.no_grad():
            lats.append(vae.to_latent(x.flatten(0, 1)).reshape(*x.shape[:2], 4, 8, 8))
        caps += list(c)
        if keep_pixels:
            pix.append(x)
    return torch.cat(lats), caps, (torch.cat(pix) if keep_pixels else None)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4.0 / F.mse_loss(a.float(), b.float())))


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero."""
    return lr * min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * step / steps))


def fit_tokenizer(tok: VQTokenizer, lat: torch.Tensor, cfg: dict, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """k-means codebook on a random subset of the patch vectors of ``lat (N, T, 4, 8, 8)``, then the
    refiner; returns the clips' tokens ``(N, T * grid * grid)`` and the fit's record."""
    t0 = time.time()
    vec = tok.patches(lat).reshape(-1, tok.dim)
    sub = vec[torch.randperm(len(vec), generator=g)[: cfg["kmeans"]["vectors"]]]
    km = tok.fit(sub, cfg["kmeans"]["iters"], g)
    tokens = tok.encode(lat)  # (N, T, grid*grid)
    counts = torch.bincount(tokens.flatten(), minlength=tok.codebook.shape[0]).double()
    prob = counts / counts.sum()
    usage = {"codes_used": int((counts > 0).sum()), "codes": int(len(counts)),
             "perplexity": float(torch.exp(-(prob[prob > 0] * prob[prob > 0].log()).sum()))}
    _log(f"video_ar k-means: {km}, usage {usage} ({time.time() - t0:.0f}s)")
    hist = []
    if tok.refine is not None:
        rc = cfg["refine"]
        frames, coarse = lat.flatten(0, 1), tok.lookup(tokens.flatten(0, 1))
        opt = torch.optim.AdamW(tok.refine.parameters(), lr=rc["lr"], weight_decay=0.0)
        for step in range(rc["steps"]):
            for grp in opt.param_groups:
                grp["lr"] = _lr(step, rc["steps"], rc["lr"], 50)
            idx = torch.randint(0, len(frames), (rc["batch"],), generator=g)
            loss = F.mse_loss(tok.refined(coarse[idx]), frames[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
            if step % 200 == 0:
                _log(f"video_ar refiner step {step} latent mse {np.mean(hist[-50:]):.4f} ({time.time() - t0:.0f}s)")
    tok.eval().requires_grad_(False)
    rec = {"kmeans_inertia": km["inertia"], **usage, "usage_fraction": usage["codes_used"] / usage["codes"],
           "refine_final_latent_mse": float(np.mean(hist[-50:])) if hist else None, "wall_s": time.time() - t0}
    return tokens.flatten(1), rec


@torch.no_grad()
def tokenizer_quality(tok: VQTokenizer, vae: VAE, lat: torch.Tensor, pixels: torch.Tensor) -> dict:
    """Held-out reconstruction of the tokenizer: decoded-frame PSNR (dB) against the VAE's own
    reconstruction and against the real frames, with and without the refiner, and the latent MSE."""
    z = lat.flatten(0, 1)
    x = pixels.flatten(0, 1)
    coarse = tok.lookup(tok.encode(z))
    refined = tok.refined(coarse)
    dec = [vae.from_latent(v).clamp(-1, 1) for v in (z, coarse, refined)]
    return {"psnr_vae_vs_real": psnr(dec[0], x),
            "psnr_vs_vae": psnr(dec[2], dec[0]), "psnr_vs_real": psnr(dec[2], x),
            "psnr_vs_vae_codes_only": psnr(dec[1], dec[0]), "psnr_vs_real_codes_only": psnr(dec[1], x),
            "latent_mse": float(F.mse_loss(refined, z)), "latent_mse_codes_only": float(F.mse_loss(coarse, z)),
            "frames": len(z)}


def _captions(cond, caps: list[str]) -> tuple[dict, torch.Tensor, int]:
    uniq = sorted(set(caps) | {""})
    row = {c: i for i, c in enumerate(uniq)}
    return cond.encode(uniq), torch.tensor([row[c] for c in caps]), row[""]


def train_transformer(model: VideoAR, tokens: torch.Tensor, caps: list[str], cond, cfg: dict, g: torch.Generator):
    """Next-token training with caption dropout; returns the EMA transformer and the loss history."""
    t0 = time.time()
    enc, cap_idx, null_row = _captions(cond, caps)
    _log(f"video_ar: {len(tokens)} clips, {len(enc['tokens'])} captions encoded ({time.time() - t0:.0f}s)")
    net = model.net.train()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=0.01)
    hist = []
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(tokens), (cfg["batch"],), generator=g)
        ci = cap_idx[idx]
        drop = torch.rand(cfg["batch"], generator=g) < cfg["cond_dropout"]
        ci = torch.where(drop, torch.full_like(ci, null_row), ci)
        loss = net.loss(tokens[idx], enc["tokens"][ci], enc["mask"][ci])
        _optimise(net, ema, opt, loss, step, cfg, lr=_lr(step, cfg["steps"], cfg["lr"], cfg["warmup"]))
        hist.append(float(loss.detach()))
        if step % 100 == 0:
            _log(f"video_ar step {step} loss {np.mean(hist[-50:]):.4f} ({time.time() - t0:.0f}s)")
    return ema.eval(), hist


@torch.no_grad()
def heldout_loss(net, tokens: torch.Tensor, caps: list[str], cond) -> dict:
    """Mean next-token cross-entropy (nats per token) of held-out clips with their captions and
    with the empty prompt (how much the caption tells the model)."""
    enc, cap_idx, null_row = _captions(cond, caps)
    out = {}
    for name, rows in (("heldout_loss", cap_idx), ("heldout_loss_null_caption", torch.full_like(cap_idx, null_row))):
        losses = [float(net.loss(tokens[i:i + 50], enc["tokens"][r], enc["mask"][r])) * len(r)
                  for i, r in ((i, rows[i:i + 50]) for i in range(0, len(tokens), 50))]
        out[name] = sum(losses) / len(tokens)
    return out


def train_video_ar(cfg: dict, out_dir=None) -> dict:
    """Fit the tokenizer then the transformer of ``cfg`` (see ``configs/video_ar.yaml``); save the
    pair as ``cfg["artifact"]`` with its model card; return the training record."""
    from solverzoo.models.conditioners import conditioner_by_name
    from solverzoo.models.worlds.video import ShapesVideoWorld

    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    vae = weights.load_into(VAE(), cfg["vae"])
    lat, caps, _ = clip_latents(ShapesVideoWorld(cfg["data_seed"], frames=cfg["frames"]), 0, cfg["n_clips"], vae)
    ev_lat, ev_caps, ev_pix = clip_latents(ShapesVideoWorld(cfg["eval_seed"], frames=cfg["frames"]), 0, cfg["n_eval_clips"],
                                           vae, keep_pixels=True)
    _log(f"video_ar data ready: {len(lat)} + {len(ev_lat)} clips ({time.time() - t0:.0f}s)")
    model = VideoAR(cfg["tokenizer"], cfg["net"])
    tokens, tok_rec = fit_tokenizer(model.tokenizer, lat, cfg, g)
    tok_rec.update(tokenizer_quality(model.tokenizer, vae, ev_lat, ev_pix))
    _log(f"video_ar tokenizer: {tok_rec}")
    cond = conditioner_by_name(cfg["conditioner"])
    ema, hist = train_transformer(model, tokens, caps, cond, cfg, g)
    model.net = ema
    ev_tokens = model.tokenizer.encode(ev_lat).flatten(1)
    record = {"final_loss": float(np.mean(hist[-100:])), **heldout_loss(ema, ev_tokens, ev_caps, cond),
              "uniform_loss": math.log(cfg["tokenizer"]["codes"]), "tokenizer": tok_rec, "wall_s": time.time() - t0}
    save(model, cfg, record, out_dir)
    return record


def save(model: VideoAR, cfg: dict, record: dict, out_dir=None) -> Path:
    """Write the weights (float32) with config, record and command in the metadata, and the model card."""
    import hashlib

    meta = {"config": cfg, "record": record, "versions": _versions(),
            "command": f"solverzoo train {cfg['_config_name']}" + "".join(f" {o}" for o in cfg.get("_overrides", []))}
    path = weights.save(model, cfg["artifact"], meta, half=False, directory=out_dir)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    card = path.with_suffix(".md")
    card.write_text(model_card(cfg, record, meta, sha))
    _log(f"wrote {path} and {card}")
    return path


def model_card(cfg: dict, record: dict, meta: dict, sha: str) -> str:
    """The model card of a trained next-token video model."""
    tr = record["tokenizer"]
    net = cfg["net"]
    text = f"""# {cfg['artifact']}

Kind: video_ar (next-token video model, VideoPoet's idea in small). Reproduce: `{meta['command']}` (seeded; CPU, one thread).

Weights: `{cfg['artifact']}.safetensors` (tokenizer codebook + refiner and transformer, float32), SHA-256 `{sha}`.

Data: {cfg['n_clips']} clips of the procedural shapes video world (`solverzoo.models.worlds.video.ShapesVideoWorld`,
seed {cfg['data_seed']}, {cfg['frames']} frames of 32x32), each frame encoded by `{cfg['vae']}` (scaled latents 4x8x8);
held-out numbers on {cfg['n_eval_clips']} clips of seed {cfg['eval_seed']}.

Tokenizer: {cfg['tokenizer']['codes']} codes of 2x2 latent patches (16-d), fitted by k-means
({cfg['kmeans']['iters']} Lloyd iterations on {cfg['kmeans']['vectors']} random patch vectors); 16 tokens per frame,
{cfg['frames'] * 16} per clip, frame-major then row-major. Decoding looks the codes up and adds the residual of a
4-layer convolutional refiner (width {cfg['tokenizer']['refine_width']}) trained {cfg['refine']['steps']} steps by latent MSE.
Held-out reconstruction: decoded PSNR {tr['psnr_vs_vae']:.2f} dB against the VAE's own reconstruction and
{tr['psnr_vs_real']:.2f} dB against the real frames (codes only, without the refiner: {tr['psnr_vs_vae_codes_only']:.2f} /
{tr['psnr_vs_real_codes_only']:.2f} dB; the VAE itself: {tr['psnr_vae_vs_real']:.2f} dB). Codebook usage on the training
clips: {tr['codes_used']} of {tr['codes']} codes, perplexity {tr['perplexity']:.0f}.

Transformer: causal decoder, hidden {net['hidden']}, {net['depth']} blocks, {net['heads']} heads, MLP x{net['mlp_ratio']};
learned (time, row, col) embeddings of the predicted position; cross-attention to the frozen MiniLM-L6
(all-MiniLM-L6-v2) caption tokens, the caption dropped to the empty prompt with p = {cfg['cond_dropout']} (classifier-free
guidance on logits at sampling). Objective: next-token cross-entropy; AdamW (weight decay 0.01), lr {cfg['lr']}, warm-up
{cfg['warmup']} steps then cosine decay, gradient clipping at 1, batch {cfg['batch']}, {cfg['steps']} steps, seed {cfg['seed']};
shipped weights are the EMA ({cfg['ema']}).

Final training loss (mean of the last 100 steps): {record['final_loss']:.4f} nats/token; held-out {record['heldout_loss']:.4f}
with captions, {record['heldout_loss_null_caption']:.4f} with the empty prompt (uniform: {record['uniform_loss']:.4f}).
Wall time {record['wall_s']:.0f} s.

Sampling (`solverzoo.models.video_ar.VideoARGenerator`): one transformer pass per token with a key/value cache
({cfg['frames'] * 16} passes per clip, twice that with guidance), temperature / top-k.

## Training config

```json
{json.dumps({k: v for k, v in cfg.items() if not k.startswith('_')}, indent=2)}
```

## Record

```json
{json.dumps(record, indent=2)}
```

Software: {meta['versions']}.
"""
    return text
