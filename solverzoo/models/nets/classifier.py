"""Attribute classifiers: they score prompt accuracy and serve as each world's domain feature
extractor for FID (their penultimate features)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from solverzoo.models.worlds.shapes import COLOUR_NAMES, POSITIONS, SHAPES

N_OBJ = len(SHAPES) * len(COLOUR_NAMES)


def obj_index(shape: str, colour: str) -> int:
    return SHAPES.index(shape) * len(COLOUR_NAMES) + COLOUR_NAMES.index(colour)


def obj_name(i: int) -> tuple[str, str]:
    return SHAPES[i // len(COLOUR_NAMES)], COLOUR_NAMES[i % len(COLOUR_NAMES)]


def _trunk(in_ch: int, feat: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GroupNorm(8, 128), nn.SiLU(),
        nn.Flatten())


class AttributeClassifier(nn.Module):
    """Shapes-world classifier: count (1 or 2); for one object its (shape, colour) and position;
    for two, the (shape, colour) of the left and of the right object."""

    def __init__(self, feat: int = 128):
        super().__init__()
        self.config = dict(feat=feat)
        self.trunk = _trunk(3, feat)
        self.proj = nn.Sequential(nn.Linear(128 * 8 * 8, feat), nn.SiLU())
        self.heads = nn.ModuleDict({"count": nn.Linear(feat, 2), "single": nn.Linear(feat, N_OBJ),
                                    "position": nn.Linear(feat, len(POSITIONS)), "left": nn.Linear(feat, N_OBJ),
                                    "right": nn.Linear(feat, N_OBJ)})

    def features(self, x: Tensor) -> Tensor:
        """(B, feat) penultimate features of images in [-1, 1]."""
        return self.proj(self.trunk(x))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.features(x)
        return {k: h(f) for k, h in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: Tensor) -> list[dict]:
        """Predicted attributes in the world's format: ``{"count", "objects": [...]}``."""
        out = {k: v.argmax(-1).tolist() for k, v in self(x).items()}
        res = []
        for i in range(x.shape[0]):
            if out["count"][i] == 0:
                s, c = obj_name(out["single"][i])
                res.append({"count": 1, "objects": [{"shape": s, "colour": c, "position": POSITIONS[out["position"][i]]}]})
            else:
                objs = []
                for side in ("left", "right"):
                    s, c = obj_name(out[side][i])
                    objs.append({"shape": s, "colour": c, "position": side})
                res.append({"count": 2, "objects": objs})
        return res


class DigitClassifier(nn.Module):
    """Digit classifier for the 16x16 digits world."""

    def __init__(self, feat: int = 128):
        super().__init__()
        self.config = dict(feat=feat)
        self.trunk = _trunk(1, feat)
        self.proj = nn.Sequential(nn.Linear(128 * 4 * 4, feat), nn.SiLU())
        self.head = nn.Linear(feat, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.proj(self.trunk(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def matches(prompted: dict, predicted: dict) -> bool:
    """GenEval-style check: counts agree and every prompted object's shape, colour and position
    (where the prompt names them) agree with the prediction, in order."""
    if prompted["count"] != predicted["count"]:
        return False
    for want, got in zip(prompted["objects"], predicted["objects"]):
        for key in ("shape", "colour", "position"):
            if key in want and want[key] != got.get(key):
                return False
    return True
