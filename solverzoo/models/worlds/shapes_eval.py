"""The shapes world as the benchmark harness sees it (a :class:`~solverzoo.backbone.World`):
captions and images drawn from :class:`ShapesWorld`, the attribute classifier's features for
FID and its GenEval-style prompt check, the small CLIP trained here for CLIP score."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from solverzoo.backbone import Features, World, state_dict_sha
from solverzoo.models.worlds.shapes import ShapesWorld, parse_caption


class ShapesEvalWorld(World):
    """The procedural shapes world, scored by its attribute classifier.

    Args:
        classifier: the shapes :class:`~solverzoo.models.nets.AttributeClassifier` (features and
            prompt accuracy).
    """

    name = "shapes"
    clip_model = "shapes-clip"

    def __init__(self, classifier):
        self.classifier = classifier

    def prompts(self, seed: int, n: int) -> list[str]:
        return ShapesWorld(int(seed)).batch(0, int(n))[1]

    def reference(self, seed: int, n: int) -> Tensor:
        return torch.from_numpy(ShapesWorld(int(seed)).batch(0, int(n))[0])

    def samples_for(self, prompts: Sequence, seed: int) -> Tensor:
        # the prompts are the captions of ShapesWorld(seed)'s first images: those images answer them
        return self.reference(seed, len(prompts))

    def features(self) -> Features:
        clf = self.classifier
        return Features(f"{self.name}-attribute-classifier", state_dict_sha(clf), clf.config["feat"], clf.features)

    def score(self, images: Tensor, latents: Tensor, prompts: Sequence) -> np.ndarray:
        from solverzoo.models.nets.classifier import matches

        pred = self.classifier.predict(images)
        return np.array([matches(parse_caption(c), p) for c, p in zip(prompts, pred)], dtype=np.float64)

    def example_prompt(self) -> str:
        return "a red circle"

    def calibration_prompts(self, n: int) -> list[str]:
        from solverzoo.seeds import CALIBRATION_SEED

        return self.prompts(CALIBRATION_SEED % 100_000, n)  # the world seed the shipped grids were calibrated with
