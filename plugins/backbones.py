"""The embedded default backbones: DiTs trained here on the shapes world's VAE latents,
conditioned on the frozen MiniLM-L6 text encoder (weights shipped in solverzoo/weights)."""
from __future__ import annotations

import torch

from solverzoo import Model, hookimpl, registry, weights
from solverzoo.backbones import Backbone
from solverzoo.nets import VAE, AttributeClassifier, DiT


def _shapes(artifact: str, default_grid: str, grid_options: dict, device: str = "cpu") -> Backbone:
    from solverzoo.conditioners import minilm

    path = weights.resolve(artifact)
    meta = weights.read_meta(path)
    cfg = meta["config"]
    net = weights.load_into(DiT(**cfg["net"]), path).to(device)
    vae = weights.load_into(VAE(), cfg["vae"]).to(device)
    clf = weights.load_into(AttributeClassifier(), "shapes-classifier").to(device)
    sched = registry.get("schedule", cfg["schedule"]["name"])(**{k: v for k, v in cfg["schedule"].items() if k != "name"})
    model = Model(net, cfg["prediction"], sched, time_input=cfg["time_input"])

    @torch.no_grad()
    def decode(z):
        return vae.from_latent(z.to(device=device, dtype=torch.float32)).clamp(-1, 1)

    card = path.with_suffix(".md")
    return Backbone(artifact, model, minilm(device=device), (4, 8, 8), decode, default_grid, grid_options, clf,
                    world="shapes", card=card.read_text() if card.exists() else "")


def shapes_eps(device: str = "cpu") -> Backbone:
    """DiT (epsilon, DDPM linear betas) on the shapes world, MiniLM text conditioning."""
    return _shapes("shapes-dit-eps", "trailing", {}, device)


def shapes_flow(device: str = "cpu") -> Backbone:
    """DiT (rectified flow, velocity) on the shapes world, MiniLM text conditioning."""
    return _shapes("shapes-dit-flow", "flow_shift", {"shift": 2.0}, device)


@hookimpl
def register_backbones(register):
    register(shapes_eps, name="shapes-eps")
    register(shapes_flow, name="shapes-flow")
