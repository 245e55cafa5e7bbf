"""The next-token video model: KV-cached sampling against full recomputation, causality, the
tokenizer's exact round trip and k-means fit, determinism and batch independence of sampling,
and the pass / FLOP accounting against hand counts and torch's FLOP counter."""
from __future__ import annotations

import zlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from solverzoo.models.nets.video_ar import CausalVideoTransformer, VideoAR, VQTokenizer, flops_per_sample
from solverzoo.models.video_ar import VideoARGenerator, _filter, row_generators

TOK = dict(codes=11, latent_channels=4, latent_size=8, patch=4, refine_width=0)  # 4 tokens per frame
NET = dict(codes=11, frames=3, grid=2, hidden=16, depth=2, heads=2, mlp_ratio=2.0, text_dim=8)


class FakeConditioner:
    """Deterministic per-prompt text tokens (a function of the prompt alone), with padding masks."""

    def encode(self, prompts):
        toks, masks = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            toks.append(torch.randn(5, 8, generator=g))
            masks.append(torch.arange(5) < 2 + len(p) % 4)
        return {"tokens": torch.stack(toks), "mask": torch.stack(masks)}

    def null(self, batch):
        return self.encode([""] * batch)


def _model(seed: int = 0) -> VideoAR:
    torch.manual_seed(seed)
    model = VideoAR(TOK, NET)
    model.tokenizer.codebook.copy_(torch.randn(11, 64))
    for p in model.net.parameters():  # larger weights than the init, so logits vary strongly with inputs
        p.data.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _text(b: int = 2):
    enc = FakeConditioner().encode([f"prompt {i}" for i in range(b)])
    return enc["tokens"], enc["mask"]


def test_cached_steps_equal_full_recomputation():
    net = _model().net
    text, mask = _text(2)
    tokens = torch.randint(0, 11, (2, net.length), generator=torch.Generator().manual_seed(1))
    full = net(tokens, text, mask)
    state = net.start(text, mask)
    prev = torch.cat([torch.full((2, 1), net.codes), tokens[:, :-1]], 1)
    stepped = torch.cat([net.step(prev[:, i:i + 1], state) for i in range(net.length)], 1)
    assert full.shape == (2, net.length, 11)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)
    assert full.std() > 0.1  # the comparison is not between constants
    with pytest.raises(ValueError, match="past its end"):
        net.step(prev[:, :1], state)


def test_generated_tokens_equal_uncached_reference_sampler():
    """The generator's tokens equal those of a sampler that recomputes the whole prefix at every position."""
    model = _model()
    gen = VideoARGenerator(model, FakeConditioner())
    prompts, seeds = ["a red circle", "a blue square moving"], [3, 4]
    for cfg_scale, top_k in ((1.0, None), (2.5, 4)):
        lat, _ = gen.generate(prompts, seeds, temperature=1.3, top_k=top_k, cfg_scale=cfg_scale)
        got = model.tokenizer.encode(lat).flatten(1)
        rows = row_generators(seeds, 2)
        enc, null = FakeConditioner().encode(prompts), FakeConditioner().null(2)
        ref = torch.empty(2, model.net.length, dtype=torch.long)
        for p in range(model.net.length):
            seq = torch.cat([ref[:, :p], torch.zeros(2, 1, dtype=torch.long)], 1)  # the last input is never read
            logits = model.net(seq, enc["tokens"], enc["mask"])[:, p]
            if cfg_scale != 1.0:
                u = model.net(seq, null["tokens"], null["mask"])[:, p]
                logits = u + cfg_scale * (logits - u)
            probs = _filter(logits, 1.3, top_k)
            ref[:, p] = torch.cat([torch.multinomial(probs[i], 1, generator=rows[i]) for i in range(2)])
        assert torch.equal(got, ref), (cfg_scale, top_k)
        assert len(set(ref.flatten().tolist())) > 3  # sampled, not constant


def test_causality():
    net = _model().net
    text, mask = _text(1)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 11, (1, net.length), generator=g)
    base = net(tokens, text, mask)
    for j in (0, 5, net.length - 2):
        changed = tokens.clone()
        changed[0, j] = (changed[0, j] + 1) % 11
        out = net(changed, text, mask)
        torch.testing.assert_close(out[:, :j + 1], base[:, :j + 1], atol=1e-6, rtol=0)
        assert (out[:, j + 1] - base[:, j + 1]).abs().max() > 1e-3  # the next position does see token j


def test_caption_changes_logits_and_padding_is_ignored():
    net = _model().net
    text, mask = _text(2)
    tokens = torch.randint(0, 11, (1, net.length), generator=torch.Generator().manual_seed(3))
    a = net(tokens, text[:1], mask[:1])
    b = net(tokens, text[1:], mask[1:])
    assert (a - b).abs().max() > 1e-3
    junk = text[:1].clone()
    junk[0, ~mask[0]] = 100.0  # padded caption tokens must not matter
    torch.testing.assert_close(net(tokens, junk, mask[:1]), a, atol=1e-6, rtol=0)


def test_tokenizer_round_trip_is_exact():
    for refine in (0, 8):
        tok = VQTokenizer(codes=9, patch=2, refine_width=refine)
        tok.codebook.copy_(torch.randn(9, 16, generator=torch.Generator().manual_seed(4)))
        ids = torch.randint(0, 9, (3, 5, 16), generator=torch.Generator().manual_seed(5))
        lat = tok.lookup(ids)
        assert lat.shape == (3, 5, 4, 8, 8)
        assert torch.equal(tok.encode(lat), ids)
        if not refine:
            assert torch.equal(tok.decode(ids), lat)
        assert torch.equal(tok.patches(lat), tok.codebook[ids])
        z = torch.randn(2, 4, 8, 8)
        assert torch.equal(tok.unpatch(tok.patches(z)), z)
        # patch (r, c) of channel 0 holds latent pixels rows 2r..2r+1, cols 2c..2c+1
        assert torch.equal(tok.patches(z)[1, 1 * 4 + 2, :4], z[1, 0, 2:4, 4:6].flatten())
    with pytest.raises(ValueError, match="tokens per frame"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_kmeans_reaches_a_lloyd_fixed_point():
    """After fitting, every code is the mean of the vectors nearest to it (brute force), and the
    reported inertia is their mean squared distance to the nearest code."""
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(5, 16, generator=g) * 4
    data = torch.cat([c + torch.randn(100, 16, generator=g) for c in centres])
    tok = VQTokenizer(codes=4, patch=2, refine_width=0)
    rec = tok.fit(data, 40, torch.Generator().manual_seed(7))
    d2 = ((data[:, None, :] - tok.codebook[None]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    means = torch.stack([data[nearest == k].mean(0) for k in range(4)])
    torch.testing.assert_close(tok.codebook, means, atol=1e-4, rtol=0)
    assert rec["used"] == 4
    assert rec["inertia"] == pytest.approx(float(d2.min(1).values.mean()), rel=1e-4)
    assert torch.equal(tok.nearest(data), nearest)
    with pytest.raises(ValueError, match="at least 4 vectors"):
        tok.fit(data[:3], 1, g)


def test_generation_is_deterministic_and_batch_independent():
    model = _model()
    gen = VideoARGenerator(model, FakeConditioner())
    p = ["a red circle", "a blue square", "a green triangle growing"]
    for kw in ({}, {"cfg_scale": 3.0, "top_k": 5}):
        a, _ = gen.generate(p, torch.Generator().manual_seed(11), **kw)
        b, _ = gen.generate(p, torch.Generator().manual_seed(11), **kw)
        assert torch.equal(a, b) and a.shape == (3, 3, 4, 8, 8)
        c, _ = gen.generate(p[:2], torch.Generator().manual_seed(11), **kw)  # the batch minus its last sample
        assert torch.equal(c, a[:2])
        d, _ = gen.generate([p[1]], [row_generators(torch.Generator().manual_seed(11), 2)[1]], **kw)  # sample 1 alone
        assert torch.equal(d[0], a[1])
        e, _ = gen.generate(p, torch.Generator().manual_seed(12), **kw)
        assert not torch.equal(e, a)


def test_greedy_and_argument_errors():
    gen = VideoARGenerator(_model(), FakeConditioner())
    a, _ = gen.generate(["x"], torch.Generator().manual_seed(0), temperature=0)
    b, _ = gen.generate(["x"], torch.Generator().manual_seed(1), temperature=0)
    assert torch.equal(a, b)  # greedy decoding ignores the seed
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(["x"], torch.Generator(), temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        gen.generate(["x"], torch.Generator(), top_k=0)
    with pytest.raises(ValueError, match="one per prompt"):
        gen.generate(["x", "y"], [1])
    with pytest.raises(TypeError, match="torch.Generator"):
        gen.generate(["x"], 5)


def test_forward_passes_count_network_rows():
    model = _model()
    gen = VideoARGenerator(model, FakeConditioner())
    rows, step = [], model.net.step

    def counting(prev, state):
        rows.append(prev.shape[0] * prev.shape[1])
        return step(prev, state)

    model.net.step = counting
    for cfg_scale, branches in ((1.0, 1), (2.0, 2)):
        rows.clear()
        _, stats = gen.generate(["a", "bb", "ccc"], torch.Generator().manual_seed(0), cfg_scale=cfg_scale)
        assert stats["tokens"] == 12 and stats["forward_passes"] == 12 * branches
        assert len(rows) == 12  # one batched call per token
        assert sum(rows) / 3 == stats["forward_passes"]


def test_flops_match_a_hand_count():
    cfg = dict(codes=3, frames=1, grid=1, hidden=4, depth=1, heads=1, mlp_ratio=2.0, text_dim=2)
    kv_cross = 2 * 3 * 2 * 8  # text_len 3 tokens x (2 -> 8) projection
    qkv, proj, q_cross, proj_cross = 2 * 4 * 12, 2 * 4 * 4, 2 * 4 * 4, 2 * 4 * 4
    mlp = 2 * 4 * 8 + 2 * 8 * 4
    cross_attn = 2 * 3 * 4 + 2 * 3 * 4  # scores and weighted sum over 3 caption tokens
    self_attn = 2 * 1 * 4 + 2 * 1 * 4  # over the one cached key
    head = 2 * 4 * 3
    one = kv_cross + qkv + proj + q_cross + proj_cross + mlp + cross_attn + self_attn + head
    assert one == 504
    assert flops_per_sample(cfg, text_len=3) == 504
    assert flops_per_sample(cfg, text_len=3, branches=2) == 1008
    two = dict(cfg, frames=2)  # the second position attends to two keys
    assert flops_per_sample(two, text_len=3) == 504 + (504 - kv_cross) + 2 * 4 * 2


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_flops_match_torch_flop_counter(cfg_scale):
    gen = VideoARGenerator(_model(), FakeConditioner())
    with FlopCounterMode(display=False) as counter:
        _, stats = gen.generate(["a red circle", "a blue box"], torch.Generator().manual_seed(0), cfg_scale=cfg_scale)
    assert counter.get_total_flops() == 2 * stats["flops"]
    assert stats["flops"] == flops_per_sample(NET, 5, branches=2 if cfg_scale != 1.0 else 1)


def test_model_rejects_mismatched_parts_and_shapes():
    with pytest.raises(ValueError, match="does not match"):
        VideoAR(dict(TOK, codes=12), NET)
    with pytest.raises(ValueError, match="expected latents"):
        VQTokenizer(codes=4).patches(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="multiple of heads"):
        CausalVideoTransformer(**dict(NET, heads=3))


def test_backbone_is_registered():
    import solverzoo as sz

    assert "shapes-video-ar" in sz.registry.names("backbone")


def test_shipped_model_tokenizes_real_clips_and_learnt_the_captions():
    """The shipped tokenizer reconstructs held-out world clips (PSNR against the VAE's own
    reconstruction) and the transformer predicts their tokens far better than chance, better
    with their captions than with the empty prompt."""
    import math

    from solverzoo.models import weights
    from solverzoo.models.conditioners import conditioner_by_name
    from solverzoo.models.nets import VAE
    from solverzoo.models.worlds.video import ShapesVideoWorld

    path = weights.resolve("shapes-video-ar")
    cfg = weights.read_meta(path)["config"]
    model = weights.load_into(VideoAR(cfg["tokenizer"], cfg["net"]), path)
    vae = weights.load_into(VAE(), cfg["vae"])
    x, caps, _ = ShapesVideoWorld(cfg["eval_seed"]).batch(500, 8)
    with torch.no_grad():
        z = vae.to_latent(torch.from_numpy(x).flatten(0, 1)).reshape(8, -1, 4, 8, 8)
        tokens = model.tokenizer.encode(z)
        rec, ref = vae.from_latent(model.tokenizer.decode(tokens).flatten(0, 1)), vae.from_latent(z.flatten(0, 1))
        psnr = 10 * math.log10(4 / float(((rec.clamp(-1, 1) - ref.clamp(-1, 1)) ** 2).mean()))
        assert psnr > 27.0
        cond = conditioner_by_name(cfg["conditioner"])
        enc, null = cond.encode(caps), cond.null(8)
        with_caption = float(model.net.loss(tokens.flatten(1), enc["tokens"], enc["mask"]))
        without = float(model.net.loss(tokens.flatten(1), null["tokens"], null["mask"]))
    assert with_caption < math.log(cfg["net"]["codes"]) - 2.0
    assert with_caption < without
