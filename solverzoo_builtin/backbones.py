"""The embedded default backbones: DiTs trained here on the shapes world's VAE latents,
conditioned on the frozen MiniLM-L6 text encoder (weights shipped in solverzoo/models/weights)."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from solverzoo import Model, hookimpl, registry, schedule_from_spec
from solverzoo.models import weights
from solverzoo.backbone import Backbone
from solverzoo.models.nets import VAE, AttributeClassifier, DiT


def _shapes(name: str, artifact: str, default_grid: str, grid_options: dict, device: str = "cpu") -> Backbone:
    from solverzoo.models.conditioners import minilm

    path = weights.resolve(artifact)
    meta = weights.read_meta(path)
    cfg = meta["config"]
    net = weights.load_into(DiT(**cfg["net"]), path).to(device)
    vae = weights.load_into(VAE(), cfg["vae"]).to(device)
    clf = weights.load_into(AttributeClassifier(), "shapes-classifier").to(device)
    sched = schedule_from_spec(cfg["schedule"])
    model = Model(net, cfg["prediction"], sched, time_input=cfg["time_input"])

    @torch.no_grad()
    def decode(z):
        return vae.from_latent(z.to(device=device, dtype=torch.float32)).clamp(-1, 1)

    card = path.with_suffix(".md")
    wid = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Backbone(name, model, minilm(device=device), (4, 8, 8), decode, default_grid, grid_options, clf,
                    world="shapes", card=card.read_text() if card.exists() else "", artifact=artifact, weights_id=wid)


def shapes_eps(device: str = "cpu") -> Backbone:
    """DiT (epsilon, DDPM linear betas) on the shapes world, MiniLM text conditioning."""
    return _shapes("shapes-eps", "shapes-dit-eps", "trailing", {}, device)


def shapes_flow(device: str = "cpu") -> Backbone:
    """DiT (rectified flow, velocity) on the shapes world, MiniLM text conditioning."""
    return _shapes("shapes-flow", "shapes-dit-flow", "flow_shift", {"shift": 2.0}, device)


class DigitsConditioner:
    """Prompts ``"a handwritten 7"`` (or the integer 7) to class labels; the null label is -1."""

    def __init__(self):
        from solverzoo.testbeds import LabelConditioner

        self._labels = LabelConditioner(10)

    @staticmethod
    def label(prompt) -> int:
        if isinstance(prompt, (int, np.integer)):
            return int(prompt)
        digits = [int(ch) for ch in str(prompt) if ch.isdigit()]
        if len(digits) != 1:
            raise ValueError(f"digits prompt {prompt!r} must name one digit 0-9, like 'a handwritten 7'")
        return digits[0]

    def encode(self, prompts):
        return self._labels.encode([self.label(p) for p in prompts])

    def null(self, batch):
        return self._labels.null(batch)


def digits(device: str = "cpu") -> Backbone:
    """Pixel-space class-conditional DiT (epsilon, cosine DDPM) on scikit-learn's handwritten digits."""
    from solverzoo.models.nets import DigitClassifier

    path = weights.resolve("digits-dit")
    cfg = weights.read_meta(path)["config"]
    net = weights.load_into(DiT(**cfg["net"]), path).to(device)
    clf = weights.load_into(DigitClassifier(), "digits-classifier").to(device)
    sched = schedule_from_spec(cfg["schedule"])
    model = Model(net, cfg["prediction"], sched, time_input=cfg["time_input"])
    card = path.with_suffix(".md")
    return Backbone("digits", model, DigitsConditioner(), (1, 16, 16), lambda z: z.float().clamp(-1, 1), "leading", {},
                    clf, world="digits", card=card.read_text() if card.exists() else "", artifact="digits-dit",
                    weights_id=hashlib.sha256(path.read_bytes()).hexdigest()[:16])


def gmm(device: str = "cpu") -> Backbone:
    """The analytic class-conditional Gaussian mixture (4-D, 3 classes) with its exact model."""
    from solverzoo.testbeds import GaussianMixture

    mix = GaussianMixture.default(dim=4, seed=0)
    model = mix.model(registry.get("schedule", "vp")(), "epsilon")
    return Backbone("gmm", model, mix.conditioner(), (4,), lambda z: z, "logsnr", {}, None, world="gmm",
                    weights_id="analytic-seed0", gmm=mix)


@hookimpl
def register_backbones(register):
    register(shapes_eps, name="shapes-eps")
    register(shapes_flow, name="shapes-flow")
    register(gmm, name="gmm")
    register(digits, name="digits")
