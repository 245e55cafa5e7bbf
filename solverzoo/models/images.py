"""Image grids as PNG (Pillow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def save_grid(x: torch.Tensor, path: str | Path, ncol: int | None = None, scale: int = 4, pad: int = 2,
              compress_level: int = 6) -> Path:
    """Write images (B, C, H, W) in [-1, 1] as one PNG grid, upscaled ``scale`` times (nearest)."""
    from PIL import Image

    imgs = to_uint8(x)
    b, h, w, _ = imgs.shape
    ncol = ncol or int(np.ceil(np.sqrt(b)))
    nrow = int(np.ceil(b / ncol))
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = imgs[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(canvas)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path, compress_level=compress_level)
    return path


def save_thumbnails(images: torch.Tensor, path: str | Path) -> Path | None:
    """Native-size thumbnails of a cell, light compression (a report upscales once when it composes
    its grid): images (B, C, H, W): the first 8 in a row; clips (B, T, C, H, W): the first 4, one
    row of T frames each; anything else (points) has none (None)."""
    if images.ndim == 4:
        return save_grid(images[:8], path, ncol=8, scale=1, compress_level=1)
    if images.ndim == 5:
        clips = images[:4]
        return save_grid(clips.reshape(-1, *clips.shape[2:]), path, ncol=clips.shape[1], scale=1, compress_level=1)
    return None
