"""Space-time video DiT (the Lumiere idea on a DiT: the whole clip is one space-time volume, denoised
at once, so motion is planned together with the content) and :class:`FrameByFrame`, the baseline
it argues against: an image network applied to every frame on its own.

:class:`VideoDiT` takes per-frame VAE latents ``(B, T, C, H, W)``; every frame is cut into
``patch x patch`` patches (T * grid^2 tokens). Each block applies, with adaLN-Zero shift / scale /
gate from the timestep + pooled text (as :class:`~solverzoo.models.nets.dit.DiT` does):
spatial self-attention (the tokens of one frame), temporal self-attention (one patch position
across the frames), cross-attention to the text tokens, and an MLP. Position: fixed sine-cosine
embeddings, 2-D over the patch grid (added to the tokens, as in the image DiT) and 1-D over time
(added to the temporal attention's input, so a clip of any length runs, and a VideoDiT whose
temporal gates are zero is exactly the image DiT applied to every frame: :func:`inflate_from`
starts it from a trained image DiT, as Lumiere inflates its text-to-image model).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from solverzoo.caching import StackSpec
from solverzoo.models.nets.dit import Attention, modulate, sincos_2d, timestep_embedding
from solverzoo.perturb import PerturbSpec

N_MOD = 12  # four sub-layers (spatial, temporal, cross, MLP), each with shift / scale / gate


def sincos_1d(hidden: int, length: int) -> Tensor:
    """Fixed 1-D sine-cosine embedding of positions 0..length-1, (length, hidden)."""
    half = hidden // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) / half)
    pos = torch.arange(length, dtype=torch.float32)[:, None] * omega[None]
    return torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)


class VideoDiTBlock(nn.Module):
    """Factorised space-time block on tokens ``(B, T * N, D)`` laid out frame after frame
    (``N = tokens_per_frame``): spatial attention, temporal attention (with the 1-D time embedding
    added to its input), cross-attention, MLP."""

    def __init__(self, hidden: int, heads: int, tokens_per_frame: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.tokens_per_frame = tokens_per_frame
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6) for _ in range(4))
        self.attn = Attention(hidden, heads)    # spatial: within a frame
        self.tattn = Attention(hidden, heads)   # temporal: across frames at one patch position
        self.xattn = Attention(hidden, heads, kv_dim=hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(hidden * mlp_ratio), hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, N_MOD * hidden))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        B, L, D = x.shape
        N = self.tokens_per_frame
        T = L // N
        m = self.ada(c).chunk(N_MOD, dim=-1)
        y = modulate(self.norms[0](x), m[0], m[1]).reshape(B * T, N, D)
        x = x + m[2][:, None] * self.attn(y).reshape(B, L, D)
        y = modulate(self.norms[1](x), m[3], m[4]).reshape(B, T, N, D) + sincos_1d(D, T).to(x)[None, :, None]
        y = y.transpose(1, 2).reshape(B * N, T, D)
        x = x + m[5][:, None] * self.tattn(y).reshape(B, N, T, D).transpose(1, 2).reshape(B, L, D)
        x = x + m[8][:, None] * self.xattn(modulate(self.norms[2](x), m[6], m[7]), ctx, mask)
        return x + m[11][:, None] * self.mlp(modulate(self.norms[3](x), m[9], m[10]))


def _video_indicator(blk: VideoDiTBlock, args: tuple, kwargs: dict) -> Tensor:
    """The first block's timestep-modulated input ``modulate(norm(h), shift, scale)`` (TeaCache's indicator)."""
    h, c = args[0], args[1]
    m = blk.ada(c).chunk(N_MOD, dim=-1)
    return modulate(blk.norms[0](h), m[0], m[1])


VIDEO_DIT_STACK = StackSpec(
    "blocks",
    streams=lambda a, k: (a[0],),
    call=lambda blk, a, k, s: (blk(s[0], *a[1:], **k),),
    output=lambda s: s[0],
    indicator=_video_indicator,
    name="VideoDiT",
    description="solverzoo VideoDiT: .blocks called as blk(h, c, ctx, mask), one hidden stream of T*N space-time tokens",
)
"""How caches drive :class:`VideoDiT`'s blocks (see :mod:`solverzoo.caching`)."""

VIDEO_DIT_PERTURB = PerturbSpec(
    "blocks",
    skip=lambda blk, a, k: a[0],
    name="VideoDiT",
    description="solverzoo VideoDiT: .blocks (skip: return h); no self-attention declared (it runs per frame, "
                "not per sample)",
)
"""Where perturbation guidance finds :class:`VideoDiT`'s blocks (block skipping, e.g. SLG, only)."""


class VideoDiT(nn.Module):
    """Space-time diffusion transformer over per-frame latents ``(B, T, C, H, W)``; output the same shape.

    Args:
        in_channels, input_size, patch: one frame's latent and its patchification.
        frames: the clip length trained on (any length runs: the time embedding is computed per call).
        hidden, depth, heads, mlp_ratio: transformer size.
        text_dim: width of the text tokens and pooled vector (the conditioner's).
        frame_embed: also add the frame's position to every token at the input, as a learned
            linear map of the fixed 1-D sine-cosine embedding (zero-initialised, so a network
            continued from weights without it starts as exactly that network). Without it a token
            learns which frame it is in only through the temporal attention, and the spatial and
            cross-attention of frame 0 cannot tell "the start of the clip" from "the end": the
            direction of an asked motion (left to right vs right to left, growing vs shrinking)
            is then a coin flip (see the ``shapes-dit-video`` model card).
    """

    cache_stack = VIDEO_DIT_STACK  # caches (solverzoo.caching) may drive .blocks
    perturb_spec = VIDEO_DIT_PERTURB

    def __init__(self, in_channels: int = 4, input_size: int = 8, patch: int = 2, frames: int = 8, hidden: int = 96,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, text_dim: int = 384,
                 frame_embed: bool = False):
        super().__init__()
        self.config = dict(in_channels=in_channels, input_size=input_size, patch=patch, frames=frames, hidden=hidden,
                           depth=depth, heads=heads, mlp_ratio=mlp_ratio, text_dim=text_dim)
        if frame_embed:  # recorded only when on, so configs of networks without it are unchanged
            self.config["frame_embed"] = True
        self.in_channels, self.patch, self.grid, self.hidden = in_channels, patch, input_size // patch, hidden
        self.embed = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.register_buffer("pos", sincos_2d(hidden, self.grid), persistent=False)
        self.t_mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.text_proj = nn.Linear(text_dim, hidden)
        self.pool_mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frame_embed = nn.Linear(hidden, hidden) if frame_embed else None
        if self.frame_embed is not None:
            nn.init.zeros_(self.frame_embed.weight)
            nn.init.zeros_(self.frame_embed.bias)
        n = self.grid * self.grid
        self.blocks = nn.ModuleList(VideoDiTBlock(hidden, heads, n, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, patch * patch * in_channels)
        for mod in (self.final_ada[1], self.final):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None,
                pooled: Tensor | None = None) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"VideoDiT takes (B, T, C, H, W) clips of per-frame latents, got shape {tuple(x.shape)}")
        if tokens is None or pooled is None:
            raise ValueError("VideoDiT is text-conditioned: pass tokens, mask and pooled (from its conditioner)")
        B, T, C, H, W = x.shape
        h = self.embed(x.reshape(B * T, C, H, W)).flatten(2).transpose(1, 2)  # (B*T, N, D)
        h = h + self.pos.to(h)
        if self.frame_embed is not None:  # (T, D) frame positions, added to every token of the frame
            h = h.reshape(B, T, -1, self.hidden) + self.frame_embed(sincos_1d(self.hidden, T).to(h))[None, :, None]
        h = h.reshape(B, -1, self.hidden)
        c = self.t_mlp(timestep_embedding(t, 256).to(self.embed.weight.dtype)) + self.pool_mlp(pooled)
        ctx = self.text_proj(tokens)
        for blk in self.blocks:
            h = blk(h, c, ctx, mask)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        h = self.final(modulate(self.final_norm(h), shift, scale))
        p, g = self.patch, self.grid
        return h.reshape(B, T, g, g, p, p, C).permute(0, 1, 6, 2, 4, 3, 5).reshape(B, T, C, H, W)


def _per_frame_time(t: Tensor, clips: int, frames: int) -> Tensor:
    """A clip's time input (a scalar or one per clip) repeated for each of its frames, (clips * frames,)."""
    t = t.reshape(-1)
    if t.numel() not in (1, clips):
        raise ValueError(f"FrameByFrame: {t.numel()} time inputs for {clips} clips")
    return t.expand(clips).repeat_interleave(frames)


@dataclasses.dataclass(frozen=True)
class FrameStackSpec(StackSpec):
    """An image network's :class:`~solverzoo.caching.StackSpec` as :class:`FrameByFrame` runs it:
    the blocks see ``B * T`` frame rows per call of ``B`` clips, so the rows they compute are
    counted per clip (divided by T) and a cache's backbone evaluations stay per sample, and the
    time input a cache reads has one entry per frame row. Called
    with an image batch (4-D), it is the image network's own spec."""

    def run(self, session, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        before = session.block_rows
        if x.dim() == 5:  # the blocks' rows are frames: the time input per frame row (as FrameByFrame passes it)
            session.t = _per_frame_time(t, x.shape[0], x.shape[1])
        try:
            return super().run(session, x, t, cond)
        finally:
            if x.dim() == 5:
                session.block_rows = before + (session.block_rows - before) / x.shape[1]


class FrameByFrame(nn.Module):
    """An image network applied to every frame of ``(B, T, C, H, W)`` on its own (the frame-by-frame baseline).

    The conditioning carries a frame axis after the batch axis (tokens ``(B, T, L, D)``, mask
    ``(B, T, L)``, pooled ``(B, T, D)``: each frame its own caption); both are flattened to
    ``B * T`` rows for the image network ``net`` and the output is reshaped back. ``net`` is kept
    as an attribute so caches find its block stack (:func:`solverzoo.caching.find_stack`); where
    its class declares a :class:`~solverzoo.caching.StackSpec`, ``net`` gets that spec as a
    :class:`FrameStackSpec` (the same blocks, evaluations counted per clip), so ``net`` is the
    wrapper's own (pass a copy to keep the original untouched).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        spec = getattr(type(net), "cache_stack", None)
        if isinstance(spec, StackSpec) and not isinstance(spec, FrameStackSpec):
            net.cache_stack = FrameStackSpec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"FrameByFrame takes (B, T, C, H, W) clips, got shape {tuple(x.shape)}")
        B, T = x.shape[:2]
        flat = {}
        for k, v in cond.items():
            if v is None:
                continue
            if v.shape[:2] != (B, T):
                raise ValueError(f"FrameByFrame: conditioning {k!r} has shape {tuple(v.shape)}; expected a leading (B, T) = "
                                 f"({B}, {T}) (one entry per frame, from FrameConditioner)")
            flat[k] = v.reshape(B * T, *v.shape[2:])
        out = self.net(x.reshape(B * T, *x.shape[2:]), _per_frame_time(t, B, T), **flat)
        return out.reshape(x.shape)



def inflate_from(video: VideoDiT, image: nn.Module) -> VideoDiT:
    """Copy a trained image :class:`~solverzoo.models.nets.dit.DiT` (text-conditioned, same hidden
    width, depth and patch) into ``video``: embeddings, spatial attention, cross-attention, MLPs and
    their modulation; the temporal attention keeps its fresh weights with a zero gate, so the
    result starts as the image DiT applied to every frame. Returns ``video``."""
    src = image.state_dict()
    if image.config["hidden"] != video.hidden or len(image.blocks) != len(video.blocks) or image.patch != video.patch:
        raise ValueError(f"inflate_from: the image DiT {image.config} does not match the VideoDiT {video.config}")
    dst = video.state_dict()
    D = video.hidden
    for k, v in src.items():
        if ".ada.1." in k:  # image chunks: self(0:3) cross(3:6) mlp(6:9) -> video: spatial(0:3) cross(6:9) mlp(9:12)
            new = torch.zeros_like(dst[k])
            new[:3 * D], new[6 * D:] = v[:3 * D], v[3 * D:]
            dst[k] = new
        elif k in dst:
            dst[k] = v.to(dst[k].dtype)
        elif not k.startswith(("label_emb",)):
            raise ValueError(f"inflate_from: the VideoDiT has no place for the image DiT's {k!r}")
    video.load_state_dict(dst)
    return video
