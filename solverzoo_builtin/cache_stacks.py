"""Block-stack declarations for diffusers transformers, so caches (:mod:`solverzoo.caching`) can
drive them: ``DiTTransformer2DModel`` and ``SD3Transformer2DModel``.

Registered by class name (kind ``cache_stack``), the way a plugin makes any third-party network
cacheable. Nothing here imports diffusers: the specs only call the blocks they are given.
"""
from __future__ import annotations

from torch import Tensor

from solverzoo import hookimpl
from solverzoo.caching import StackSpec


# -- diffusers DiTTransformer2DModel: blk(hidden_states, ..., timestep=, class_labels=) -------
def _hf_dit_hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hf_dit_call(blk, args: tuple, kwargs: dict, streams: tuple) -> tuple:
    if args:
        return (blk(streams[0], *args[1:], **kwargs),)
    return (blk(**{**kwargs, "hidden_states": streams[0]}),)


def _hf_dit_indicator(blk, args: tuple, kwargs: dict) -> Tensor:
    """``norm1`` (adaLN-Zero) of the first block's input: its timestep-modulated input."""
    h = _hf_dit_hidden(args, kwargs)
    return blk.norm1(h, kwargs.get("timestep"), kwargs.get("class_labels"), hidden_dtype=h.dtype)[0]


HF_DIT = StackSpec(
    "transformer_blocks",
    streams=lambda a, k: (_hf_dit_hidden(a, k),),
    call=_hf_dit_call,
    output=lambda s: s[0],
    indicator=_hf_dit_indicator,
    name="DiTTransformer2DModel",
    description="diffusers DiTTransformer2DModel: .transformer_blocks, one hidden stream",
)


# -- diffusers SD3Transformer2DModel: joint blocks carrying image and context streams ---------
def _sd3_call(blk, args: tuple, kwargs: dict, streams: tuple) -> tuple:
    ehs, hs = blk(**{**kwargs, "hidden_states": streams[0], "encoder_hidden_states": streams[1]})
    return (hs, streams[1] if ehs is None else ehs)  # the last block returns no context stream


def _sd3_indicator(blk, args: tuple, kwargs: dict) -> Tensor:
    """``norm1`` (AdaLayerNormZero on ``temb``) of the first block's image stream."""
    return blk.norm1(kwargs["hidden_states"], emb=kwargs["temb"])[0]


SD3 = StackSpec(
    "transformer_blocks",
    streams=lambda a, k: (k["hidden_states"], k["encoder_hidden_states"]),
    call=_sd3_call,
    output=lambda s: (s[1], s[0]),
    indicator=_sd3_indicator,
    name="SD3Transformer2DModel",
    description="diffusers SD3Transformer2DModel: .transformer_blocks, image and context streams",
)


@hookimpl
def register_cache_stacks(register):
    register(HF_DIT)
    register(SD3)
