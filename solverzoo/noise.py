"""Injected randomness: per-sample generators make sample i independent of batch size,
device and of which other solvers ran. Noise is drawn in float32 on the generator's device
and then moved, so CPU-seeded noise is identical on every device and dtype."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def generators(seeds: Sequence[int], device: str = "cpu") -> list[torch.Generator]:
    """One generator per sample, seeded with ``seeds[i]``."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: Generators, *, dtype=torch.float32, device="cpu") -> Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row i comes from generator i.

    Every draw is made in float32 on the generator's device (``device`` without a generator) and
    only then cast to ``dtype`` and moved to ``device``, so the same seeds give the same noise
    whatever ``torch.get_default_dtype()`` is and whatever dtype or device the sample uses.
    """
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return noise.to(device=device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}; pass one generator per sample")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in gens]
    return torch.stack(rows).to(device=device, dtype=dtype)


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)
