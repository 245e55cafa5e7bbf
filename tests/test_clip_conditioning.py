"""The CLIP-conditioned shapes backbone (``shapes-flow-clip``), its text conditioner, the shipped
weights' card, and the per-attribute split of the shapes world's prompt check."""
import hashlib
import re

import numpy as np
import pytest
import torch

from solverzoo.models import weights
from solverzoo.models.nets.classifier import matches
from solverzoo.models.worlds.shapes import COLOUR_NAMES, POSITIONS, SHAPES, ShapesWorld, parse_caption
from solverzoo.models.worlds.shapes_eval import ATTRIBUTES, attribute_hits

PROMPTS = ["a small red circle at the top left", "a blue square beside a large green triangle", "",
           "a picture of a large yellow wedge at the center"]


@pytest.fixture(scope="module")
def backbone():
    from solverzoo.backbone import load_backbone

    return load_backbone("shapes-flow-clip")


def test_backbone_registered_and_loads(backbone):
    from solverzoo.models.conditioners import CLIPTextConditioner
    from solverzoo.registry import registry

    assert "shapes-flow-clip" in registry.names("backbone")
    assert isinstance(backbone.conditioner, CLIPTextConditioner)
    meta = weights.read_meta(weights.resolve("shapes-dit-flow-clip"))
    flow = weights.read_meta(weights.resolve("shapes-dit-flow"))["config"]
    # the MiniLM recipe, bar the text encoder, its width and the artifact's name
    differs = {k for k in set(meta["config"]) | set(flow) if meta["config"].get(k) != flow.get(k)}
    assert differs - {"device", "_overrides"} == {"artifact", "conditioner", "net", "_config_name"}  # device: where it trained
    assert {k for k in flow["net"] if flow["net"][k] != meta["config"]["net"][k]} == {"text_dim"}
    assert backbone.model.net.config["text_dim"] == backbone.conditioner.dim == 96
    assert backbone.default_grid == "flow_shift" and backbone.world.name == "shapes"


def test_clip_conditioner_deterministic_and_matches_clip_text_features():
    from solverzoo.models.conditioners import CLIPTextConditioner
    from solverzoo.models.nets.clip import tokenize

    a, b = CLIPTextConditioner(), CLIPTextConditioner()  # two fresh instances: no shared memo
    ea, eb = a.encode(PROMPTS), b.encode(list(reversed(PROMPTS)))
    for k in ("tokens", "mask", "pooled"):
        assert torch.equal(ea[k], eb[k].flip(0)), k
    alone = CLIPTextConditioner().encode(PROMPTS[:1])
    # one prompt alone vs in a batch of four: float32 kernels may block differently (tolerance 1e-5)
    assert (alone["tokens"][0] - ea["tokens"][0]).abs().max() < 1e-5
    assert ea["tokens"].shape == (4, 64, 96) and ea["pooled"].shape == (4, 96) and torch.isfinite(ea["tokens"]).all()
    assert ea["mask"].sum(1).tolist() == [len(p) or 1 for p in PROMPTS]  # characters; the empty prompt is one token
    assert torch.allclose(ea["pooled"].norm(dim=-1), torch.ones(4), atol=1e-6)
    assert torch.equal(a.null(2)["tokens"], ea["tokens"][2:3].expand(2, -1, -1))
    # independent check: CLIP's own text embedding (its forward path) is text_proj of the conditioner's
    # unnormalised pooled states, so the conditioner hands the DiT the tower's actual hidden states
    clip = a.encoder
    ids, mask = tokenize(PROMPTS[:2] + PROMPTS[3:], 64)
    with torch.no_grad():
        want = clip.get_text_features(ids, mask)
        m = ea["mask"][[0, 1, 3], :, None].float()
        got = clip.text_proj((ea["tokens"][[0, 1, 3]] * m).sum(1) / m.sum(1))
    assert (got - want).abs().max() < 1e-4


def test_clip_conditioner_rejects_unknown_name():
    from solverzoo.models.conditioners import conditioner_by_name

    with pytest.raises(ValueError, match="unknown text conditioner 'clip-large'.*minilm, shapes-clip-text"):
        conditioner_by_name("clip-large")


def test_dit_samples_finite_images_reproducibly(backbone):
    from solverzoo.bench.generate import generate

    prompts = PROMPTS[:2] + PROMPTS[3:]
    one = generate(backbone, prompts, solver="dpmpp_2m", steps=4, guidance="cfg", scale=3.0, seeds=[5, 6, 7])
    two = generate(backbone, prompts[:1], solver="dpmpp_2m", steps=4, guidance="cfg", scale=3.0, seeds=[5])
    assert one.images.shape == (3, 3, 32, 32) and torch.isfinite(one.latents).all() and torch.isfinite(one.images).all()
    assert one.images.abs().max() <= 1.0 and one.nfe == 8
    assert one.latents.std() > 0.1  # a sample, not a collapsed constant
    # per-sample seeds: sample 0 does not depend on the batch it was drawn in (float32 batching, 1e-4)
    assert (one.latents[0] - two.latents[0]).abs().max() < 1e-4


def _perturb(attrs: dict, rng: np.random.Generator) -> dict:
    """A classifier-style prediction derived from the truth with random mistakes."""
    count = attrs["count"] if rng.random() < 0.8 else 3 - attrs["count"]
    if count != attrs["count"]:
        objs = [{"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(COLOUR_NAMES))} for _ in range(count)]
    else:
        objs = [{k: o[k] for k in ("shape", "colour", "position") if k in o} for o in attrs["objects"]]
        for o in objs:
            for key, values in (("shape", SHAPES), ("colour", COLOUR_NAMES)):
                if rng.random() < 0.2:
                    o[key] = str(rng.choice(values))
        if count == 1 and rng.random() < 0.2:
            objs[0]["position"] = str(rng.choice(POSITIONS))
        if count == 2 and rng.random() < 0.3:
            objs = objs[::-1]  # a swapped pair
    if count == 2:
        objs[0]["position"], objs[1]["position"] = "left", "right"
    elif "position" not in objs[0]:
        objs[0]["position"] = str(rng.choice(POSITIONS))
    return {"count": count, "objects": objs}


def test_attribute_hits_and_to_the_overall_check():
    """Overall hit (the classifier module's ``matches``) == a hit on every attribute the prompt tests."""
    rng = np.random.default_rng(0)
    _, caps, attrs = ShapesWorld(123).batch(0, 400)
    cases = list(zip(caps, attrs))
    for cap in ("a red circle beside a blue square", "a circle next to a square"):  # free-form: no size / colour
        asked = parse_caption(cap)
        cases.append((cap, {"count": 2, "objects": [{**o, "position": p} for o, p in zip(asked["objects"], ("left", "right"))]}))
    seen = {a: set() for a in ATTRIBUTES}
    for cap, truth in cases:
        asked = parse_caption(cap)
        for _ in range(5):
            pred = _perturb(truth, rng)
            hits = attribute_hits(asked, pred)
            tested = [v for v in hits.values() if not np.isnan(v)]
            assert all(v in (0.0, 1.0) for v in tested)
            assert all(tested) == matches(asked, pred), (cap, pred, hits)
            for a, v in hits.items():
                if not np.isnan(v):
                    seen[a].add(v)
    nothing = attribute_hits(parse_caption("hello"), {"count": 1, "objects": [{"shape": "circle", "colour": "red"}]})
    assert nothing["count"] == 0.0 and all(np.isnan(nothing[a]) for a in ATTRIBUTES[1:])  # no object named: only a miss
    assert all(seen[a] == {0.0, 1.0} for a in ATTRIBUTES), seen  # every attribute both hit and missed


def test_attribute_hits_name_the_right_attribute():
    asked = parse_caption("a red circle to the left of a blue square")
    swapped = {"count": 2, "objects": [{"shape": "square", "colour": "blue", "position": "left"},
                                       {"shape": "circle", "colour": "red", "position": "right"}]}
    assert attribute_hits(asked, swapped) == {"count": 1.0, "colour": 0.0, "shape": 0.0, "position": pytest.approx(np.nan,
                                              nan_ok=True), "relation": 0.0}
    wrong_colour = {"count": 2, "objects": [{"shape": "circle", "colour": "green", "position": "left"},
                                            {"shape": "square", "colour": "blue", "position": "right"}]}
    h = attribute_hits(asked, wrong_colour)
    assert (h["colour"], h["shape"], h["relation"]) == (0.0, 1.0, 1.0)  # right order, one colour wrong
    single = parse_caption("a large yellow triangle at the bottom right")
    moved = {"count": 1, "objects": [{"shape": "triangle", "colour": "yellow", "position": "top left"}]}
    h = attribute_hits(single, moved)
    assert (h["count"], h["colour"], h["shape"], h["position"]) == (1.0, 1.0, 1.0, 0.0) and np.isnan(h["relation"])


def test_world_score_attributes_overall_equals_score(backbone):
    world = backbone.world
    imgs, caps, _ = ShapesWorld(77).batch(0, 48)
    x = torch.from_numpy(imgs)
    x = torch.cat([x[:24], x[24:].flip(-1)])  # mirrored images: swapped pairs and moved objects, real misses
    per = world.score_attributes(x, None, caps)
    assert set(per) == set(ATTRIBUTES) | {"overall"}
    np.testing.assert_array_equal(per["overall"], world.score(x, None, caps))
    table = np.stack([per[a] for a in ATTRIBUTES])
    np.testing.assert_array_equal(np.where(np.isnan(table), 1.0, table).min(0), per["overall"])
    assert 0 < per["overall"].mean() < 1


def test_shipped_weights_hash_matches_model_card():
    path = weights.resolve("shapes-dit-flow-clip")
    card = path.with_suffix(".md").read_text()
    stated = re.search(r"SHA-256 `([0-9a-f]{64})`", card)
    assert stated, "the model card states no SHA-256 of its weights: run solverzoo.models.train.write_card(path)"
    assert stated.group(1) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "Reproduce: `solverzoo train dit_flow_clip" in card and '"final_loss"' in card and '"wall_s"' in card
    assert path.stat().st_size < 8 * 2 ** 20  # a few MB (float16)
