"""The shapes world as the benchmark harness sees it (a :class:`~solverzoo.backbone.World`):
captions and images drawn from :class:`ShapesWorld`, the attribute classifier's features for
FID and its GenEval-style prompt check (overall, and per attribute with
:func:`attribute_hits`), the small CLIP trained here for CLIP score."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from solverzoo.backbone import Features, World, state_dict_sha
from solverzoo.models.worlds.shapes import ShapesWorld, parse_caption

ATTRIBUTES = ("count", "colour", "shape", "position", "relation")
"""What the prompt check decomposes into (:func:`attribute_hits`). Size is named in most captions
but not judged: the attribute classifier has no size head, and the overall check ignores it."""


def _identity_agreement(want: list[dict], got: list[dict]) -> int:
    """How many prompted objects have the predicted object in their slot with both shape and colour."""
    return sum(all(w.get(k) == g.get(k) for k in ("shape", "colour") if k in w) for w, g in zip(want, got))


def attribute_hits(prompted: dict, predicted: dict) -> dict[str, float]:
    """The overall prompt check (:func:`~solverzoo.models.nets.classifier.matches`) split by
    attribute: 1.0 hit, 0.0 miss, NaN where the prompt does not test the attribute.

    * ``count``: one object or two, as prompted;
    * ``colour`` / ``shape``: every prompted object's colour / shape on the predicted object in
      its slot (pairs: the first named on the left), a missing predicted object a miss;
    * ``position``: one-object prompts naming a position: the predicted position;
    * ``relation``: two-object prompts: the prediction agrees with the prompted left/right order
      (shape and colour of each object) on at least one object and at least as well as with the
      swapped order; a swapped pair misses it (and colour and shape).

    An overall hit is exactly a hit on every attribute the prompt tests (tested against
    ``matches``); the count decides alone when it is wrong (the others are then still reported)."""
    want, got = prompted["objects"], predicted["objects"]
    out = {"count": float(prompted["count"] == predicted["count"])}
    for key in ("colour", "shape"):
        tested = [i for i, w in enumerate(want) if key in w]
        out[key] = float(all(i < len(got) and got[i].get(key) == want[i][key] for i in tested)) if tested else np.nan
    single = prompted["count"] == 1 and "position" in want[0]
    out["position"] = float(predicted["count"] == 1 and got[0].get("position") == want[0]["position"]) if single else np.nan
    if prompted["count"] == 2:
        same = _identity_agreement(want, got) if predicted["count"] == 2 else 0
        swapped = _identity_agreement(want, got[::-1]) if predicted["count"] == 2 else 0
        out["relation"] = float(same >= 1 and same >= swapped)
    else:
        out["relation"] = np.nan
    return out


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
        # large draws (the 50k reference statistics) use every core: identical to a serial draw
        workers = min(os.cpu_count() or 1, 4) if int(n) >= 8192 else 1
        return torch.from_numpy(ShapesWorld(int(seed)).images(0, int(n), workers=workers))

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

    def score_attributes(self, images: Tensor, latents: Tensor, prompts: Sequence) -> dict[str, np.ndarray]:
        """Per-attribute prompt hits (:func:`attribute_hits`): attribute -> float64 array of
        ``len(prompts)`` (1 hit, 0 miss, NaN where that prompt does not test it), plus
        ``"overall"``, equal to :meth:`score`."""
        from solverzoo.models.nets.classifier import matches

        pred = self.classifier.predict(images)
        asked = [parse_caption(c) for c in prompts]
        rows = [attribute_hits(a, p) for a, p in zip(asked, pred)]
        out = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in ATTRIBUTES}
        out["overall"] = np.array([matches(a, p) for a, p in zip(asked, pred)], dtype=np.float64)
        return out

    def example_prompt(self) -> str:
        return "a red circle"

    def calibration_prompts(self, n: int) -> list[str]:
        from solverzoo.seeds import CALIBRATION_SEED

        return self.prompts(CALIBRATION_SEED % 100_000, n)  # the world seed the shipped grids were calibrated with
