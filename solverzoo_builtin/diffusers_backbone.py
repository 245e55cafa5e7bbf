"""``backbone=diffusers``: any local diffusers pipeline folder as a benchmark backbone.

Registered like any third-party backbone; nothing of diffusers is imported until the backbone is
loaded (``solverzoo bench backbone=diffusers backbone.path=DIR``): the factory imports
:mod:`solverzoo.models.diffusers_pipeline` lazily."""
from __future__ import annotations

from solverzoo import hookimpl


def diffusers(device: str = "cpu", **options):
    """A local diffusers pipeline as a Backbone; options as
    :func:`solverzoo.models.diffusers_pipeline.diffusers_backbone` (``path``, ``dtype``, ``prompts``,
    ``clip``, ``reference``, ``inception_weights``, ``inception_resize``, ``height``, ``width``, ``decode_batch``)."""
    from solverzoo.models.diffusers_pipeline import diffusers_backbone

    return diffusers_backbone(device=device, **options)


@hookimpl
def register_backbones(register):
    register(diffusers, name="diffusers")
