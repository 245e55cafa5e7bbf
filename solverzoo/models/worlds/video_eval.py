"""The shapes video world as the benchmark harness sees it (a :class:`~solverzoo.backbone.World`),
and the video measures: prompt accuracy decided from per-frame attributes, the video classifier's
pooled clip features for an FVD-style Frechet distance, and temporal smoothness.

Prompt accuracy (:meth:`VideoEvalWorld.score_attributes`): the video classifier predicts, frame by
frame, the first-named object's centre, radius, colour and shape and the object count; the clip
shows what the caption asks when the count (majority over frames), the first object's shape and
colour in the first frame, and its motion all match. The motion is read off the predicted
trajectory by :func:`~solverzoo.models.nets.video_classifier.motion_from_frames` (net displacement
> 6 px, radius ratio > 1.3, a colour change between the first and last frames, a hop > 2.5 px),
not by a learned motion head, so a reader can check the rule.

Temporal measures, per sample so that a caller can bootstrap intervals:
:func:`temporal_consistency` (mean squared frame-to-frame change), :func:`flicker_ratio`
(generated over real, 1 = as smooth as real data) and :func:`identity_flicker` (how often the
predicted shape of the first object changes between consecutive frames)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from solverzoo.backbone import Features, World, state_dict_sha
from solverzoo.models.worlds.shapes import COLOUR_NAMES
from solverzoo.models.worlds.video import FRAMES, ShapesVideoWorld, parse_video_caption

VIDEO_ATTRIBUTES = ("count", "colour", "shape", "motion")
CLASSIFIER = "shapes-video-classifier"


def load_video_classifier(name: str = CLASSIFIER):
    """The shipped video classifier ``name`` (or a .safetensors path), built from the config in its metadata."""
    from solverzoo.models import weights
    from solverzoo.models.nets.video_classifier import VideoClassifier

    net_cfg = weights.read_meta(weights.resolve(name)).get("config", {}).get("net", {})
    return weights.load_into(VideoClassifier(**net_cfg), name)


def _as_numpy(clips) -> np.ndarray:
    x = clips.detach().cpu().double().numpy() if isinstance(clips, Tensor) else np.asarray(clips, dtype=np.float64)
    if x.ndim != 5 or x.shape[1] < 2:
        raise ValueError(f"expected clips of shape (B, T >= 2, C, H, W), got {x.shape}")
    return x


def temporal_consistency(clips) -> np.ndarray:
    """Per-sample mean squared frame-to-frame pixel change: for clips (B, T, C, H, W), the mean over
    the T - 1 consecutive pairs and all pixels of ``(x[t+1] - x[t])**2`` (float64, (B,)). 0 for a
    still clip; larger is less smooth."""
    x = _as_numpy(clips)
    return ((x[:, 1:] - x[:, :-1]) ** 2).mean(axis=(1, 2, 3, 4))


def flicker_ratio(generated, real) -> dict:
    """Flicker of generated clips against the real clips of the same captions (row i of both
    answers the same caption): ``ratio`` = mean :func:`temporal_consistency` of ``generated`` over
    that of ``real`` (1 = as smooth as real data, > 1 flickers, < 1 frozen), with the per-sample
    arrays ``generated`` and ``real`` it is made of (a paired bootstrap resamples rows of both;
    :func:`ratio_interval`). A ratio of means, since a still real clip changes by exactly 0."""
    g, r = temporal_consistency(generated), temporal_consistency(real)
    if len(g) != len(r):
        raise ValueError(f"generated and real must hold the same captions row by row: {len(g)} vs {len(r)} clips")
    if r.mean() <= 0:
        raise ValueError("the real clips do not change at all (all still): the flicker ratio is undefined")
    return {"ratio": float(g.mean() / r.mean()), "generated": g, "real": r}


def ratio_interval(num: np.ndarray, den: np.ndarray, *, ci: float = 0.95, boot: int = 1000,
                   rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile interval of ``mean(num) / mean(den)`` by a paired bootstrap over rows."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    rng = rng if rng is not None else np.random.default_rng(0)
    idx = rng.integers(0, len(num), size=(boot, len(num)))
    ratios = num[idx].mean(1) / np.maximum(den[idx].mean(1), 1e-300)
    return float(np.quantile(ratios, (1 - ci) / 2)), float(np.quantile(ratios, (1 + ci) / 2))


def identity_flicker(pred_per_frame) -> np.ndarray:
    """Per-sample fraction of consecutive frame pairs whose predicted shape of the first object
    differs: ``pred_per_frame`` is (B, T) shape labels, or the dict of
    :meth:`~solverzoo.models.nets.video_classifier.VideoClassifier.predict_frames` (its ``shape``).
    0 when the object keeps its identity, 1 when it changes at every frame."""
    shapes = pred_per_frame["shape"] if isinstance(pred_per_frame, dict) else pred_per_frame
    shapes = np.asarray(shapes)
    if shapes.ndim != 2 or shapes.shape[1] < 2:
        raise ValueError(f"expected per-frame labels of shape (B, T >= 2), got {shapes.shape}")
    return (shapes[:, 1:] != shapes[:, :-1]).mean(axis=1).astype(np.float64)


def video_hits(asked: dict, pred: dict) -> dict[str, float]:
    """Per-attribute prompt check of one clip: 1.0 hit, 0.0 miss, NaN where the caption does not
    test it. ``count``; ``shape`` / ``colour``: the first-named object's, in the first frame;
    ``motion``: the rule's motion equals the asked one, and for "changing colour" the last frame
    shows the asked new colour; ``overall``: a hit on every tested attribute."""
    want = asked["objects"][0] if asked["objects"] else {}
    got = pred["objects"][0]
    out = {"count": float(asked["count"] == pred["count"])}
    for key in ("shape", "colour"):
        out[key] = float(got[key] == want[key]) if key in want else np.nan
    motion = asked.get("motion")
    if motion is None:
        out["motion"] = np.nan
    else:
        hit = pred["motion"] == motion
        if hit and motion == "changing colour" and want.get("colour_to"):
            hit = COLOUR_NAMES[pred["frames"]["colour"][-1]] == want["colour_to"]
        out["motion"] = float(hit)
    tested = [v for v in out.values() if not np.isnan(v)]
    out["overall"] = float(all(v == 1.0 for v in tested))
    return out


class VideoEvalWorld(World):
    """The procedural shapes video world, scored by the video classifier.

    Args:
        classifier: a :class:`~solverzoo.models.nets.video_classifier.VideoClassifier`; None loads
            the shipped ``shapes-video-classifier``.
        frames: clip length of the world's clips.
    """

    name = "shapes-video"
    clip_model = None
    not_applicable = {"clip_score": "clip_score does not apply to the shapes video world: there is no video-text CLIP "
                                    "model here; prompt accuracy (count, shape, colour and motion, from the video "
                                    "classifier's per-frame predictions) measures prompt following instead"}

    def __init__(self, classifier=None, frames: int = FRAMES):
        self.classifier = classifier if classifier is not None else load_video_classifier()
        self.frames = int(frames)

    def prompts(self, seed: int, n: int) -> list[str]:
        return ShapesVideoWorld(int(seed), frames=self.frames).captions(0, int(n))

    def reference(self, seed: int, n: int) -> Tensor:
        import os

        workers = min(os.cpu_count() or 1, 4) if int(n) >= 2048 else 1  # identical to a serial draw
        return torch.from_numpy(ShapesVideoWorld(int(seed), frames=self.frames).clips(0, int(n), workers=workers))

    def samples_for(self, prompts: Sequence, seed: int) -> Tensor:
        # the prompts are the captions of ShapesVideoWorld(seed)'s first clips: those clips answer them
        return self.reference(seed, len(prompts))

    def features(self) -> Features:
        clf = self.classifier

        @torch.no_grad()
        def clip_features(clips: Tensor, chunk: int = 256) -> Tensor:
            dev = next(clf.parameters()).device
            return torch.cat([clf.features(clips[i:i + chunk].to(dev, torch.float32)).to(clips.device)
                              for i in range(0, len(clips), chunk)])

        return Features(f"{self.name}-video-classifier", state_dict_sha(clf), clf.config["clip_feat"], clip_features,
                        images=False)

    def predict(self, images: Tensor, chunk: int = 256) -> list[dict]:
        """The classifier's clip-level predictions (with per-frame arrays), in chunks."""
        return [p for i in range(0, len(images), chunk) for p in self.classifier.predict(images[i:i + chunk])]

    def score_attributes(self, images: Tensor, latents: Tensor, prompts: Sequence) -> dict[str, np.ndarray]:
        """Per-attribute prompt hits (:func:`video_hits`): ``count``, ``colour``, ``shape``,
        ``motion`` and ``overall`` -> float64 arrays of ``len(prompts)`` (NaN where untested)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} clips for {len(prompts)} prompts")
        rows = [video_hits(parse_video_caption(c), p) for c, p in zip(prompts, self.predict(images))]
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in (*VIDEO_ATTRIBUTES, "overall")}

    def score(self, images: Tensor, latents: Tensor, prompts: Sequence) -> np.ndarray:
        return self.score_attributes(images, latents, prompts)["overall"]

    def example_prompt(self) -> str:
        return "a small red circle moving from the top left to the top right"
