"""The embedded default backbones: DiTs trained here on the shapes world's VAE latents,
conditioned on the frozen MiniLM-L6 text encoder (weights shipped in solverzoo/models/weights)
or, for the CLIP-vs-language-model comparison, on the small CLIP's text tower,
a pixel-space DiT on scikit-learn's digits, and the analytic Gaussian mixture. Each carries its
:class:`~solverzoo.backbone.World`, so the harness evaluates it with no knowledge of its own."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from solverzoo import Model, hookimpl, registry, schedule_from_spec, seeds
from solverzoo.backbone import Backbone, Features, World
from solverzoo.models import weights
from solverzoo.models.nets import VAE, AttributeClassifier, DiT


def _shapes(name: str, artifact: str, default_grid: str, grid_options: dict, device: str = "cpu") -> Backbone:
    from solverzoo.models.conditioners import conditioner_by_name
    from solverzoo.models.worlds.shapes_eval import ShapesEvalWorld

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
    cond = conditioner_by_name(cfg.get("conditioner"), device=device)  # the encoder the DiT was trained on
    return Backbone(name, model, cond, (4, 8, 8), decode, default_grid, grid_options, clf,
                    world=ShapesEvalWorld(clf), card=card.read_text() if card.exists() else "", artifact=artifact, weights_id=wid)


def shapes_eps(device: str = "cpu") -> Backbone:
    """DiT (epsilon, DDPM linear betas) on the shapes world, MiniLM text conditioning."""
    return _shapes("shapes-eps", "shapes-dit-eps", "trailing", {}, device)


def shapes_flow(device: str = "cpu") -> Backbone:
    """DiT (rectified flow, velocity) on the shapes world, MiniLM text conditioning."""
    return _shapes("shapes-flow", "shapes-dit-flow", "flow_shift", {"shift": 2.0}, device)


def shapes_flow_clip(device: str = "cpu") -> Backbone:
    """DiT (rectified flow, velocity) on the shapes world, conditioned on the small CLIP's text
    tower: the shapes-flow recipe, data, steps and seed with the other text encoder."""
    return _shapes("shapes-flow-clip", "shapes-dit-flow-clip", "flow_shift", {"shift": 2.0}, device)


class DigitsConditioner:
    """Prompts ``"a handwritten 7"`` (or the integer 7) to class labels; the null label is -1."""

    def __init__(self):
        from solverzoo.testbeds import LabelConditioner

        self._labels = LabelConditioner(10)

    @staticmethod
    def label(prompt) -> int:
        from solverzoo.models.worlds import digit_label

        return digit_label(prompt)

    def encode(self, prompts):
        return self._labels.encode([self.label(p) for p in prompts])

    def null(self, batch):
        return self._labels.null(batch)


def digits(device: str = "cpu") -> Backbone:
    """Pixel-space class-conditional DiT (epsilon, cosine DDPM) on scikit-learn's handwritten digits."""
    from solverzoo.models.nets import DigitClassifier
    from solverzoo.models.worlds.digits_eval import DigitsEvalWorld

    path = weights.resolve("digits-dit")
    cfg = weights.read_meta(path)["config"]
    net = weights.load_into(DiT(**cfg["net"]), path).to(device)
    clf = weights.load_into(DigitClassifier(), "digits-classifier").to(device)
    sched = schedule_from_spec(cfg["schedule"])
    model = Model(net, cfg["prediction"], sched, time_input=cfg["time_input"])
    card = path.with_suffix(".md")
    return Backbone("digits", model, DigitsConditioner(), (1, 16, 16), lambda z: z.float().clamp(-1, 1), "leading", {},
                    clf, world=DigitsEvalWorld(clf), card=card.read_text() if card.exists() else "", artifact="digits-dit",
                    weights_id=hashlib.sha256(path.read_bytes()).hexdigest()[:16])


class MixtureWorld(World):
    """A class-conditional Gaussian mixture as a world: class labels as prompts, exact samples
    as reference data, the coordinates themselves as features, the most probable component's
    class as the prompt check, and exact metrics against the mixture.

    Args:
        mixture: the :class:`~solverzoo.testbeds.GaussianMixture`.
    """

    name = "gmm"
    exact = True
    not_applicable = {"clip_score": "clip_score does not apply to the Gaussian-mixture backbone"}

    def __init__(self, mixture):
        self.mixture = mixture

    def _sample(self, labels: Sequence[int], g: torch.Generator) -> Tensor:
        return torch.cat([self.mixture.sample(1, g, label=torch.tensor([lab])) for lab in labels])

    def prompts(self, seed: int, n: int) -> list[int]:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, self.mixture.num_classes, (int(n),), generator=g).tolist()

    def reference(self, seed: int, n: int) -> Tensor:
        g = torch.Generator().manual_seed(int(seed))
        labels = torch.randint(0, self.mixture.num_classes, (int(n),), generator=g)
        return self._sample(labels.tolist(), g).float()

    def samples_for(self, prompts: Sequence, seed: int) -> Tensor:
        return self._sample(prompts, torch.Generator().manual_seed(seeds.exact_sample_seed(seed))).float()

    def features(self) -> Features:
        return Features("identity(gmm coordinates)", "none", self.mixture.dim, lambda x: x.reshape(len(x), -1), images=False)

    def score(self, images: Tensor, latents: Tensor, prompts: Sequence) -> np.ndarray:
        comp = self.mixture.component(latents)
        return (self.mixture.labels[comp] == torch.as_tensor(prompts)).numpy().astype(np.float64)

    def example_prompt(self) -> int:
        return 0

    def calibration_prompts(self, n: int) -> list[int]:
        # a numpy draw (not prompts(seed, n)): the one the shipped grids were calibrated with
        return np.random.default_rng(seeds.CALIBRATION_SEED).integers(0, self.mixture.num_classes, n).tolist()

    def exact_samples(self, prompts: Sequence) -> Tensor:
        return torch.cat([self.mixture.sample(1, torch.Generator().manual_seed(seeds.exact_sample_seed(i)),
                                              label=torch.tensor([p])) for i, p in enumerate(prompts)])

    def exact_metrics(self, latents: Tensor, reference: Tensor) -> dict[str, float]:
        flips = self.mixture.component(latents) != self.mixture.component(reference)
        return {"mode_flip_rate": float(flips.double().mean())}


def gmm(device: str = "cpu") -> Backbone:
    """The analytic class-conditional Gaussian mixture (4-D, 3 classes) with its exact model."""
    from solverzoo.testbeds import GaussianMixture

    mix = GaussianMixture.default(dim=4, seed=0)
    model = mix.model(registry.get("schedule", "vp")(), "epsilon")
    return Backbone("gmm", model, mix.conditioner(), (4,), lambda z: z, "logsnr", {}, None, world=MixtureWorld(mix),
                    weights_id="analytic-seed0")


@hookimpl
def register_backbones(register):
    register(shapes_eps, name="shapes-eps")
    register(shapes_flow, name="shapes-flow")
    register(shapes_flow_clip, name="shapes-flow-clip")
    register(gmm, name="gmm")
    register(digits, name="digits")
