"""The next-token video backbone ``shapes-video-ar`` (VideoPoet's idea in small): a VQ tokenizer
of the ``shapes-vae`` per-frame latents and a caption-conditioned causal transformer, trained
here on the shapes video world. It is not a diffusion model: ``model`` is None and the harness
samples it through ``generator`` (:class:`~solverzoo.models.video_ar.VideoARGenerator`), whose
cost per sample (transformer passes and FLOPs) stands beside a diffusion sampler's NFE. States
are per-frame latents ``(B, T, 4, 8, 8)``, decoded to clips ``(B, T, 3, 32, 32)`` in [-1, 1], and
the world is the shapes video world's :class:`VideoEvalWorld`, as for ``shapes-video``."""
from __future__ import annotations

import hashlib

from solverzoo import hookimpl
from solverzoo.backbone import Backbone
from solverzoo.models import weights
from solverzoo_builtin.video_backbones import clip_decoder

ARTIFACT = "shapes-video-ar"
CLASSIFIER_ARTIFACT = "shapes-video-classifier"


def shapes_video_ar(device: str = "cpu") -> Backbone:
    """The next-token video model on the shapes video world (MiniLM caption conditioning)."""
    from solverzoo.models.conditioners import conditioner_by_name
    from solverzoo.models.nets.video_ar import VideoAR
    from solverzoo.models.video_ar import VideoARGenerator
    from solverzoo.models.worlds.video_eval import VideoEvalWorld, load_video_classifier

    path = weights.resolve(ARTIFACT)
    cfg = weights.read_meta(path)["config"]
    model = weights.load_into(VideoAR(cfg["tokenizer"], cfg["net"]), path)
    cond = conditioner_by_name(cfg.get("conditioner"), device=device)
    frames = int(cfg["net"]["frames"])
    clf = load_video_classifier(CLASSIFIER_ARTIFACT).to(device).eval()
    tok = cfg["tokenizer"]
    card = path.with_suffix(".md")
    return Backbone(ARTIFACT, None, cond, (frames, tok["latent_channels"], tok["latent_size"], tok["latent_size"]),
                    clip_decoder(cfg["vae"], device), classifier=clf, world=VideoEvalWorld(clf, frames),
                    card=card.read_text() if card.exists() else "", artifact=ARTIFACT,
                    weights_id=hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                    generator=VideoARGenerator(model, cond, device=device))


@hookimpl
def register_backbones(register):
    register(shapes_video_ar, name="shapes-video-ar")
