"""A third-party backbone as a solverzoo plugin: the "ring" world, eight Gaussian modes on a
circle in 2-D, prompted by compass direction ("the north mode"), with an exact denoiser (the
closed-form posterior mean of a Gaussian mixture), its own reference sampler, identity features
and its own prompt scorer (the nearest mode is the prompted one). No training, no download:
``pip install`` it and ``solverzoo bench backbone=ring sweep=quick`` evaluates it."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

import solverzoo
from solverzoo.backbone import Backbone, Features, World
from solverzoo.seeds import exact_sample_seed

DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
RADIUS, STD = 2.0, 0.2
MEANS = torch.tensor([[RADIUS * math.cos(2 * math.pi * k / 8), RADIUS * math.sin(2 * math.pi * k / 8)]
                      for k in range(8)], dtype=torch.float64)  # mode k at 45 k degrees, east = 0


def caption(mode: int) -> str:
    return f"the {DIRECTIONS[int(mode)]} mode"


def mode_of(prompt) -> int:
    """The mode a prompt names: ``"the north mode"`` -> 2 (or an integer 0-7 as it is)."""
    if isinstance(prompt, (int, np.integer)):
        return int(prompt)
    words = str(prompt).lower().replace("the ", "").replace(" mode", "").strip()
    if words not in DIRECTIONS:
        raise ValueError(f"ring prompt {prompt!r} must name a compass direction, like 'the north mode' "
                         f"(one of {', '.join(DIRECTIONS)})")
    return DIRECTIONS.index(words)


def nearest_mode(x: Tensor) -> Tensor:
    """Index of the mode nearest to each 2-D point."""
    return torch.cdist(x.reshape(len(x), -1).double(), MEANS).argmin(1)


def posterior_eps(x: Tensor, alpha: Tensor, sigma: Tensor, label: Tensor | None) -> Tensor:
    """Exact ``E[eps | x_t]`` for ``x_t = alpha x0 + sigma eps``, x0 from the (label's) modes.

    Under mode k, ``x_t ~ N(alpha mu_k, v I)`` with ``v = alpha^2 s^2 + sigma^2`` (s: the mode's
    std); the responsibilities are softmaxed log-likelihoods (equal weights, equal v) and
    ``E[eps | x_t, k] = sigma / v (x_t - alpha mu_k)``."""
    x = x.reshape(len(x), -1).double()
    a, s = alpha.reshape(-1, 1).double(), sigma.reshape(-1, 1).double()
    var = a ** 2 * STD ** 2 + s ** 2  # (B, 1)
    diff = x[:, None, :] - a[:, :, None] * MEANS[None]  # (B, K, 2)
    logp = -0.5 * (diff ** 2).sum(-1) / var
    if label is not None:
        allowed = (label[:, None] < 0) | (torch.arange(8)[None, :] == label[:, None])
        logp = logp.masked_fill(~allowed, -math.inf)
    resp = torch.softmax(logp, dim=1)
    return (resp[..., None] * (s / var)[..., None] * diff).sum(1)


class RingConditioner:
    """Prompts to mode labels ``{"label": LongTensor}``; the null label is -1 (unconditional)."""

    def encode(self, prompts: Sequence) -> dict[str, Tensor]:
        return {"label": torch.tensor([mode_of(p) for p in prompts], dtype=torch.long)}

    def null(self, batch: int) -> dict[str, Tensor]:
        return {"label": torch.full((batch,), -1, dtype=torch.long)}


class RingWorld(World):
    """Eight modes on a ring: prompts by direction, exact samples, nearest-mode scoring."""

    name = "ring"
    exact = True
    not_applicable = {"clip_score": "clip_score does not apply to the ring world's 2-D points"}

    @staticmethod
    def _draw(modes: Tensor, g: torch.Generator) -> Tensor:
        return (MEANS[modes] + STD * torch.randn(len(modes), 2, generator=g, dtype=torch.float64)).float()

    def prompts(self, seed: int, n: int) -> list[str]:
        g = torch.Generator().manual_seed(int(seed))
        return [caption(k) for k in torch.randint(0, 8, (int(n),), generator=g).tolist()]

    def reference(self, seed: int, n: int) -> Tensor:
        g = torch.Generator().manual_seed(int(seed))  # the same modes as prompts(seed, n), then their points
        return self._draw(torch.randint(0, 8, (int(n),), generator=g), g)

    def samples_for(self, prompts: Sequence, seed: int) -> Tensor:
        return self._draw(torch.tensor([mode_of(p) for p in prompts]), torch.Generator().manual_seed(int(seed)))

    def features(self) -> Features:
        return Features("identity(ring coordinates)", "none", 2, lambda x: x.reshape(len(x), -1), images=False)

    def score(self, images: Tensor, latents: Tensor, prompts: Sequence) -> np.ndarray:
        want = torch.tensor([mode_of(p) for p in prompts])
        return (nearest_mode(latents) == want).numpy().astype(np.float64)

    def example_prompt(self) -> str:
        return caption(2)

    def exact_samples(self, prompts: Sequence) -> Tensor:
        return torch.cat([self._draw(torch.tensor([mode_of(p)]), torch.Generator().manual_seed(exact_sample_seed(i))).double()
                          for i, p in enumerate(prompts)])

    def exact_metrics(self, latents: Tensor, reference: Tensor) -> dict[str, float]:
        return {"mode_flip_rate": float((nearest_mode(latents) != nearest_mode(reference)).double().mean())}


def ring(device: str = "cpu") -> Backbone:
    """Eight Gaussian modes on a circle of radius 2 (std 0.2), exact epsilon model on the VP schedule."""
    schedule = solverzoo.get_schedule("vp")

    def net(x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        a, s = schedule.alpha_sigma(t.to(torch.float64))
        lab = None if label is None else label.reshape(-1).to(torch.long).expand(len(x))
        return posterior_eps(x, a.expand(len(x)), s.expand(len(x)), lab).reshape(x.shape).to(x.dtype)

    model = solverzoo.Model(net, "epsilon", schedule, time_input="t")
    return Backbone("ring", model, RingConditioner(), (2,), lambda z: z, "logsnr", {}, world=RingWorld(),
                    weights_id="analytic-ring8")


@solverzoo.hookimpl
def register_backbones(register):
    register(ring, name="ring")
