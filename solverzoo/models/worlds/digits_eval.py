"""The digits world as the benchmark harness sees it (a :class:`~solverzoo.backbone.World`):
scikit-learn's scans as reference data, prompts "a handwritten 7", and the digit classifier's
features for FID and its prediction for prompt accuracy."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from solverzoo.backbone import Features, World, state_dict_sha
from solverzoo.models.worlds.digits import DigitsWorld, digit_label


@functools.lru_cache(maxsize=1)
def _data() -> DigitsWorld:
    return DigitsWorld()


class DigitsEvalWorld(World):
    """scikit-learn's handwritten digits, scored by the digit classifier.

    Args:
        classifier: the :class:`~solverzoo.models.nets.DigitClassifier` (features and prompt accuracy).
    """

    name = "digits"

    def __init__(self, classifier):
        self.classifier = classifier

    def _order(self, seed: int, n: int) -> np.ndarray:
        d = _data()
        return np.random.default_rng(int(seed)).permutation(len(d))[:min(int(n), len(d))]

    def prompts(self, seed: int, n: int) -> list[str]:
        d = _data()
        return [d.caption(int(lab)) for lab in d.labels[self._order(seed, n)]]

    def reference(self, seed: int, n: int) -> Tensor:
        return torch.from_numpy(_data().images[self._order(seed, n)])

    def samples_for(self, prompts: Sequence, seed: int) -> Tensor:
        # the prompts are the captions of the scans drawn with ``seed``: those scans answer them
        return self.reference(seed, len(prompts))

    def features(self) -> Features:
        clf = self.classifier
        return Features(f"{self.name}-digit-classifier", state_dict_sha(clf), clf.config["feat"], clf.features)

    def score(self, images: Tensor, latents: Tensor, prompts: Sequence) -> np.ndarray:
        with torch.no_grad():
            pred = self.classifier(images).argmax(-1)
        want = torch.tensor([digit_label(p) for p in prompts])
        return (pred == want).numpy().astype(np.float64)

    def example_prompt(self) -> int:
        return 0

    def calibration_prompts(self, n: int) -> list[str]:
        from solverzoo.seeds import CALIBRATION_SEED

        # a draw of labels (not of scans): the one the shipped grids were calibrated with
        return [DigitsWorld.caption(d) for d in np.random.default_rng(CALIBRATION_SEED).integers(0, 10, n)]
