"""A procedural, captioned video world: short clips of the shapes world's objects in motion.

Each clip is ``frames`` (default :data:`FRAMES`) images of 3x32x32 in [-1, 1], every frame drawn by
the image shapes world's own renderer (:func:`solverzoo.models.worlds.shapes._render`), so a frame
looks exactly like a shapes-world image (growing / shrinking frames have in-between radii). One
object does one of :data:`MOTIONS`:

* moving along a straight path between two image-world positions: along the top or bottom row
  ("a small red circle moving from the top left to the top right") or the left or right column;
* growing (radius small -> large, linearly over the clip) or shrinking, at a position;
* changing colour: colour A until a switch frame drawn in the middle third of the clip, then B
  ("a small green triangle changing from green to yellow at the bottom left");
* bouncing: a vertical ``|sin|`` hop of ~5 px, 1 or 2 bounces per clip;
* staying still.

Pairs (probability ``p_pair``): the first-named (left) object bounces, grows, shrinks, changes
colour or stays still; the right one stays still ("a small blue square bouncing beside a large
green triangle"). The background brightness, the objects' brightness and a small offset of the
positions are drawn per clip and constant over its frames. Growing / shrinking captions name no
size (the size changes). Clip ``i`` of a world with seed ``s`` depends only on ``(s, i)``.
"""
from __future__ import annotations

import math
import re

import numpy as np

from solverzoo.models.worlds import shapes
from solverzoo.models.worlds.shapes import _POS_XY, _RADIUS, _SYN_TO_SHAPE, COLOUR_NAMES, POSITIONS, SHAPES, SIZES, SYNONYMS

FRAMES = 8
MOTIONS = ("left to right", "right to left", "top to bottom", "bottom to top", "growing", "shrinking", "changing colour",
           "bouncing", "still")
MOVES = MOTIONS[:4]
PAIR_MOTIONS = ("bouncing", "growing", "shrinking", "changing colour", "still")
"""What the first (left) object of a pair may do; the right one stays still."""
BOUNCE_AMPLITUDE = (4.5, 5.5)
"""Range of a bounce's height in pixels (drawn per clip)."""
_PATHS = {"left to right": (("top left", "top right"), ("bottom left", "bottom right")),
          "right to left": (("top right", "top left"), ("bottom right", "bottom left")),
          "top to bottom": (("top left", "bottom left"), ("top right", "bottom right")),
          "bottom to top": (("bottom left", "top left"), ("bottom right", "top right"))}
FRAME_SINGLE = shapes.SINGLE_TEMPLATES[0]
FRAME_PAIR = shapes.PAIR_TEMPLATES[0]
_PAIR_WORDS = (" beside ", " next to ", " to the left of ")


def _render_frame(objs: list[dict], render_seed: int) -> np.ndarray:
    """One frame by the image world's ``_render`` with free radii: ``objs`` are dicts with shape,
    colour, cx, cy, radius (the renderer's ``radii``; the standard sizes' radii give exactly the
    image world's pixels). A fresh rng from ``render_seed`` per frame keeps the background and
    object brightness the same in every frame of a clip."""
    items = [shapes.Obj(o["shape"], o["colour"], "small", "") for o in objs]
    return shapes._render(items, [(o["cx"], o["cy"]) for o in objs], np.random.default_rng(render_seed),
                          radii=[float(o["radius"]) for o in objs])


def _switch_range(frames: int) -> tuple[int, int]:
    """First and last frame (inclusive) a colour change may switch at: the middle third."""
    return math.ceil(frames / 3), max(math.ceil(frames / 3), math.ceil(2 * frames / 3) - 1)


def _track(motion: str, x: float, y: float, size: str, colour: str, frames: int, rng: np.random.Generator, **kw) -> tuple:
    """Per-frame (cx, cy, radius, colour) of one object doing ``motion`` from (x, y); returns the
    track and the extra ground truth (colour_to, switch frame, path end, bounce count)."""
    u = np.linspace(0.0, 1.0, frames)
    cx, cy, rad, cols, extra = np.full(frames, x), np.full(frames, y), np.full(frames, _RADIUS[size]), [colour] * frames, {}
    if motion in MOVES:
        ex, ey = kw["end"]
        cx, cy = x + (ex - x) * u, y + (ey - y) * u
    elif motion in ("growing", "shrinking"):
        lo, hi = _RADIUS["small"], _RADIUS["large"]
        rad = lo + (hi - lo) * (u if motion == "growing" else 1.0 - u)
    elif motion == "changing colour":
        to = [c for c in COLOUR_NAMES if c != colour][int(rng.integers(len(COLOUR_NAMES) - 1))]
        first, last = _switch_range(frames)
        switch = int(rng.integers(first, last + 1))
        cols = [colour if t < switch else to for t in range(frames)]
        extra = {"colour_to": to, "switch_frame": switch}
    elif motion == "bouncing":
        amp, bounces = rng.uniform(*BOUNCE_AMPLITUDE), int(rng.integers(1, 3))
        cy = y + amp / 2 - amp * np.abs(np.sin(np.pi * bounces * u))
        extra = {"bounces": bounces, "amplitude": float(amp)}
    elif motion != "still":
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
    return [(float(a), float(b), float(r), c) for a, b, r, c in zip(cx, cy, rad, cols)], extra


def _phrase(motion: str, obj: dict) -> str:
    """The words after a clip object's shape that describe its motion (single objects add the place)."""
    if motion in MOVES:
        return f"moving from the {obj['position']} to the {obj['position_to']}"
    if motion == "changing colour":
        return f"changing from {obj['colour']} to {obj['colour_to']}"
    return "staying still" if motion == "still" else motion


def _describe(obj: dict, shape_word: str, with_motion: bool = True) -> str:
    """'a [size] colour shape [motion phrase]' for one clip object (no size when it changes)."""
    size = "" if obj["motion"] in ("growing", "shrinking") else f"{obj['size']} "
    text = f"a {size}{obj['colour']} {shape_word}"
    return f"{text} {_phrase(obj['motion'], obj)}" if with_motion else text


class ShapesVideoWorld:
    """Deterministic generator of (clip, caption, attributes).

    Args:
        seed: world seed; clip i depends only on (seed, i).
        frames: clip length (at least 2).
        p_pair: probability that a clip holds two objects.

    ``attrs`` of a clip: ``count``; ``motion`` (the first-named object's, one of :data:`MOTIONS`);
    ``objects`` (shape, colour, size, motion, position, and position_to / colour_to /
    switch_frame / bounces where they apply; a growing object's size is its first, "small");
    ``tracks`` (per object, per frame ``(cx, cy, radius, colour)``); ``frame_captions`` (each
    frame in the image world's language, from the ground truth)."""

    def __init__(self, seed: int = 0, frames: int = FRAMES, p_pair: float = 0.3):
        if int(frames) < 2:
            raise ValueError(f"a clip needs at least 2 frames, got frames={frames}")
        if not 0.0 <= float(p_pair) <= 1.0:
            raise ValueError(f"p_pair is a probability, got {p_pair}")
        self.seed, self.frames, self.p_pair = int(seed), int(frames), float(p_pair)

    def _objects(self, rng: np.random.Generator) -> tuple[list[dict], list[tuple[float, float]], dict]:
        """Draws the objects, their start centres and path ends (ground truth without tracks)."""
        pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
        if rng.random() < self.p_pair:
            objs = [{"shape": pick(SHAPES), "colour": pick(COLOUR_NAMES), "size": pick(SIZES), "motion": pick(PAIR_MOTIONS),
                     "position": "left"},
                    {"shape": pick(SHAPES), "colour": pick(COLOUR_NAMES), "size": pick(SIZES), "motion": "still",
                     "position": "right"}]
            starts = [(8.5 + rng.uniform(-1, 1), 16 + rng.uniform(-5, 5)), (23.5 + rng.uniform(-1, 1), 16 + rng.uniform(-5, 5))]
            return objs, starts, {}
        motion = pick(MOTIONS)
        obj = {"shape": pick(SHAPES), "colour": pick(COLOUR_NAMES), "size": pick(SIZES), "motion": motion}
        dx, dy = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)
        if motion in MOVES:
            obj["position"], obj["position_to"] = pick(_PATHS[motion])
            ex, ey = _POS_XY[obj["position_to"]]
            kw = {"end": (ex + dx, ey + dy)}
        else:
            obj["position"], kw = pick(POSITIONS), {}
        x, y = _POS_XY[obj["position"]]
        return [obj], [(x + dx, y + dy)], kw

    def _draw(self, index: int) -> tuple[list[dict], list[list[tuple]], str, int]:
        """Clip ``index`` without its pixels: objects, tracks, caption and the seed its frames are rendered with."""
        rng = np.random.default_rng([self.seed, int(index)])
        objs, starts, kw = self._objects(rng)
        tracks = []
        for k, (o, (x, y)) in enumerate(zip(objs, starts)):
            if o["motion"] in ("growing", "shrinking"):
                o["size"] = "small" if o["motion"] == "growing" else "large"
            track, extra = _track(o["motion"], x, y, o["size"], o["colour"], self.frames, rng, **(kw if k == 0 else {}))
            o.update(extra)
            tracks.append(track)
        words = [SYNONYMS[o["shape"]][int(rng.integers(3))] for o in objs]
        if len(objs) == 1:
            caption = _describe(objs[0], words[0]) + ("" if objs[0]["motion"] in MOVES else f" at the {objs[0]['position']}")
        else:
            caption = f"{_describe(objs[0], words[0])} beside {_describe(objs[1], words[1], with_motion=False)}"
        return objs, tracks, caption, int(rng.integers(2**62))

    def item(self, index: int) -> tuple[np.ndarray, str, dict]:
        """Clip ``index``: float32 (frames, 3, 32, 32) in [-1, 1], its caption, its attributes."""
        objs, tracks, caption, render_seed = self._draw(index)
        clip = np.stack([_render_frame([{"shape": o["shape"], "colour": tr[t][3], "cx": tr[t][0], "cy": tr[t][1],
                                         "radius": tr[t][2]} for o, tr in zip(objs, tracks)], render_seed)
                         for t in range(self.frames)]).astype(np.float32)
        attrs = {"count": len(objs), "motion": objs[0]["motion"], "objects": objs, "tracks": tracks,
                 "frame_captions": _truth_frame_captions(objs, tracks, self.frames)}
        return clip, caption, attrs

    def batch(self, start: int, n: int) -> tuple[np.ndarray, list[str], list[dict]]:
        """Clips ``start .. start + n - 1``: (n, frames, 3, 32, 32), captions, attributes."""
        items = [self.item(start + i) for i in range(n)]
        return np.stack([i[0] for i in items]), [i[1] for i in items], [i[2] for i in items]

    def captions(self, start: int, n: int) -> list[str]:
        """The captions of clips ``start .. start + n - 1`` (as :meth:`batch`'s, without rendering)."""
        return [self._draw(start + i)[2] for i in range(n)]

    def clips(self, start: int, n: int, workers: int = 1, chunk: int = 500) -> np.ndarray:
        """The clips ``start .. start + n - 1`` (as :meth:`batch`'s first output), drawn by
        ``workers`` forked processes in chunks when ``workers > 1``: each clip depends only on
        (seed, index), so the result is identical whatever the split. Serial where fork is unavailable."""
        import multiprocessing as mp

        if workers <= 1 or n <= chunk or "fork" not in mp.get_all_start_methods():
            return self.batch(start, n)[0]
        from concurrent.futures import ProcessPoolExecutor

        spans = [(self.seed, self.frames, self.p_pair, a, min(chunk, start + n - a)) for a in range(start, start + n, chunk)]
        out = np.empty((n, self.frames, 3, 32, 32), dtype=np.float32)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            for (*_, a, m), part in zip(spans, ex.map(_draw_clips, spans)):
                out[a - start:a - start + m] = part
        return out


def _draw_clips(span: tuple[int, int, float, int, int]) -> np.ndarray:
    seed, frames, p_pair, start, n = span
    return ShapesVideoWorld(seed, frames, p_pair).batch(start, n)[0]


def _frame_caption(objs: list[dict]) -> str:
    """An image-world caption of one frame from per-object dicts (shape, colour?, size?, position?)."""
    def words(o):
        return " ".join(w for w in (o.get("size"), o.get("colour"), o["shape"]) if w)
    if len(objs) == 2:
        a, b = objs
        if all(o.get("size") and o.get("colour") for o in objs):
            return FRAME_PAIR.format(size1=a["size"], colour1=a["colour"], shape1=a["shape"], size2=b["size"],
                                     colour2=b["colour"], shape2=b["shape"])
        return f"a {words(a)} beside a {words(b)}"
    o = objs[0]
    if o.get("size") and o.get("colour") and o.get("position"):
        return FRAME_SINGLE.format(size=o["size"], colour=o["colour"], shape=o["shape"], pos=o["position"])
    return f"a {words(o)}" + (f" at the {o['position']}" if o.get("position") else "")


def _frame_state(obj: dict, t: int, frames: int, colour: str | None = None) -> dict:
    """What a frame caption says of a clip object at frame t: a moving object is at its start for
    the first half of the clip and at its end after; a growing (shrinking) one is small (large)
    in the first half; a colour-changing one has ``colour`` (the midpoint switch by default)."""
    late = t >= frames / 2
    state = {"shape": obj["shape"], "colour": obj.get("colour"), "size": obj.get("size"), "position": obj.get("position")}
    motion = obj.get("motion")
    if motion in MOVES and obj.get("position_to"):
        state["position"] = obj["position_to"] if late else obj["position"]
    elif motion in ("growing", "shrinking"):
        state["size"] = ("large" if late else "small") if motion == "growing" else ("small" if late else "large")
    elif motion == "changing colour":
        state["colour"] = colour or (obj.get("colour_to") if late and obj.get("colour_to") else obj.get("colour"))
    if state["position"] in ("left", "right"):
        state["position"] = None  # pairs: the frame caption's order says it
    return state


def _truth_frame_captions(objs: list[dict], tracks: list[list[tuple]], frames: int) -> list[str]:
    """Per-frame image-world captions from the ground truth (a colour change at its real frame)."""
    return [_frame_caption([_frame_state(o, t, frames, colour=tr[t][3]) for o, tr in zip(objs, tracks)]) for t in range(frames)]


def frame_captions(caption: str, frames: int = FRAMES) -> list[str]:
    """The per-frame image-world captions a clip caption implies (deterministic, from the text alone).

    A moving object is at its start position for the first half of the frames and at its end for
    the second; growing switches the size word from small to large at the midpoint (shrinking the
    reverse); changing colour switches the colour word at the midpoint. Pairs use the image world's
    pair template. E.g. "a small red circle moving from the top left to the top right" ->
    4 x "a small red circle at the top left", then 4 x "... at the top right"."""
    if int(frames) < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    parsed = parse_video_caption(caption)
    if not parsed["objects"]:
        raise ValueError(f"no shape named in caption {caption!r}; expected one of {sorted(_SYN_TO_SHAPE)}")
    return [_frame_caption([_frame_state(o, t, frames) for o in parsed["objects"]]) for t in range(int(frames))]


def _find_all(text: str, words) -> list[tuple[int, str]]:
    """(index, word) of every occurrence of any of ``words`` in ``text``, sorted by index."""
    return sorted((m.start(), w) for w in set(words) for m in re.finditer(re.escape(w), text))


def _direction(start: str, end: str) -> str | None:
    """The motion name of a straight path between two image-world positions, None if not one of MOVES."""
    (x0, y0), (x1, y1) = _POS_XY[start], _POS_XY[end]
    if y0 == y1 and x0 != x1:
        return "left to right" if x1 > x0 else "right to left"
    if x0 == x1 and y0 != y1:
        return "top to bottom" if y1 > y0 else "bottom to top"
    return None


def _parse_motion(rest: str, obj: dict) -> str | None:
    """The motion named in the words after a shape, filling position / position_to / colour_to."""
    positions = [p for _, p in _find_all(rest, POSITIONS)]
    if "moving" in rest and len(positions) >= 2:
        obj["position"], obj["position_to"] = positions[:2]
        return _direction(*positions[:2])
    explicit = next((m for m in MOVES if m in rest), None)
    if explicit:
        return explicit
    if "changing" in rest:
        colours = [c for _, c in _find_all(rest, COLOUR_NAMES)]
        if colours:
            obj.setdefault("colour", colours[0])
            obj["colour_to"] = colours[-1]
        return "changing colour"
    for word, motion in (("growing", "growing"), ("shrinking", "shrinking"), ("bouncing", "bouncing"), ("still", "still")):
        if word in rest:
            return motion
    return None


def _parse_object(part: str) -> dict | None:
    """One clip object from its part of a caption: the first shape word and the colour / size
    words before it; the motion words after it (None without a shape word)."""
    shapes_found = _find_all(part, _SYN_TO_SHAPE)
    if not shapes_found:
        return None
    at, word = shapes_found[0]
    head, rest = part[:at], part[at + len(word):]
    obj = {"shape": _SYN_TO_SHAPE[word]}
    colours, sizes = _find_all(head, COLOUR_NAMES), _find_all(head, SIZES)
    if colours:
        obj["colour"] = colours[-1][1]
    if sizes:
        obj["size"] = sizes[-1][1]
    obj["motion"] = _parse_motion(rest, obj)
    if obj["motion"] in ("growing", "shrinking") and "size" not in obj:
        obj["size"] = "small" if obj["motion"] == "growing" else "large"
    if "position" not in obj:
        pos = _find_all(rest, POSITIONS)
        if pos:
            obj["position"] = pos[0][1]
    return obj


def parse_video_caption(caption: str) -> dict:
    """What a clip caption asks for: ``{"count", "motion", "objects": [...]}``.

    ``motion`` is the first-named object's (one of :data:`MOTIONS`; None when the caption names
    none, or a path between positions that is not a row or column of :data:`MOVES`); each object
    has shape and, where named, colour, size, motion, position (pairs: "left" / "right"),
    position_to (moving) and colour_to (changing colour). Understands this world's
    captions and loose variants ("a red circle moving left to right", "a box next to a disc");
    the right object of a pair is still unless its words say otherwise."""
    text = " ".join(caption.lower().split())
    cut = next(((text.find(w), w) for w in _PAIR_WORDS if w in text), None)
    parts = [text[:cut[0]], text[cut[0] + len(cut[1]):]] if cut else [text]
    objs = [o for o in (_parse_object(p) for p in parts) if o is not None]
    if len(objs) == 2:
        objs[0]["position"], objs[1]["position"] = "left", "right"
        objs[1]["motion"] = objs[1]["motion"] or "still"
    return {"count": len(objs), "motion": objs[0]["motion"] if objs else None, "objects": objs}
