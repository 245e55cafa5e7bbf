"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023) with adaLN-Zero
conditioning, plus text tokens through cross-attention and a pooled text vector in the
modulation (as in PixArt-alpha / SD3), or class labels through an embedding table."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solverzoo.caching import StackSpec
from solverzoo.perturb import PerturbSpec


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) times (Vaswani et al. 2017; ADM / DiT convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(hidden: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid * grid, hidden)."""
    q = hidden // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    out = [f(c.reshape(-1)[:, None] * omega[None]) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(out, dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(kv_dim or hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, ctx: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).reshape(B, N, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).reshape(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """Self-attention, optional cross-attention and MLP, each with adaLN-Zero shift/scale/gate."""

    def __init__(self, hidden: int, heads: int, ctx_dim: int | None, mlp_ratio: float = 4.0):
        super().__init__()
        self.cross = ctx_dim is not None
        n_mod = 9 if self.cross else 6
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6) for _ in range(n_mod // 3))
        self.attn = Attention(hidden, heads)
        self.xattn = Attention(hidden, heads, kv_dim=hidden) if self.cross else None
        self.mlp = nn.Sequential(nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(hidden * mlp_ratio), hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, n_mod * hidden))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, ctx: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        mods = self.ada(c).chunk(9 if self.cross else 6, dim=-1)
        x = x + mods[2][:, None] * self.attn(modulate(self.norms[0](x), mods[0], mods[1]))
        if self.cross:
            x = x + mods[5][:, None] * self.xattn(modulate(self.norms[1](x), mods[3], mods[4]), ctx, mask)
        s, sc, g = mods[-3:]
        return x + g[:, None] * self.mlp(modulate(self.norms[-1](x), s, sc))


def _dit_indicator(blk: DiTBlock, args: tuple, kwargs: dict) -> Tensor:
    """The first block's timestep-modulated input ``modulate(norm(h), shift, scale)`` (TeaCache's indicator)."""
    h, c = args[0], args[1]
    mods = blk.ada(c).chunk(9 if blk.cross else 6, dim=-1)
    return modulate(blk.norms[0](h), mods[0], mods[1])


DIT_STACK = StackSpec(
    "blocks",
    streams=lambda a, k: (a[0],),
    call=lambda blk, a, k, s: (blk(s[0], *a[1:], **k),),
    output=lambda s: s[0],
    indicator=_dit_indicator,
    name="DiT",
    description="solverzoo DiT: .blocks called as blk(h, c, ctx, mask), one hidden stream",
)
"""How caches drive :class:`DiT`'s blocks (see :mod:`solverzoo.caching`)."""


def _dit_qkv(attn: Attention, args: tuple, kwargs: dict):
    """Per-head ``(q, k, v)`` of the self-attention call ``attn(x)``, as :meth:`Attention.forward` forms them."""
    x = args[0]
    B, N, _ = x.shape
    q = attn.q(x).reshape(B, N, attn.heads, -1).transpose(1, 2)
    k, v = attn.kv(x).reshape(B, N, 2, attn.heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


DIT_PERTURB = PerturbSpec(
    "blocks",
    skip=lambda blk, a, k: a[0],
    attention="attn",
    qkv=_dit_qkv,
    project=lambda attn, y, a, k: attn.out(y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)),
    token_grid=lambda net, n: (net.grid, net.grid),
    name="DiT",
    description="solverzoo DiT: .blocks (skip: return h), self-attention .attn of each block over the patch grid",
)
"""Where perturbation guidance (PAG, SEG, SAG, SLG) finds :class:`DiT`'s blocks and self-attention."""


class DiT(nn.Module):
    """Diffusion transformer over (B, C, H, W) inputs.

    Args:
        in_channels, input_size, patch: the input and its patchification.
        hidden, depth, heads, mlp_ratio: transformer size.
        text_dim: width of text tokens / pooled vector (None for no text conditioning).
        num_classes: number of class labels (None for no label conditioning); label -1 is null.
    """

    cache_stack = DIT_STACK  # caches (solverzoo.caching) may drive .blocks
    perturb_spec = DIT_PERTURB  # perturbation guidance (solverzoo.perturb) may skip blocks or change .attn

    def __init__(self, in_channels: int = 4, input_size: int = 8, patch: int = 2, hidden: int = 128, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 4.0, text_dim: int | None = 384, num_classes: int | None = None):
        super().__init__()
        self.config = dict(in_channels=in_channels, input_size=input_size, patch=patch, hidden=hidden, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio, text_dim=text_dim, num_classes=num_classes)
        self.in_channels, self.patch, self.grid = in_channels, patch, input_size // patch
        self.embed = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.register_buffer("pos", sincos_2d(hidden, self.grid)[None], persistent=False)
        self.t_mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.text_proj = nn.Linear(text_dim, hidden) if text_dim else None
        self.pool_mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) if text_dim else None
        self.label_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None  # last row: null label
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, hidden if text_dim else None, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, patch * patch * in_channels)
        for m in (self.final_ada[1], self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None,
                pooled: Tensor | None = None, label: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        c = self.t_mlp(timestep_embedding(t, 256).to(self.embed.weight.dtype))
        ctx = None
        if self.text_proj is not None:
            if tokens is None:
                raise ValueError("this DiT is text-conditioned: pass tokens, mask and pooled (from its conditioner)")
            ctx = self.text_proj(tokens)
            c = c + self.pool_mlp(pooled)
        if self.label_emb is not None:
            if label is None:
                raise ValueError("this DiT is class-conditional: pass label (-1 for unconditional)")
            idx = torch.where(label < 0, torch.full_like(label, self.label_emb.num_embeddings - 1), label)
            c = c + self.label_emb(idx)
        for blk in self.blocks:
            h = blk(h, c, ctx, mask)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        h = self.final(modulate(self.final_norm(h), shift, scale))
        p, g = self.patch, self.grid
        return h.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
