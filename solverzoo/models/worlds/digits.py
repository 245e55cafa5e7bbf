"""scikit-learn's bundled handwritten digits (1,797 8x8 scans, UCI), upsampled to 16x16,
class-conditional: "a handwritten 7"."""
from __future__ import annotations

import numpy as np


def digit_label(prompt) -> int:
    """The class a digits prompt names: ``"a handwritten 7"`` (or the integer 7) -> 7."""
    if isinstance(prompt, (int, np.integer)):
        return int(prompt)
    digits = [int(ch) for ch in str(prompt) if ch.isdigit()]
    if len(digits) != 1:
        raise ValueError(f"digits prompt {prompt!r} must name one digit 0-9, like 'a handwritten 7'")
    return digits[0]


class DigitsWorld:
    """The real data set nobody here wrote. Images are (1, 16, 16) float32 in [-1, 1]."""

    num_classes = 10

    def __init__(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        img = d.images.astype(np.float32) / 16.0  # 0..1
        img = img.repeat(2, axis=1).repeat(2, axis=2)  # nearest 16x16
        self.images = (img * 2.0 - 1.0)[:, None]
        self.labels = d.target.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def caption(label: int) -> str:
        return f"a handwritten {int(label)}"
