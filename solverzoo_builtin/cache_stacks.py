"""Block-stack declarations for diffusers networks, so caches (:mod:`solverzoo.caching`) can
drive them: ``DiTTransformer2DModel``, ``SD3Transformer2DModel`` and ``FluxTransformer2DModel``
(its dual-stream blocks, then its single-stream blocks, as one chain) for the transformer caches;
``UNet2DModel`` and ``UNet2DConditionModel`` (a U-Net layout) for DeepCache.

Registered by class name (kind ``cache_stack``), the way a plugin makes any third-party network
cacheable. Nothing here imports diffusers: the specs only call the blocks they are given.
"""
from __future__ import annotations

from torch import Tensor

from solverzoo import hookimpl
from solverzoo.caching import StackSpec
from solverzoo_builtin.deepcache import UNetSpec


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


# -- diffusers FluxTransformer2DModel: dual-stream blocks, then single-stream blocks ---------
# Both lists take (hidden_states=image, encoder_hidden_states=context, temb, image_rotary_emb,
# joint_attention_kwargs) and return (context, image); a single-stream block concatenates the two
# streams inside and splits them again, so the chain carries (image, context) throughout.
def _flux_call(blk, args: tuple, kwargs: dict, streams: tuple) -> tuple:
    ehs, hs = blk(**{**kwargs, "hidden_states": streams[0], "encoder_hidden_states": streams[1]})
    return (hs, ehs)


def _flux_indicator(blk, args: tuple, kwargs: dict) -> Tensor:
    """``norm1`` (AdaLayerNormZero on ``temb``) of the first dual-stream block's image stream."""
    return blk.norm1(kwargs["hidden_states"], emb=kwargs["temb"])[0]


FLUX = StackSpec(
    "transformer_blocks",
    streams=lambda a, k: (k["hidden_states"], k["encoder_hidden_states"]),
    call=_flux_call,
    output=lambda s: (s[1], s[0]),
    indicator=_flux_indicator,
    name="FluxTransformer2DModel",
    description="diffusers FluxTransformer2DModel: .transformer_blocks then .single_transformer_blocks, image and context",
    then=("single_transformer_blocks",),
)

# -- diffusers UNets: down blocks, a middle block, up blocks --------------------------------
UNET = UNetSpec(name="UNet2DModel", description="diffusers UNet2DModel: U-Net .down_blocks / .mid_block / .up_blocks")
UNET_COND = UNetSpec(name="UNet2DConditionModel",
                     description="diffusers UNet2DConditionModel: U-Net .down_blocks / .mid_block / .up_blocks")


@hookimpl
def register_cache_stacks(register):
    register(HF_DIT)
    register(SD3)
    register(FLUX)
    register(UNET)
    register(UNET_COND)
