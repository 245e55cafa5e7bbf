"""The shapes video world's evaluation: prompt accuracy from per-frame attributes (on real clips,
reversed clips, wrong captions), the clip features, the temporal measures, and the World contract."""
import numpy as np
import pytest
import torch

from solverzoo.backbone import Features, World
from solverzoo.models.nets.video_classifier import bounce_height, motion_from_frames
from solverzoo.models.worlds.shapes import COLOUR_NAMES
from solverzoo.models.worlds.video import FRAMES, MOTIONS, ShapesVideoWorld, _render_frame, parse_video_caption
from solverzoo.models.worlds.video_eval import (
    VideoEvalWorld,
    flicker_ratio,
    identity_flicker,
    ratio_interval,
    temporal_consistency,
    video_hits,
)

N = 300


@pytest.fixture(scope="module")
def world():
    return VideoEvalWorld()


@pytest.fixture(scope="module")
def real():
    x, caps, attrs = ShapesVideoWorld(seed=11).batch(0, N)
    return torch.from_numpy(x), caps, attrs


@pytest.fixture(scope="module")
def hits(world, real):
    x, caps, _ = real
    return world.score_attributes(x, None, caps)


def _truth_frames(track):
    return {"cx": [p[0] for p in track], "cy": [p[1] for p in track], "radius": [p[2] for p in track],
            "colour": [p[3] for p in track]}


def test_the_motion_rule_reads_ground_truth_tracks_exactly(real):
    _, _, attrs = real
    assert [motion_from_frames(_truth_frames(a["tracks"][0])) for a in attrs] == [a["motion"] for a in attrs]
    assert bounce_height([5, 3, 5]) == 2 and bounce_height([1, 2, 3, 4]) == 0 and bounce_height([4, 1, 3, 0]) == 2


def test_real_clips_score_as_their_captions_say(world, real, hits):
    x, caps, attrs = real
    assert set(hits) == {"count", "colour", "shape", "motion", "overall"}
    assert all(len(v) == N and v.dtype == np.float64 for v in hits.values())
    for key in ("count", "colour", "shape", "motion", "overall"):
        assert np.nanmean(hits[key]) >= 0.95, (key, np.nanmean(hits[key]))
    for m in MOTIONS:  # every motion, not only on average
        rows = [i for i, a in enumerate(attrs) if a["motion"] == m]
        assert np.mean(hits["motion"][rows]) >= 0.85, m
    np.testing.assert_array_equal(world.score(x[:40], None, caps[:40]), hits["overall"][:40])


def test_wrong_captions_and_reversed_clips_miss(world, real):
    x, caps, attrs = real
    shifted = caps[1:100] + caps[:1]  # every clip scored against another clip's caption
    assert np.mean(world.score(x[:100], None, shifted)) < 0.2
    rows = [i for i, a in enumerate(attrs) if a["motion"] == "left to right"]
    assert len(rows) >= 10
    back = x[rows].flip(1)
    hits = world.score_attributes(back, None, [caps[i] for i in rows])
    assert np.mean(hits["motion"]) <= 0.05 and np.mean(hits["overall"]) <= 0.05
    assert [p["motion"] for p in world.predict(back)].count("right to left") >= 0.9 * len(rows)


def test_video_hits_decides_each_attribute():
    pred = {"count": 1, "objects": [{"shape": "circle", "colour": "red"}], "motion": "changing colour",
            "frames": {"colour": np.array([0] * 4 + [COLOUR_NAMES.index("blue")] * 4)}}
    asked = parse_video_caption("a small red circle changing from red to blue at the center")
    assert video_hits(asked, pred) == {"count": 1.0, "shape": 1.0, "colour": 1.0, "motion": 1.0, "overall": 1.0}
    wrong_to = video_hits(parse_video_caption("a small red circle changing from red to green at the center"), pred)
    assert wrong_to["motion"] == 0.0 and wrong_to["overall"] == 0.0
    loose = video_hits(parse_video_caption("a circle"), pred)
    assert np.isnan(loose["colour"]) and np.isnan(loose["motion"]) and loose["overall"] == 1.0
    pair = video_hits(parse_video_caption("a red box beside a disc"), pred)  # names no motion: untested
    assert {k: v for k, v in pair.items() if k != "motion"} == {"count": 0.0, "shape": 0.0, "colour": 1.0, "overall": 0.0}
    assert np.isnan(pair["motion"])


def test_temporal_consistency_exact_values():
    x = torch.zeros(2, 4, 3, 2, 2)
    x[0] = torch.arange(4.0)[:, None, None, None] * 0.5  # every pixel steps by 0.5 each frame
    x[1, 2] = 1.0  # one frame differs by 1 from its two neighbours
    np.testing.assert_allclose(temporal_consistency(x), [0.25, 2 / 3])
    np.testing.assert_allclose(temporal_consistency(x.numpy()), [0.25, 2 / 3])
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_consistency(torch.zeros(2, 1, 3, 4, 4))


def _independent_frames(index: int, seed: int = 11) -> np.ndarray:
    """A clip whose frame t comes from an independent clip of the same caption: the same objects
    on the same tracks, but each frame with its own position jitter and brightness draw."""
    objs, tracks, _, _ = ShapesVideoWorld(seed)._draw(index)
    rng = np.random.default_rng([99, index])
    frames = []
    for t in range(FRAMES):
        dx, dy = rng.uniform(-1.5, 1.5, 2)
        frames.append(_render_frame([{"shape": o["shape"], "colour": tr[t][3], "cx": tr[t][0] + dx, "cy": tr[t][1] + dy,
                                      "radius": tr[t][2]} for o, tr in zip(objs, tracks)], int(rng.integers(2**62))))
    return np.stack(frames)


def test_shuffled_or_independent_frames_flicker(real):
    x, _, _ = real
    same = flicker_ratio(x, x)
    assert same["ratio"] == 1.0 and same["generated"].shape == (N,)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([c[torch.randperm(FRAMES, generator=g)] for c in x])
    assert flicker_ratio(shuffled, x)["ratio"] > 1.5
    independent = np.stack([_independent_frames(i) for i in range(100)])
    out = flicker_ratio(independent, x[:100])
    assert out["ratio"] > 1.5
    lo, hi = ratio_interval(out["generated"], out["real"])
    assert 1.0 < lo <= out["ratio"] <= hi
    with pytest.raises(ValueError, match="same captions"):
        flicker_ratio(x[:5], x[:6])


def test_identity_flicker_exact_and_on_real_clips(world, real):
    np.testing.assert_allclose(identity_flicker(np.array([[0, 0, 1, 1], [0, 1, 0, 1], [2, 2, 2, 2]])), [1 / 3, 1.0, 0.0])
    x, _, _ = real
    frames = world.classifier.predict_frames(x[:100])
    assert identity_flicker(frames).mean() < 0.02  # real clips keep their shape
    g = torch.Generator().manual_seed(1)
    mixed = x[:100].clone()
    swap = torch.randperm(100, generator=g)
    mixed[:, 1::2] = x[:100][swap][:, 1::2]  # every other frame from another clip
    assert identity_flicker(world.classifier.predict_frames(mixed)).mean() > 0.3


def test_features_have_the_declared_dim_and_are_deterministic(world, real):
    x, _, _ = real
    f = world.features()
    assert isinstance(f, Features) and f.images is False and f.name == "shapes-video-video-classifier"
    a, b = f.fn(x[:40]), f.fn(x[:40])
    assert a.shape == (40, f.num_features) and f.num_features == world.classifier.config["clip_feat"]
    assert torch.equal(a, b) and torch.isfinite(a).all()
    np.testing.assert_allclose(f.fn(x[:40])[:7], f.fn(x[:7]), atol=1e-5)  # batch composition does not matter
    assert f.weights_hash == VideoEvalWorld(world.classifier).features().weights_hash


def test_world_contract(world):
    assert isinstance(world, World) and world.name == "shapes-video" and world.clip_model is None
    assert "clip_score" in world.not_applicable
    caps = world.prompts(5, 6)
    x, ref_caps, _ = ShapesVideoWorld(5).batch(0, 6)
    assert caps == ref_caps and world.prompts(5, 6) == caps
    ref = world.reference(5, 6)
    assert ref.shape == (6, FRAMES, 3, 32, 32) and ref.dtype == torch.float32
    torch.testing.assert_close(ref, torch.from_numpy(x))
    torch.testing.assert_close(world.samples_for(caps, 5), ref)
    assert parse_video_caption(world.example_prompt())["motion"] == "left to right"
    assert len(world.calibration_prompts(3)) == 3
    with pytest.raises(ValueError, match="3 clips for 2 prompts"):
        world.score(ref[:3], None, caps[:2])
    with pytest.raises(ValueError, match=r"\(B, T, 3, 32, 32\)"):
        world.score(ref[:, 0], None, caps)


def test_training_recipe_writes_loadable_weights_and_a_card(tmp_path):
    from solverzoo.models import weights
    from solverzoo.models.train import compose
    from solverzoo.models.train_video_classifier import train_video_classifier
    from solverzoo.models.worlds.video_eval import load_video_classifier

    cfg = compose("video_classifier", ["steps=2", "batch=2", "eval_n=6"])
    rec = train_video_classifier(cfg, out_dir=tmp_path)
    assert rec["steps"] == 2 and rec["heldout_n"] == 6 and np.isfinite(rec["final_loss"])
    assert 0 <= rec["motion_rule_accuracy"] <= 1
    path = tmp_path / "shapes-video-classifier.safetensors"
    meta = weights.read_meta(path)
    assert meta["command"] == "solverzoo train video_classifier steps=2 batch=2 eval_n=6" and meta["record"] == rec
    card = path.with_suffix(".md").read_text()
    for words in ("Data: fresh clips", "Objective:", "2 steps", "seed 0", "Final loss", "wall time",
                  "`solverzoo train video_classifier steps=2 batch=2 eval_n=6`"):
        assert words in card
    net = load_video_classifier(path)
    assert net.config == cfg["net"] and not net.training


def test_shipped_classifier_is_small_and_documented():
    from solverzoo.models import weights

    path = weights.resolve("shapes-video-classifier")
    assert path.stat().st_size < 1_000_000
    rec = weights.read_meta(path)["record"]
    assert rec["motion_rule_accuracy"] >= 0.95 and rec["heldout_n"] >= 1000
    assert "## Record" in path.with_suffix(".md").read_text()
