"""Backbones: the shared networks a sweep samples with, loaded once per process.

A :class:`Backbone` bundles a latent (or pixel) :class:`~solverzoo.Model`, its conditioner, the
decoder to images and, where the world has one, its attribute classifier."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import Tensor

from solverzoo.conditioning import branch_conds
from solverzoo.model import Model
from solverzoo.registry import registry


@dataclass
class Backbone:
    name: str
    model: Model
    conditioner: Any
    latent_shape: tuple[int, ...]
    decode: Callable[[Tensor], Tensor]  # latents -> images in [-1, 1], (B, C, H, W)
    default_grid: str = "karras"
    default_grid_options: dict = field(default_factory=dict)
    classifier: Any = None  # world attribute classifier (prompt accuracy, domain features)
    world: str = ""
    card: str = ""
    artifact: str = ""  # name of the shipped weights file
    weights_id: str = ""  # hash of the weights: a retrained backbone never reuses old records
    gmm: Any = None  # the analytic mixture, for the "gmm" backbone

    def conds(self, prompts: Sequence, negative_prompts: Sequence | None = None) -> dict:
        return branch_conds(self.conditioner, prompts, negative_prompts)


@functools.lru_cache(maxsize=None)
def load_backbone(name: str, device: str = "cpu") -> Backbone:
    """The backbone registered as ``name`` (cached: loaded once per process and device)."""
    return registry.get("backbone", name)(device=device)
