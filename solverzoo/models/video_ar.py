"""Sampling the next-token video model: :class:`VideoARGenerator` turns captions into clips'
latents token by token with the key/value cache, classifier-free guidance on the logits,
temperature and top-k, and reports the cost per sample (network passes and FLOPs) so the
harness can set it beside a diffusion sampler's NFE."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from solverzoo.models.nets.video_ar import VideoAR, flops_per_sample

_SEED_HIGH = 2 ** 62


def row_generators(generator, n: int) -> list[torch.Generator]:
    """One torch.Generator per sample, so that sample i never depends on the others in its batch.

    ``generator`` is either a torch.Generator - row i is then seeded with its i-th draw (drawn
    one at a time, so the i-th seed is the same whatever the batch size) - or a sequence of n
    per-sample seeds (ints) or generators, used as they are (the harness's per-sample seed policy)."""
    if isinstance(generator, torch.Generator):
        seeds = [int(torch.randint(0, _SEED_HIGH, (1,), generator=generator)) for _ in range(n)]
        return [torch.Generator().manual_seed(s) for s in seeds]
    if isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} per-sample seeds/generators for {n} prompts; pass one per prompt")
        return [g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(int(g)) for g in generator]
    raise TypeError("generator must be a torch.Generator or a sequence of per-sample seeds / generators, "
                    f"got {type(generator).__name__}")


def _filter(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Next-token probabilities ``(B, K)`` from guided logits: top-k then temperature softmax."""
    logits = logits.double()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(int(top_k), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return (logits / temperature).softmax(-1)


class VideoARGenerator:
    """Captions -> clip latents with a trained :class:`~solverzoo.models.nets.video_ar.VideoAR`.

    Args:
        model: the tokenizer + transformer pair.
        conditioner: the text conditioner the transformer was trained with (``encode(prompts)`` /
            ``null(batch)`` returning ``tokens`` and ``mask``).
        device: where the transformer runs.
    """

    def __init__(self, model: VideoAR, conditioner, device: str = "cpu"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.conditioner = conditioner
        self.device = device
        net = self.model.net
        self.frames, self.tokens_per_frame, self.length = net.frames, net.grid ** 2, net.length

    def _text(self, prompts: list, guided: bool) -> tuple[Tensor, Tensor]:
        enc = self.conditioner.encode(prompts)
        text, mask = enc["tokens"], enc["mask"]
        if guided:  # conditional rows first, then the empty prompt's
            null = self.conditioner.null(len(prompts))
            text, mask = torch.cat([text, null["tokens"]]), torch.cat([mask, null["mask"]])
        return text.float().to(self.device), mask.to(self.device)

    def cost(self, text_len: int, guided: bool) -> dict:
        """Per-sample cost: ``forward_passes`` (network rows: one per token and branch; the two
        guidance branches run in one batched call but count as two rows, like a diffusion
        sampler's NFE with guidance), ``flops`` (see :func:`~solverzoo.models.nets.video_ar.flops_per_sample`)
        and ``tokens``."""
        branches = 2 if guided else 1
        return {"forward_passes": self.length * branches, "tokens": self.length,
                "flops": flops_per_sample(self.model.net.config, text_len, branches=branches)}

    @torch.no_grad()
    def generate(self, prompts: Sequence, generator, temperature: float = 1.0, top_k: int | None = None,
                 cfg_scale: float = 1.0) -> tuple[Tensor, dict]:
        """Sample one clip per prompt.

        Args:
            prompts: captions.
            generator: a torch.Generator or per-sample seeds / generators (see :func:`row_generators`).
            temperature: softmax temperature (> 0), or 0 for greedy decoding.
            top_k: keep only the k most probable tokens (None: all).
            cfg_scale: classifier-free guidance on the logits, ``u + s (c - u)``; 1 runs the conditional branch only.

        Returns:
            latents ``(B, T, 4, 8, 8)`` in the VAE's scaled latent space and the per-sample cost
            (:meth:`cost`).
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be a positive number of tokens or None, got {top_k}")
        b, guided = len(prompts), float(cfg_scale) != 1.0
        rows = row_generators(generator, b)
        text, mask = self._text(prompts, guided)
        net = self.model.net
        state = net.start(text, mask)
        prev = torch.full((len(text), 1), net.codes, dtype=torch.long, device=self.device)
        out = torch.empty(b, self.length, dtype=torch.long)
        for p in range(self.length):
            logits = net.step(prev, state)[:, -1].float().cpu()
            if guided:
                cond, uncond = logits.chunk(2)
                logits = uncond + float(cfg_scale) * (cond - uncond)
            if temperature == 0:
                tok = logits.argmax(-1)
            else:
                probs = _filter(logits, float(temperature), top_k)
                tok = torch.cat([torch.multinomial(probs[i], 1, generator=rows[i]) for i in range(b)])
            out[:, p] = tok
            prev = (torch.cat([tok, tok]) if guided else tok)[:, None].to(self.device)
        tokens = out.reshape(b, self.frames, self.tokens_per_frame).to(self.device)
        return self.model.tokenizer.decode(tokens).float().cpu(), self.cost(text.shape[1], guided)
