"""Worlds, networks, conditioners and weight loading of the embedded backbones."""
import warnings

import numpy as np
import pytest
import torch

import solverzoo as sz
from solverzoo.models import weights
from solverzoo.models.nets import VAE, AttributeClassifier, DiT
from solverzoo.models.nets.classifier import matches
from solverzoo.models.worlds import DigitsWorld, ShapesWorld, parse_caption


def test_shapes_world_is_deterministic_and_captioned():
    a, b = ShapesWorld(5), ShapesWorld(5)
    x1, c1, t1 = a.batch(100, 8)
    x2, c2, t2 = b.batch(100, 8)
    assert np.array_equal(x1, x2) and c1 == c2 and t1 == t2
    assert x1.shape == (8, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    assert not np.array_equal(ShapesWorld(6).batch(100, 8)[0], x1)
    # sample i does not depend on how the batch was cut
    assert np.array_equal(a.item(103)[0], x1[3])
    for cap, attrs in zip(c1, t1):  # the caption names exactly the ground-truth objects
        assert matches(parse_caption(cap), attrs), (cap, attrs)


def test_parse_caption_free_form():
    p = parse_caption("a small blue square beside a green triangle")
    assert p["count"] == 2 and [o["shape"] for o in p["objects"]] == ["square", "triangle"]
    assert [o["colour"] for o in p["objects"]] == ["blue", "green"]
    assert parse_caption("a large red disc at the top left")["objects"] == [
        {"colour": "red", "shape": "circle", "position": "top left"}]


def test_digits_world():
    d = DigitsWorld()
    assert len(d) == 1797 and d.images.shape == (1797, 1, 16, 16) and set(d.labels.tolist()) == set(range(10))
    assert d.caption(7) == "a handwritten 7"


def test_dit_adaln_zero_starts_at_zero_and_respects_conditioning():
    torch.manual_seed(0)
    net = DiT(hidden=32, depth=2, heads=2)
    x = torch.randn(2, 4, 8, 8)
    args = (torch.rand(2) * 1000, torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 384))
    assert torch.equal(net(x, *args), torch.zeros_like(x))  # adaLN-Zero + zero final layer
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    y = net(x, *args)
    tokens2 = args[1].clone()
    tokens2[:, 0] += 1.0
    assert not torch.allclose(y, net(x, args[0], tokens2, *args[2:]))  # cross-attention is used
    m = args[2].clone()
    m[:, 3:] = False
    tokens3 = args[1].clone()
    tokens3[:, 4] += 5.0
    # masked tokens ignored
    torch.testing.assert_close(net(x, args[0], args[1], m, args[3]), net(x, args[0], tokens3, m, args[3]))


def test_vae_shapes_and_scaling():
    v = VAE()
    z = v.to_latent(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 4, 8, 8) and v.from_latent(z).shape == (2, 3, 32, 32)


def test_weights_roundtrip_and_pickle_refusal(tmp_path):
    net = AttributeClassifier()
    path = weights.save(net, "unit", {"config": {"a": 1}}, directory=tmp_path)
    other = weights.load_into(AttributeClassifier(), path)
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert weights.read_meta(path) == {"config": {"a": 1}}
    with pytest.raises(weights.WeightsError, match="refusing to load a pickle"):
        weights.resolve(tmp_path / "model.pt")
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.resolve(tmp_path / "missing.safetensors")
    with pytest.raises(weights.WeightsError, match="no shipped weights named 'nope'"):
        weights.resolve("nope")


@pytest.fixture(scope="module")
def minilm():
    from solverzoo.models.conditioners import minilm
    return minilm()


def test_minilm_is_real_and_offline(minilm, monkeypatch):
    e = minilm.encode(["a red circle", "a red circle", "a blue square at the top left"])
    assert e["tokens"].shape == (3, 24, 384) and e["mask"].dtype == torch.bool
    assert torch.equal(e["tokens"][0], e["tokens"][1])
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    p = minilm.encode(["a red circle", "a crimson disc", "a tax return form"])["pooled"]
    assert cos(p[0], p[1]) > cos(p[0], p[2])  # a real language model: synonyms are close
    n = minilm.null(2)
    assert n["mask"].sum(1).tolist() == [2, 2]  # [CLS] [SEP]


def test_long_prompt_is_truncated_with_a_warning_keeping_the_end_token(minilm):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        e = minilm.encode(["red " * 60])
    assert any("truncated" in str(x.message) for x in w)
    ids = minilm.tokenizer(["red " * 60], truncation=True, max_length=24)["input_ids"][0]
    assert ids[-1] == minilm.tokenizer.sep_token_id and e["mask"].sum() == 24


def test_unknown_backbone_lists_the_shipped_ones():
    listed = "Registered backbones: diffusers, digits, gmm, shapes-eps, shapes-flow, shapes-flow-clip"
    with pytest.raises(sz.UnknownComponentError, match=listed):
        sz.registry.get("backbone", "shapes-xl")


def test_shapes_world_parallel_draw_equals_the_serial_one():
    """The reference statistics' 50k images are drawn by forked workers in chunks: each item
    depends only on (seed, index), so any split must give exactly the serial draw."""
    from solverzoo.models.worlds.shapes import ShapesWorld

    w = ShapesWorld(909)
    serial = w.batch(5, 700)[0]
    np.testing.assert_array_equal(w.images(5, 700, workers=2, chunk=128), serial)
    np.testing.assert_array_equal(w.images(5, 700), serial)
