"""The video backbones: ``shapes-video``, the space-time DiT trained here on the shapes-video world
(the whole clip denoised as one volume, Lumiere's idea), and ``shapes-video-frames``, the baseline it
argues against: the shipped image DiT ``shapes-dit-flow`` run on every frame on its own, each frame
conditioned on its own image-world caption (``frame_captions``) and started from its own noise.

Both sample states ``(B, T, 4, 8, 8)`` (per-frame ``shapes-vae`` latents), decode to clips
``(B, T, 3, 32, 32)`` in [-1, 1] and carry the same :class:`VideoEvalWorld`, so the harness
compares them on equal terms."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from solverzoo import Model, hookimpl, schedule_from_spec
from solverzoo.backbone import Backbone
from solverzoo.models import weights
from solverzoo.models.nets import VAE, DiT
from solverzoo.models.nets.video_dit import FrameByFrame, VideoDiT

VIDEO_ARTIFACT = "shapes-dit-video"
FRAMES_ARTIFACT = "shapes-dit-flow"  # the image DiT the frame-by-frame baseline runs on every frame
CLASSIFIER_ARTIFACT = "shapes-video-classifier"
VAE_ARTIFACT = "shapes-vae"  # the per-frame VAE both diffusion video backbones decode with


class FrameConditioner:
    """Clip captions -> per-frame conditioning for :class:`~solverzoo.models.nets.video_dit.FrameByFrame`.

    ``encode(prompts)`` turns every clip caption into its ``frames`` image-world captions
    (:func:`solverzoo.models.worlds.video.frame_captions`) and encodes them with the image
    conditioner ``base``; every tensor gets a frame axis after the batch axis (tokens
    ``(B, T, L, D)``, mask ``(B, T, L)``, pooled ``(B, T, D)``), so guidance, which concatenates
    branches along dim 0, and batch slicing stay per clip. ``null(batch)`` is the empty prompt on
    every frame (so is an empty prompt).
    """

    def __init__(self, base, frames: int):
        self.base, self.frames = base, int(frames)

    def frame_prompts(self, prompts: Sequence[str]) -> list[str]:
        """The image-world caption of every frame of every prompt, clip after clip."""
        from solverzoo.models.worlds.video import frame_captions

        out = []
        for p in prompts:
            if not str(p).strip():  # the empty prompt (e.g. a negative prompt): empty on every frame
                out += [""] * self.frames
                continue
            try:
                caps = frame_captions(str(p), self.frames)
            except ValueError as exc:
                raise ValueError(f"the frame-by-frame baseline cannot split {p!r} into frame captions: {exc}") from None
            if len(caps) != self.frames:
                raise ValueError(f"frame_captions({p!r}) gave {len(caps)} captions for {self.frames} frames")
            out += caps
        return out

    def _per_clip(self, cond: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
        return {k: v.reshape(batch, self.frames, *v.shape[1:]) for k, v in cond.items()}

    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        return self._per_clip(self.base.encode(self.frame_prompts(prompts)), len(prompts))

    def null(self, batch: int) -> dict[str, Tensor]:
        return self._per_clip(self.base.null(batch * self.frames), batch)


def _video_world(device: str, frames: int):
    """The video classifier and the :class:`VideoEvalWorld` built on it."""
    from solverzoo.models.worlds.video_eval import VideoEvalWorld, load_video_classifier

    clf = load_video_classifier(CLASSIFIER_ARTIFACT).to(device).eval()
    return clf, VideoEvalWorld(clf, frames)


def clip_decoder(vae_artifact: str, device: str):
    """Per-frame scaled latents (B, T, 4, 8, 8) -> clips (B, T, 3, 32, 32) in [-1, 1] through the
    VAE ``vae_artifact`` (every video backbone decodes with it)."""
    vae = weights.load_into(VAE(), vae_artifact).to(device).eval()

    @torch.no_grad()
    def decode(z: Tensor) -> Tensor:
        if z.dim() != 5:
            raise ValueError(f"video decode takes (B, T, 4, 8, 8) latents, got shape {tuple(z.shape)}")
        B, T = z.shape[:2]
        x = vae.from_latent(z.reshape(B * T, *z.shape[2:]).to(device=device, dtype=torch.float32))
        return x.reshape(B, T, *x.shape[1:]).clamp(-1, 1)

    return decode


def _card_and_id(path) -> tuple[str, str]:
    card = path.with_suffix(".md")
    return (card.read_text() if card.exists() else ""), hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def shapes_video(device: str = "cpu") -> Backbone:
    """Space-time DiT (rectified flow, velocity) on the shapes-video world's per-frame VAE latents, MiniLM text."""
    from solverzoo.models.conditioners import conditioner_by_name

    path = weights.resolve(VIDEO_ARTIFACT)
    cfg = weights.read_meta(path)["config"]
    net = weights.load_into(VideoDiT(**cfg["net"]), path).to(device).eval()
    model = Model(net, cfg["prediction"], schedule_from_spec(cfg["schedule"]), time_input=cfg["time_input"])
    clf, world = _video_world(device, cfg["net"]["frames"])
    card, wid = _card_and_id(path)
    shape = (cfg["net"]["frames"], cfg["net"]["in_channels"], cfg["net"]["input_size"], cfg["net"]["input_size"])
    return Backbone("shapes-video", model, conditioner_by_name(cfg.get("conditioner"), device=device), shape,
                    clip_decoder(VAE_ARTIFACT, device), "flow_shift", {"shift": 2.0}, clf, world=world, card=card,
                    artifact=VIDEO_ARTIFACT, weights_id=wid)


def shapes_video_frames(device: str = "cpu", frames: int | None = None) -> Backbone:
    """The frame-by-frame baseline: ``shapes-dit-flow`` on every frame, each with its own frame caption and noise."""
    from solverzoo.models.conditioners import conditioner_by_name
    from solverzoo.models.worlds.video import FRAMES

    frames = frames or FRAMES
    path = weights.resolve(FRAMES_ARTIFACT)
    cfg = weights.read_meta(path)["config"]
    image = weights.load_into(DiT(**cfg["net"]), path).to(device).eval()
    model = Model(FrameByFrame(image), cfg["prediction"], schedule_from_spec(cfg["schedule"]), time_input=cfg["time_input"])
    cond = FrameConditioner(conditioner_by_name(cfg.get("conditioner"), device=device), frames)
    clf, world = _video_world(device, frames)
    card, wid = _card_and_id(path)
    card = ("# shapes-video-frames\n\nThe frame-by-frame baseline: the image DiT below applied to each of "
            f"{frames} frames independently, conditioned on that frame's image-world caption "
            "(`solverzoo.models.worlds.video.frame_captions`), every frame from its own noise.\n\n" + card)
    return Backbone("shapes-video-frames", model, cond, (frames, 4, 8, 8), clip_decoder(VAE_ARTIFACT, device), "flow_shift",
                    {"shift": 2.0}, clf, world=world, card=card, artifact=FRAMES_ARTIFACT, weights_id=f"frames{frames}-{wid}")


@hookimpl
def register_backbones(register):
    register(shapes_video, name="shapes-video")
    register(shapes_video_frames, name="shapes-video-frames")
