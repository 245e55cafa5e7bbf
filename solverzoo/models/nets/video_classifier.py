"""Video attribute classifier for the shapes video world: per-frame attributes of the first-named
object and a pooled clip feature (the video world's FVD-style feature extractor).

A per-frame conv encoder (the image attribute classifier's trunk layout at half its
width, a quarter of its compute per frame) gives each frame a feature; per
frame heads read the first-named object's centre and radius (regression, pixels) and its colour
and shape, and the object count, from that frame alone. A temporal module (two 1-D convolutions
over the frame features) is mean-pooled into the clip feature, which a motion head classifies.
The motion the evaluation trusts is not that head but :func:`motion_from_frames`, a stated rule on
the predicted per-frame trajectory."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from solverzoo.models.worlds.shapes import COLOUR_NAMES, SHAPES
from solverzoo.models.worlds.video import MOTIONS

GEOMETRY_SCALE = 8.0
"""Pixels per unit of the regression outputs: (cx - 16, cy - 16, radius - 5.5) / GEOMETRY_SCALE."""

MOVE_PX = 6.0
"""Net displacement (pixels, last frame minus first) above which the object moves along that axis."""
GROW_RATIO = 1.3
"""Radius ratio last / first above which the object grows (below 1 / GROW_RATIO it shrinks)."""
BOUNCE_PX = 2.5
"""Height (pixels) of a dip in the centre's y (an upward hop) with higher y on both sides that counts as a bounce."""


def _frame_encoder(width: int, feat: int) -> nn.Sequential:
    """Frames (N, 3, 32, 32) -> (N, feat): the image classifier's conv trunk layout (widths
    w, 2w, 2w, 4w; two stride-2 steps to 8x8), a 1x1 reduction to 16 maps that keep the layout
    (where the object is), and a linear projection."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.SiLU(),
        nn.Conv2d(4 * width, 16, 1), nn.SiLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, feat), nn.SiLU())


def _check_clips(clips: Tensor) -> None:
    if clips.ndim != 5 or tuple(clips.shape[2:]) != (3, 32, 32):
        raise ValueError(f"expected clips of shape (B, T, 3, 32, 32) in [-1, 1], got {tuple(clips.shape)}")


class VideoClassifier(nn.Module):
    """Per-frame attribute heads plus a temporal clip feature for the shapes video world.

    Args:
        width: channels of the encoder's first convolution.
        feat: per-frame feature width.
        clip_feat: pooled clip feature width (``features`` returns this many dimensions).
    """

    def __init__(self, width: int = 16, feat: int = 128, clip_feat: int = 128):
        super().__init__()
        self.config = dict(width=width, feat=feat, clip_feat=clip_feat)
        self.encoder = _frame_encoder(width, feat)
        self.frame_heads = nn.ModuleDict({"geometry": nn.Linear(feat, 3), "colour": nn.Linear(feat, len(COLOUR_NAMES)),
                                          "shape": nn.Linear(feat, len(SHAPES)), "count": nn.Linear(feat, 2)})
        self.temporal = nn.Sequential(nn.Conv1d(feat, clip_feat, 3, padding=1), nn.SiLU(),
                                      nn.Conv1d(clip_feat, clip_feat, 3, padding=1), nn.SiLU())
        self.motion_head = nn.Linear(clip_feat, len(MOTIONS))

    def frame_features(self, clips: Tensor) -> Tensor:
        """(B, T, feat) per-frame features of clips (B, T, 3, 32, 32) in [-1, 1]."""
        _check_clips(clips)
        b, t = clips.shape[:2]
        return self.encoder(clips.reshape(b * t, 3, 32, 32)).reshape(b, t, -1)

    def _pool(self, f: Tensor) -> Tensor:
        return self.temporal(f.transpose(1, 2)).mean(-1)

    def features(self, clips: Tensor) -> Tensor:
        """(B, clip_feat) pooled clip features (the FVD-style feature) of clips in [-1, 1]."""
        return self._pool(self.frame_features(clips))

    def forward(self, clips: Tensor) -> dict[str, Tensor]:
        """Per-frame logits / regression (B, T, .) under the frame head names, and ``motion`` (B, 9)."""
        f = self.frame_features(clips)
        out = {k: h(f) for k, h in self.frame_heads.items()}
        out["motion"] = self.motion_head(self._pool(f))
        return out

    @torch.no_grad()
    def predict_frames(self, clips: Tensor) -> dict[str, np.ndarray]:
        """Per-frame predictions as numpy arrays (B, T): ``cx``, ``cy``, ``radius`` (pixels),
        ``colour`` / ``shape`` (indices into COLOUR_NAMES / SHAPES), ``count`` (1 or 2); and
        ``motion_head`` (B,) indices into MOTIONS from the learned motion head. The clips may be on
        any device (they are moved to the network's)."""
        out = {k: v.cpu() for k, v in self(clips.to(next(self.parameters()).device, torch.float32)).items()}
        g = out["geometry"].double() * GEOMETRY_SCALE
        return {"cx": (g[..., 0] + 16).numpy(), "cy": (g[..., 1] + 16).numpy(), "radius": (g[..., 2] + 5.5).numpy(),
                "colour": out["colour"].argmax(-1).numpy(), "shape": out["shape"].argmax(-1).numpy(),
                "count": out["count"].argmax(-1).numpy() + 1, "motion_head": out["motion"].argmax(-1).numpy()}

    def predict(self, clips: Tensor) -> list[dict]:
        """Clip-level predictions: ``count`` (majority over frames), ``objects`` (the first object's
        shape and colour in the first frame), ``motion`` (:func:`motion_from_frames`), ``frames``
        (that clip's per-frame arrays) and ``motion_head``."""
        p = self.predict_frames(clips)
        res = []
        for i in range(len(p["cx"])):
            frames = {k: p[k][i] for k in ("cx", "cy", "radius", "colour", "shape", "count")}
            res.append({"count": int(np.bincount(frames["count"], minlength=3).argmax()),
                        "objects": [{"shape": SHAPES[frames["shape"][0]], "colour": COLOUR_NAMES[frames["colour"][0]]}],
                        "motion": motion_from_frames(frames), "motion_head": MOTIONS[int(p["motion_head"][i])],
                        "frames": frames})
        return res


def bounce_height(cy: np.ndarray) -> float:
    """Largest upward hop in a y trajectory (pixels, y grows downwards): over interior frames t,
    ``min(max(cy[:t]), max(cy[t+1:])) - cy[t]``: how far the object rose to frame t from a lower
    point before and fell back to one after. 0 for monotone or constant tracks."""
    cy = np.asarray(cy, dtype=np.float64)
    best = 0.0
    for t in range(1, len(cy) - 1):
        best = max(best, min(cy[:t].max(), cy[t + 1:].max()) - cy[t])
    return float(best)


def motion_from_frames(frames: dict) -> str:
    """The motion (one of MOTIONS) a per-frame trajectory shows, by a stated rule on the first and
    last frames and the y track (``frames``: per-frame ``cx``, ``cy``, ``radius`` in pixels and
    ``colour`` labels, e.g. from :meth:`VideoClassifier.predict_frames` or ground-truth tracks):

    1. net |x| displacement > MOVE_PX and larger than the y one: "left to right" / "right to left";
    2. net |y| displacement > MOVE_PX: "top to bottom" / "bottom to top";
    3. radius last / first > GROW_RATIO: "growing"; < 1 / GROW_RATIO: "shrinking";
    4. colour of the last frame differs from the first: "changing colour";
    5. :func:`bounce_height` of the y track > BOUNCE_PX: "bouncing";
    6. otherwise "still"."""
    cx, cy, r = (np.asarray(frames[k], dtype=np.float64) for k in ("cx", "cy", "radius"))
    dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
    if abs(dx) > MOVE_PX and abs(dx) >= abs(dy):
        return "left to right" if dx > 0 else "right to left"
    if abs(dy) > MOVE_PX:
        return "top to bottom" if dy > 0 else "bottom to top"
    ratio = r[-1] / max(r[0], 1e-6)
    if ratio > GROW_RATIO:
        return "growing"
    if ratio < 1 / GROW_RATIO:
        return "shrinking"
    if frames["colour"][-1] != frames["colour"][0]:
        return "changing colour"
    if bounce_height(cy) > BOUNCE_PX:
        return "bouncing"
    return "still"
