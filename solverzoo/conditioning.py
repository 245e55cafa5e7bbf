"""Conditioners: prompts or labels in, conditioning tensors out."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from solverzoo.model import Cond


class Conditioner(Protocol):
    """Turns prompts (text or class labels) into conditioning for a model.

    ``encode`` conditions on prompts, ``null`` gives the unconditional input that
    classifier-free guidance needs, and negative prompts are ``encode(negative_prompts)``.
    """

    def encode(self, prompts: Sequence) -> Cond: ...

    def null(self, batch: int) -> Cond: ...


def branch_conds(conditioner: Conditioner, prompts: Sequence, negative_prompts: Sequence | None = None) -> dict[str, Cond]:
    """The conditioning of every guidance branch for a batch of prompts."""
    conds = {"cond": conditioner.encode(prompts), "uncond": conditioner.null(len(prompts))}
    if negative_prompts is not None:
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(prompts)} prompts; give one per prompt")
        conds["negative"] = conditioner.encode(negative_prompts)
    return conds
