"""The procedural video world: determinism, ranges, ground-truth tracks against captions and pixels,
caption parsing, and per-frame captions in the image world's language."""
import numpy as np
import pytest

from solverzoo.models.worlds import shapes
from solverzoo.models.worlds.shapes import _POS_XY, _RADIUS, COLOURS, parse_caption
from solverzoo.models.worlds.video import FRAMES, MOTIONS, ShapesVideoWorld, _render_frame, frame_captions, parse_video_caption

N = 500


@pytest.fixture(scope="module")
def clips():
    return ShapesVideoWorld(seed=3).batch(0, N)


def test_determinism_and_batch():
    a, b = ShapesVideoWorld(seed=7), ShapesVideoWorld(seed=7)
    for i in (0, 5, 123):
        xa, ca, ta = a.item(i)
        xb, cb, tb = b.item(i)
        assert np.array_equal(xa, xb) and ca == cb and ta == tb
    x, caps, attrs = a.batch(4, 3)
    assert np.array_equal(x[1], a.item(5)[0]) and caps[1] == a.item(5)[1]
    assert not np.array_equal(ShapesVideoWorld(seed=8).item(0)[0], a.item(0)[0])


def test_shapes_ranges_and_bad_arguments(clips):
    x, caps, attrs = clips
    assert x.shape == (N, FRAMES, 3, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert {a["motion"] for a in attrs} == set(MOTIONS)
    assert 0.2 < np.mean([a["count"] == 2 for a in attrs]) < 0.4
    assert all(len(a["frame_captions"]) == FRAMES and len(a["tracks"]) == a["count"] for a in attrs)
    x12 = ShapesVideoWorld(seed=1, frames=12).batch(0, 4)[0]
    assert x12.shape == (4, 12, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 2 frames"):
        ShapesVideoWorld(frames=1)
    with pytest.raises(ValueError, match="probability"):
        ShapesVideoWorld(p_pair=1.5)


def test_frame_renderer_is_the_image_worlds():
    """Standard radii give exactly the image world's pixels; the background is shared by all frames."""
    objs = [{"shape": "triangle", "colour": "blue", "cx": 10.3, "cy": 20.0, "radius": _RADIUS["large"]},
            {"shape": "circle", "colour": "red", "cx": 23.0, "cy": 12.5, "radius": _RADIUS["small"]}]
    ref = shapes._render([shapes.Obj("triangle", "blue", "large", "left"), shapes.Obj("circle", "red", "small", "right")],
                         [(10.3, 20.0), (23.0, 12.5)], np.random.default_rng(11))
    assert np.array_equal(_render_frame(objs, 11), ref)
    x = ShapesVideoWorld(seed=2).item(0)[0]
    assert np.all(x[:, :, 0, 0] == x[0, :, 0, 0])  # corner pixel: background, constant over time


def _foreground(frame):
    """Mask of object pixels: those away from the (corner) background colour."""
    return np.abs(frame - frame[:, :1, :1]).sum(0) > 0.3


def _inside(cx, cy, r):
    return r + 0.5 < cx < 31.5 - r and r + 0.5 < cy < 31.5 - r


def test_pixels_follow_the_tracks(clips):
    """Single circles and squares: the foreground centroid is the track centre, its area follows
    the radius, its mean colour is the track's colour."""
    x, _, attrs = clips
    checked = 0
    for clip, a in zip(x, attrs):
        if a["count"] != 1 or a["objects"][0]["shape"] == "triangle":
            continue
        for frame, (cx, cy, r, colour) in zip(clip, a["tracks"][0]):
            if not _inside(cx, cy, r):
                continue
            m = _foreground(frame)
            yy, xx = np.nonzero(m)
            assert abs(xx.mean() + 0.5 - cx) < 0.6 and abs(yy.mean() + 0.5 - cy) < 0.6
            area = np.pi * r * r if a["objects"][0]["shape"] == "circle" else (1.7 * r) ** 2
            assert abs(m.sum() - area) < 0.25 * area + 6
            rgb = (frame[:, m].mean(1) + 1) / 2
            nearest = min(COLOURS, key=lambda c: np.linalg.norm(rgb / np.linalg.norm(rgb) - np.array(COLOURS[c])
                                                                / np.linalg.norm(COLOURS[c])))
            assert nearest == colour
            checked += 1
    assert checked > 1000


def _check_track(obj, track, frames):
    cx, cy, r = (np.array([p[k] for p in track]) for k in range(3))
    cols = [p[3] for p in track]
    motion = obj["motion"]
    if motion in MOTIONS[:4]:
        (x0, y0), (x1, y1) = _POS_XY[obj["position"]], _POS_XY[obj["position_to"]]
        assert abs(cx[0] - x0) <= 1.5 and abs(cy[0] - y0) <= 1.5 and abs(cx[-1] - x1) <= 1.5 and abs(cy[-1] - y1) <= 1.5
        sign = {"left to right": (1, 0), "right to left": (-1, 0), "top to bottom": (0, 1), "bottom to top": (0, -1)}[motion]
        assert np.allclose(np.diff(cx), sign[0] * 14 / (frames - 1)) and np.allclose(np.diff(cy), sign[1] * 14 / (frames - 1))
    else:
        assert np.ptp(cx) == 0
    if motion in ("growing", "shrinking"):
        ends = (_RADIUS["small"], _RADIUS["large"])[:: 1 if motion == "growing" else -1]
        assert np.allclose([r[0], r[-1]], ends) and np.all(np.diff(r) * (1 if motion == "growing" else -1) > 0)
    else:
        assert np.ptp(r) == 0 and r[0] == _RADIUS[obj["size"]]
    if motion == "changing colour":
        s = obj["switch_frame"]
        assert frames / 3 <= s < 2 * frames / 3 + 1 and obj["colour_to"] != obj["colour"]
        assert cols == [obj["colour"]] * s + [obj["colour_to"]] * (frames - s)
    else:
        assert set(cols) == {obj["colour"]}
    if motion == "bouncing":
        assert 4.5 * 0.9 <= cy.max() - cy.min() <= 5.5 and np.argmin(cy) not in (0, frames - 1)
        assert cy[0] == cy.max() and cy[-1] == pytest.approx(cy.max())
    elif motion not in MOTIONS[:4]:
        assert np.ptp(cy) == 0


@pytest.mark.parametrize("frames", [FRAMES, 12])
def test_tracks_do_what_the_caption_says(clips, frames):
    if frames == FRAMES:
        _, caps, attrs = clips
    else:
        _, caps, attrs = ShapesVideoWorld(seed=4, frames=frames).batch(0, 150)
    seen = set()
    for cap, a in zip(caps, attrs):
        asked = parse_video_caption(cap)
        for obj, track in zip(a["objects"], a["tracks"]):
            _check_track(obj, track, frames)
        if a["count"] == 2:
            assert a["objects"][1]["motion"] == "still" and a["motion"] in ("bouncing", "growing", "shrinking",
                                                                             "changing colour", "still")
            assert a["tracks"][0][0][0] < a["tracks"][1][0][0]  # the first named is on the left
        assert asked["motion"] == a["motion"]
        seen.add(a["motion"])
    assert seen == set(MOTIONS)


def test_parse_recovers_the_generated_attributes(clips):
    _, caps, attrs = clips
    for cap, a in zip(caps, attrs):
        p = parse_video_caption(cap)
        assert p["count"] == a["count"] and p["motion"] == a["motion"], cap
        for want, got in zip(a["objects"], p["objects"]):
            for key in ("shape", "colour", "size", "motion", "position", "position_to", "colour_to"):
                assert got.get(key) == want.get(key), (cap, key)


def test_parse_loose_captions():
    p = parse_video_caption("A Red disc moving left to right")
    assert p == {"count": 1, "motion": "left to right",
                 "objects": [{"shape": "circle", "colour": "red", "motion": "left to right"}]}
    p = parse_video_caption("a blue box growing next to a purple wedge")
    assert p["count"] == 2 and p["motion"] == "growing" and [o["shape"] for o in p["objects"]] == ["square", "triangle"]
    assert p["objects"][1]["motion"] == "still" and p["objects"][0]["size"] == "small"
    assert parse_video_caption("a yellow circle changing colour to green")["objects"][0]["colour_to"] == "green"
    assert parse_video_caption("a sunset") == {"count": 0, "motion": None, "objects": []}
    assert parse_video_caption("a red circle at the center")["motion"] is None


def _nearest_position(cx, cy):
    return min(_POS_XY, key=lambda p: (cx - _POS_XY[p][0]) ** 2 + (cy - _POS_XY[p][1]) ** 2)


def test_frame_captions_parse_in_the_image_world(clips):
    """Every frame caption (ground truth and from the caption alone) parses, in the image world,
    to the frame's true count, shapes and colours; single objects' first and last frames name the
    image-world position nearest the true centre."""
    _, caps, attrs = clips
    for cap, a in zip(caps, attrs):
        implied = frame_captions(cap)
        assert len(implied) == FRAMES
        for t, fc in enumerate(a["frame_captions"]):
            p = parse_caption(fc)
            assert p["count"] == a["count"], fc
            for o, obj, tr in zip(p["objects"], a["objects"], a["tracks"]):
                assert o["shape"] == obj["shape"] and o["colour"] == tr[t][3], fc
            q = parse_caption(implied[t])
            assert q["count"] == a["count"] and [o["shape"] for o in q["objects"]] == [o["shape"] for o in a["objects"]]
            if a["count"] == 1 and t in (0, FRAMES - 1):
                assert p["objects"][0]["position"] == _nearest_position(*a["tracks"][0][t][:2]), fc
        if a["motion"] != "changing colour" or a["objects"][0]["switch_frame"] == FRAMES // 2:
            assert implied == a["frame_captions"], cap


def test_frame_captions_examples():
    got = frame_captions("a small red circle moving from the top left to the top right")
    assert got == ["a small red circle at the top left"] * 4 + ["a small red circle at the top right"] * 4
    got = frame_captions("a blue square growing at the center", frames=4)
    assert got == ["a small blue square at the center"] * 2 + ["a large blue square at the center"] * 2
    got = frame_captions("a small green triangle changing from green to yellow beside a large red box", frames=2)
    assert got == ["a small green triangle beside a large red square", "a small yellow triangle beside a large red square"]
    with pytest.raises(ValueError, match="no shape"):
        frame_captions("a sunset")


def test_captions_and_parallel_clips_equal_the_serial_batch():
    w = ShapesVideoWorld(seed=9)
    x, caps, _ = w.batch(3, 40)
    assert w.captions(3, 40) == caps
    np.testing.assert_array_equal(w.clips(3, 40, workers=2, chunk=16), x)
    np.testing.assert_array_equal(w.clips(3, 40), x)
