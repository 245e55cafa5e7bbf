"""The next-token video model's networks (VideoPoet's idea in small): a vector-quantising
tokenizer of the shapes VAE's latents and a caption-conditioned causal transformer over a clip's
tokens.

* :class:`VQTokenizer` - a k-means codebook over ``patch x patch`` patches of a frame's scaled
  VAE latent (4 x 8 x 8): with ``patch=2`` each frame is 16 tokens (a 4 x 4 grid of 16-d
  vectors), an 8-frame clip 128 tokens in frame-major, row-major order. Decoding puts the codes
  back in place and adds a small convolutional refiner's residual (it sees the whole frame's
  codes, so it restores edges a single patch code blurs; trained by latent regression);
* :class:`CausalVideoTransformer` - a decoder-only transformer (pre-norm blocks of causal
  self-attention, cross-attention to the caption's text-encoder tokens, and an MLP) that reads
  ``[BOS, t_0, ..., t_{n-2}]`` plus learned (time, row, col) embeddings of the position being
  predicted and returns the logits of ``t_0 .. t_{n-1}``; it runs a whole sequence at once
  (training) or a few new positions against a key/value cache (sampling, one position per pass);
* :func:`flops_per_sample` - the matrix-product FLOPs of sampling one clip with the cache.

Attention is written out as matrix products (not ``scaled_dot_product_attention``) so torch's
FLOP counter sees every product the analytic count includes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VQTokenizer(nn.Module):
    """Nearest-code quantisation of latent patches.

    Args:
        codes: the codebook size K.
        latent_channels, latent_size: a frame's latent is ``(latent_channels, latent_size, latent_size)``.
        patch: patch side in latent pixels; a token is a ``latent_channels * patch**2`` vector.
        refine_width: channels of the decoder's refiner (four 3x3 convolutions on the frame's
            looked-up latent, adding a residual; its last layer starts at zero); 0 for none.
    """

    def __init__(self, codes: int = 512, latent_channels: int = 4, latent_size: int = 8, patch: int = 2,
                 refine_width: int = 64):
        super().__init__()
        if latent_size % patch:
            raise ValueError(f"latent_size {latent_size} is not a multiple of patch {patch}")
        self.config = dict(codes=codes, latent_channels=latent_channels, latent_size=latent_size, patch=patch,
                           refine_width=refine_width)
        self.c, self.p, self.grid = latent_channels, patch, latent_size // patch
        self.dim = latent_channels * patch * patch
        self.register_buffer("codebook", torch.zeros(codes, self.dim))
        self.refine = None
        if refine_width:
            w, c = int(refine_width), latent_channels
            self.refine = nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(w, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, c, 3, padding=1))
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    def patches(self, z: Tensor) -> Tensor:
        """``(..., C, H, W)`` latents -> ``(..., grid*grid, C*p*p)`` patch vectors (row-major patches)."""
        lead, (c, h, w) = z.shape[:-3], z.shape[-3:]
        if (c, h) != (self.c, self.grid * self.p) or w != h:
            side = self.grid * self.p
            raise ValueError(f"expected latents (..., {self.c}, {side}, {side}), got {tuple(z.shape)}")
        g, p = self.grid, self.p
        x = z.reshape(-1, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(*lead, g * g, c * p * p)

    def unpatch(self, v: Tensor) -> Tensor:
        """Inverse of :meth:`patches`."""
        lead, g, p, c = v.shape[:-2], self.grid, self.p, self.c
        x = v.reshape(-1, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(*lead, c, g * p, g * p)

    def nearest(self, vectors: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean distance) of each ``(..., dim)`` vector."""
        flat = vectors.reshape(-1, self.dim).to(self.codebook.dtype)
        ids = [torch.cdist(flat[i:i + 32768], self.codebook, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
               for i in range(0, len(flat), 32768)]
        return torch.cat(ids).reshape(vectors.shape[:-1])

    def encode(self, z: Tensor) -> Tensor:
        """``(..., C, H, W)`` latents -> ``(..., grid*grid)`` token ids."""
        return self.nearest(self.patches(z))

    def lookup(self, tokens: Tensor) -> Tensor:
        """``(..., grid*grid)`` token ids -> ``(..., C, H, W)`` latents: the codes put back in place."""
        if tokens.shape[-1] != self.tokens_per_frame:
            raise ValueError(f"expected {self.tokens_per_frame} tokens per frame in the last dimension, got {tokens.shape[-1]}")
        return self.unpatch(self.codebook[tokens])

    def refined(self, coarse: Tensor) -> Tensor:
        """The refiner applied to looked-up latents ``(..., C, H, W)`` (the identity without one)."""
        if self.refine is None:
            return coarse
        flat = coarse.reshape(-1, *coarse.shape[-3:])
        return (flat + self.refine(flat)).reshape(coarse.shape)

    def decode(self, tokens: Tensor) -> Tensor:
        """``(..., grid*grid)`` token ids -> ``(..., C, H, W)`` latents (looked up, then refined)."""
        return self.refined(self.lookup(tokens))

    @torch.no_grad()
    def fit(self, vectors: Tensor, iters: int, generator: torch.Generator, chunk: int = 65536) -> dict:
        """Lloyd's k-means on ``(N, dim)`` patch vectors, seeded with N random distinct rows;
        an emptied cluster is re-seeded with the vector farthest from its code. Returns
        ``{"inertia": mean squared distance, "used": codes with members}`` of the final codebook."""
        k = self.codebook.shape[0]
        if vectors.shape[0] < k:
            raise ValueError(f"k-means needs at least {k} vectors, got {vectors.shape[0]}")
        vectors = vectors.float()
        code = vectors[torch.randperm(len(vectors), generator=generator)[:k]].clone()
        for _ in range(int(iters)):
            dist, assign = self._assign(vectors, code, chunk)
            count = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(code).index_add_(0, assign, vectors)
            code = torch.where(count[:, None] > 0, sums / count.clamp_min(1)[:, None], code)
            empty = (count == 0).nonzero().flatten()
            if len(empty):
                code[empty] = vectors[dist.topk(len(empty)).indices]
        self.codebook.copy_(code)
        dist, assign = self._assign(vectors, code, chunk)
        return {"inertia": float(dist.mean()), "used": int((torch.bincount(assign, minlength=k) > 0).sum())}

    @staticmethod
    def _assign(vectors: Tensor, code: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        dists, ids = [], []
        c2 = (code ** 2).sum(1)
        for i in range(0, len(vectors), chunk):
            v = vectors[i:i + chunk]
            d = ((v ** 2).sum(1, keepdim=True) - 2 * v @ code.T + c2).clamp_min(0)
            m = d.min(1)
            dists.append(m.values)
            ids.append(m.indices)
        return torch.cat(dists), torch.cat(ids)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Multi-head attention of ``q (B, h, n, d)`` over ``k, v (B, h, m, d)``; ``mask`` (broadcast to
    ``(B, h, n, m)``) is True where attention is allowed."""
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


class ARBlock(nn.Module):
    """Pre-norm block: causal self-attention (with a key/value cache), cross-attention to the
    caption's tokens, MLP."""

    def __init__(self, hidden: int, heads: int, text_dim: int, mlp_ratio: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.q_cross, self.kv_cross = nn.Linear(hidden, hidden), nn.Linear(text_dim, 2 * hidden)
        self.proj_cross = nn.Linear(hidden, hidden)
        m = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, m), nn.GELU(approximate="tanh"), nn.Linear(m, hidden))

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def context(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """The cross-attention keys and values of the caption's tokens ``(B, L, text_dim)``."""
        k, v = self.kv_cross(text).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: Tensor, cache: dict, ctx: tuple[Tensor, Tensor], text_mask: Tensor) -> Tensor:
        """``x (B, n, hidden)``: n new positions following the ``cache["k"]`` / ``cache["v"]`` ones
        (absent: none); the cache is extended in place with the new keys and values."""
        b, n, c = x.shape
        q, k, v = (self._heads(t) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
        past = k.shape[2] - n
        causal = torch.arange(k.shape[2], device=x.device)[None, :] <= (past + torch.arange(n, device=x.device))[:, None]
        x = x + self.proj(_attend(q, k, v, causal).transpose(1, 2).reshape(b, n, c))
        q = self._heads(self.q_cross(self.norm2(x)))
        x = x + self.proj_cross(_attend(q, *ctx, text_mask[:, None, None, :]).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm3(x))


class CausalVideoTransformer(nn.Module):
    """Caption-conditioned causal transformer over a clip's tokens.

    Args:
        codes: vocabulary size K (token ``K`` is the begin-of-sequence token).
        frames, grid: a clip is ``frames`` frames of ``grid x grid`` tokens.
        hidden, depth, heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        text_dim: width of the text encoder's tokens.
    """

    def __init__(self, codes: int = 512, frames: int = 8, grid: int = 4, hidden: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, text_dim: int = 384):
        super().__init__()
        self.config = dict(codes=codes, frames=frames, grid=grid, hidden=hidden, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, text_dim=text_dim)
        self.codes, self.frames, self.grid = codes, frames, grid
        self.length = frames * grid * grid
        self.tok = nn.Embedding(codes + 1, hidden)
        self.pos_t = nn.Parameter(torch.randn(frames, hidden) * 0.02)
        self.pos_r = nn.Parameter(torch.randn(grid, hidden) * 0.02)
        self.pos_c = nn.Parameter(torch.randn(grid, hidden) * 0.02)
        self.blocks = nn.ModuleList([ARBlock(hidden, heads, text_dim, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, codes)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def positions(self) -> Tensor:
        """``(length, hidden)``: the (time, row, col) embedding of every position, frame-major."""
        g = self.grid
        pos = self.pos_t[:, None, None] + self.pos_r[None, :, None] + self.pos_c[None, None, :]
        return pos.reshape(self.frames * g * g, -1)

    def start(self, text: Tensor, text_mask: Tensor) -> dict:
        """A fresh sampling state for captions encoded as ``text (B, L, text_dim)``, ``text_mask (B, L)``:
        the per-block cross-attention keys / values (computed once) and empty self-attention caches."""
        return {"ctx": [blk.context(text) for blk in self.blocks], "mask": text_mask.bool(),
                "cache": [{} for _ in self.blocks], "pos": 0}

    def step(self, prev: Tensor, state: dict) -> Tensor:
        """Logits ``(B, n, K)`` of the next n positions given their inputs ``prev (B, n)`` (the
        previous tokens; the BOS token K first); advances ``state``."""
        p0, n = state["pos"], prev.shape[1]
        if p0 + n > self.length:
            raise ValueError(f"a clip has {self.length} tokens; positions {p0}..{p0 + n - 1} are past its end")
        x = self.tok(prev) + self.positions()[p0:p0 + n]
        for blk, cache, ctx in zip(self.blocks, state["cache"], state["ctx"]):
            x = blk(x, cache, ctx, state["mask"])
        state["pos"] = p0 + n
        return self.head(self.norm(x))

    def forward(self, tokens: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, n, K)`` of a clip's tokens ``(B, n)`` (n <= length): position i
        sees tokens ``< i`` and the caption."""
        bos = torch.full_like(tokens[:, :1], self.codes)
        return self.step(torch.cat([bos, tokens[:, :-1]], 1), self.start(text, text_mask))

    def loss(self, tokens: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Mean next-token cross-entropy (nats per token)."""
        logits = self.forward(tokens, text, text_mask)
        return F.cross_entropy(logits.reshape(-1, self.codes), tokens.reshape(-1))


def flops_per_sample(cfg: dict, text_len: int, tokens: int | None = None, branches: int = 1) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of sampling one clip of ``tokens`` tokens (default:
    the whole clip) with the key/value cache, one position per pass, for each of ``branches``
    conditioning branches (2 with classifier-free guidance): per block, the caption's
    cross-attention keys / values once, then per position p (attending to p + 1 cached keys) the
    q/k/v, output, cross-query and cross-output projections, the attention products over the
    p + 1 keys and the ``text_len`` caption tokens, and the MLP; the output head per position.
    Layer norms, softmax, activations and the embedding lookup are not counted."""
    h, depth, k, dt = cfg["hidden"], cfg["depth"], cfg["codes"], cfg["text_dim"]
    m = int(h * cfg["mlp_ratio"])
    n = cfg["frames"] * cfg["grid"] ** 2 if tokens is None else int(tokens)
    per_block_fixed = 2 * text_len * dt * 2 * h  # kv_cross
    per_pos = 2 * h * 3 * h + 2 * h * h + 2 * h * h + 2 * h * h + 2 * (2 * h * m) + 2 * 2 * text_len * h
    attn = sum(2 * 2 * (p + 1) * h for p in range(n))
    return int(branches * (depth * (per_block_fixed + n * per_pos + attn) + n * 2 * h * k))


class VideoAR(nn.Module):
    """The shipped pair: ``tokenizer`` (:class:`VQTokenizer`) and ``net`` (:class:`CausalVideoTransformer`),
    built from their keyword-argument dicts (the config's ``tokenizer`` and ``net``)."""

    def __init__(self, tokenizer: dict, net: dict):
        super().__init__()
        self.tokenizer = VQTokenizer(**tokenizer)
        self.net = CausalVideoTransformer(**net)
        if self.net.codes != self.tokenizer.codebook.shape[0] or self.net.grid != self.tokenizer.grid:
            raise ValueError(f"the transformer's vocabulary / grid ({self.net.codes}, {self.net.grid}) does not match the "
                             f"tokenizer's ({self.tokenizer.codebook.shape[0]}, {self.tokenizer.grid})")
