"""A procedural, captioned 32x32 RGB world of one or two coloured shapes.

It stresses what text-to-image models get wrong (attribute binding, counting, position):
one object ("a large red circle at the top left") or two side by side ("a small blue square
beside a green triangle", the first named on the left). Every image comes with its ground-truth
attributes. Sample ``i`` of a world with seed ``s`` depends only on ``(s, i)``: unlimited and
reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (0.86, 0.16, 0.16), "green": (0.16, 0.70, 0.24), "blue": (0.20, 0.32, 0.88),
           "yellow": (0.92, 0.82, 0.16), "purple": (0.60, 0.24, 0.80)}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
_POS_XY = {"top left": (9, 9), "top right": (23, 9), "bottom left": (9, 23), "bottom right": (23, 23), "center": (16, 16)}
_RADIUS = {"small": 4.0, "large": 7.0}
SYNONYMS = {"circle": ("circle", "disc", "round dot"), "square": ("square", "box", "block"),
            "triangle": ("triangle", "wedge", "triangle")}
SINGLE_TEMPLATES = ("a {size} {colour} {shape} at the {pos}", "a {colour} {shape} in the {pos}, {size}",
                    "{size} {colour} {shape}, {pos}", "a picture of a {size} {colour} {shape} at the {pos}")
PAIR_TEMPLATES = ("a {size1} {colour1} {shape1} beside a {size2} {colour2} {shape2}",
                  "a {colour1} {shape1} to the left of a {colour2} {shape2}",
                  "{size1} {colour1} {shape1} next to {size2} {colour2} {shape2}")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: str  # one of POSITIONS for single objects, "left"/"right" in pairs


def _render(objs: list[Obj], centres: list[tuple[float, float]], rng: np.random.Generator, ss: int = 4,
            radii: list[float] | None = None) -> np.ndarray:
    """Anti-aliased rendering by ss x ss supersampling; returns float32 (3, 32, 32) in [-1, 1].
    ``radii``: each object's radius in pixels (default: its size's, ``_RADIUS[size]``)."""
    n = 32 * ss
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / ss
    bg = 0.12 + 0.04 * rng.random()
    img = np.full((3, n, n), bg, dtype=np.float32)
    for k, (o, (cx, cy)) in enumerate(zip(objs, centres)):
        r = _RADIUS[o.size] if radii is None else float(radii[k])
        if o.shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif o.shape == "square":
            h = r * 0.85
            mask = (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
        else:  # upward triangle inscribed in the circle of radius r
            top, base = cy - r, cy + 0.6 * r
            half = (yy - top) / (base - top) * r * 0.95
            mask = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
        col = np.array(COLOURS[o.colour], dtype=np.float32) * (0.9 + 0.2 * rng.random())
        img[:, mask] = np.clip(col, 0, 1)[:, None]
    img = img.reshape(3, 32, ss, 32, ss).mean(axis=(2, 4))
    return img * 2.0 - 1.0


class ShapesWorld:
    """Deterministic generator of (image, caption, attributes).

    Args:
        seed: world seed; sample i depends only on (seed, i).
        p_pair: probability that an image holds two objects.
    """

    def __init__(self, seed: int = 0, p_pair: float = 0.35):
        self.seed = int(seed)
        self.p_pair = float(p_pair)

    def item(self, index: int) -> tuple[np.ndarray, str, dict]:
        rng = np.random.default_rng([self.seed, int(index)])
        pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
        if rng.random() < self.p_pair:
            a = Obj(pick(SHAPES), pick(COLOUR_NAMES), pick(SIZES), "left")
            b = Obj(pick(SHAPES), pick(COLOUR_NAMES), pick(SIZES), "right")
            cy1, cy2 = 16 + rng.uniform(-5, 5), 16 + rng.uniform(-5, 5)
            centres = [(8.5 + rng.uniform(-1, 1), cy1), (23.5 + rng.uniform(-1, 1), cy2)]
            objs = [a, b]
            caption = pick(PAIR_TEMPLATES).format(size1=a.size, colour1=a.colour, shape1=pick(SYNONYMS[a.shape]),
                                                  size2=b.size, colour2=b.colour, shape2=pick(SYNONYMS[b.shape]))
        else:
            o = Obj(pick(SHAPES), pick(COLOUR_NAMES), pick(SIZES), pick(POSITIONS))
            x, y = _POS_XY[o.position]
            centres = [(x + rng.uniform(-1.5, 1.5), y + rng.uniform(-1.5, 1.5))]
            objs = [o]
            caption = pick(SINGLE_TEMPLATES).format(size=o.size, colour=o.colour, shape=pick(SYNONYMS[o.shape]), pos=o.position)
        img = _render(objs, centres, rng)
        attrs = {"count": len(objs), "objects": [o.__dict__.copy() for o in objs]}
        return img, caption, attrs

    def batch(self, start: int, n: int) -> tuple[np.ndarray, list[str], list[dict]]:
        items = [self.item(start + i) for i in range(n)]
        return np.stack([i[0] for i in items]), [i[1] for i in items], [i[2] for i in items]

    def images(self, start: int, n: int, workers: int = 1, chunk: int = 2000) -> np.ndarray:
        """The images of items ``start .. start + n - 1`` (as :meth:`batch`'s first output), drawn
        by ``workers`` forked processes in chunks when ``workers > 1`` (as torch's DataLoader
        workers are; the children only run numpy): each item depends only on (seed, index), so
        the result is identical whatever the split. Serial where fork is unavailable."""
        import multiprocessing as mp

        if workers <= 1 or n <= chunk or "fork" not in mp.get_all_start_methods():
            return self.batch(start, n)[0]
        from concurrent.futures import ProcessPoolExecutor

        spans = [(self.seed, self.p_pair, a, min(chunk, start + n - a)) for a in range(start, start + n, chunk)]
        out = np.empty((n, 3, 32, 32), dtype=np.float32)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            for (_, _, a, m), imgs in zip(spans, ex.map(_draw_images, spans)):
                out[a - start:a - start + m] = imgs
        return out


def _draw_images(span: tuple[int, float, int, int]) -> np.ndarray:
    seed, p_pair, start, n = span
    return ShapesWorld(seed, p_pair).batch(start, n)[0]


_SYN_TO_SHAPE = {syn: s for s, syns in SYNONYMS.items() for syn in syns}


def parse_caption(caption: str) -> dict:
    """Attributes a caption asks for: ``{"count", "objects": [{shape, colour, size?, position?}]}``.

    Understands the world's own templates and synonyms; unknown words are ignored, so free-form
    prompts still yield whatever shapes and colours they name (in order, left to right)."""
    text = caption.lower()
    found = []  # (char index, kind, value)
    for syn, shape in _SYN_TO_SHAPE.items():
        start = 0
        while (k := text.find(syn, start)) >= 0:
            found.append((k, "shape", shape))
            start = k + len(syn)
    for c in COLOUR_NAMES:
        start = 0
        while (k := text.find(c, start)) >= 0:
            found.append((k, "colour", c))
            start = k + len(c)
    found.sort()
    objs, cur = [], {}
    for _, kind, value in found:
        if kind == "shape":
            cur["shape"] = value
            objs.append(cur)
            cur = {}
        elif kind == "colour":
            cur["colour"] = value
    position = next((p for p in POSITIONS if p in text), None)
    if len(objs) == 1 and position:
        objs[0]["position"] = position
    if len(objs) == 2:
        objs[0]["position"], objs[1]["position"] = "left", "right"
    return {"count": len(objs), "objects": objs}
