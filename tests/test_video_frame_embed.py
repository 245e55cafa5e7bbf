"""The space-time DiT's frame-position embedding (``VideoDiT(frame_embed=True)``) and the trainer's
further stage that switches it on: zero-initialised, so the continued network starts as exactly the
earlier one; once trained it gives every token its frame, which is what breaks the time-reversal
symmetry a network without it has when its temporal attention is off (frame 0 then cannot tell
"the start of the clip" from "the end"). And the cosine learning-rate schedule, against its formula."""
import math

import pytest
import torch

from solverzoo.models import weights
from solverzoo.models.nets.video_dit import VideoDiT
from solverzoo.models.train_video_dit import _continue, _lr

NET = dict(hidden=32, depth=2, heads=2, text_dim=16, frames=4)


def _inputs(T=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, T, 4, 8, 8, generator=g), torch.tensor([100.0, 700.0]), torch.randn(2, 3, 16, generator=g),
            torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 16, generator=g))


def _randomised(net, std=0.05, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net.eval()


def _no_temporal(net):
    """Zero the temporal attention's gate (adaLN chunk 5) in every block: no frame sees another."""
    D = net.hidden
    with torch.no_grad():
        for blk in net.blocks:
            blk.ada[1].weight[5 * D:6 * D] = 0
            blk.ada[1].bias[5 * D:6 * D] = 0
    return net


def test_frame_embed_is_recorded_only_when_on():
    assert "frame_embed" not in VideoDiT(**NET).config
    assert VideoDiT(**NET, frame_embed=True).config["frame_embed"] is True


def test_zero_initialised_frame_embed_leaves_the_network_unchanged():
    base = _randomised(VideoDiT(**NET))
    withfe = VideoDiT(**NET, frame_embed=True).eval()
    missing, unexpected = withfe.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["frame_embed.bias", "frame_embed.weight"]
    with torch.no_grad():
        torch.testing.assert_close(withfe(*_inputs()), base(*_inputs()), atol=0, rtol=0)


def test_frame_embed_breaks_time_reversal_symmetry():
    """With the temporal attention off, a net without frame positions maps a time-reversed clip to
    the time-reversed output (it cannot know which frame is first); with a non-zero frame
    embedding it does not."""
    x, t, tok, mask, pooled = _inputs()
    base = _no_temporal(_randomised(VideoDiT(**NET)))
    with torch.no_grad():
        out, rev = base(x, t, tok, mask, pooled), base(x.flip(1), t, tok, mask, pooled)
    torch.testing.assert_close(rev.flip(1), out, atol=1e-5, rtol=1e-5)
    fe = VideoDiT(**NET, frame_embed=True).eval()
    fe.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        fe.frame_embed.weight.normal_(0, 0.5)
        out, rev = fe(x, t, tok, mask, pooled), fe(x.flip(1), t, tok, mask, pooled)
    assert float((rev.flip(1) - out).abs().max()) > 1e-3


def test_a_stage_switching_frame_embed_on_continues_the_earlier_network(tmp_path):
    earlier = _randomised(VideoDiT(**NET))
    meta = {"config": {"kind": "video_dit", "net": dict(earlier.config)}, "record": {}}
    path = weights.save(earlier, "stage", meta, directory=tmp_path)
    cfg = {"init_from": str(path), "net": {**earlier.config, "frame_embed": True}}
    net = _continue(VideoDiT(**cfg["net"]), path, meta, cfg).eval()
    assert float(net.frame_embed.weight.detach().abs().max()) == 0.0
    with torch.no_grad():
        torch.testing.assert_close(net(*_inputs()), earlier(*_inputs()), atol=0, rtol=0)
    same = {"init_from": str(path), "net": dict(earlier.config)}  # a plain further stage: the same net
    torch.testing.assert_close(_continue(VideoDiT(**same["net"]), path, meta, same).eval()(*_inputs()).detach(),
                               earlier(*_inputs()).detach(), atol=0, rtol=0)
    wider = {"init_from": str(path), "net": {**earlier.config, "hidden": 64}}
    with pytest.raises(ValueError, match="may only switch frame_embed on"):
        _continue(VideoDiT(**wider["net"]), path, meta, wider)


def test_cosine_learning_rate_follows_its_formula():
    cfg = {"lr": 3e-4, "steps": 1000, "lr_schedule": "cosine"}
    assert _lr(cfg, 0) == pytest.approx(3e-4 / 200)  # warm-up
    assert _lr(cfg, 500) == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lr(cfg, 999) == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 0.999)))
    assert _lr(cfg, 999) < 1e-8
    assert _lr({"lr": 3e-4, "steps": 1000}, 500) == 3e-4  # constant after warm-up by default
    with pytest.raises(ValueError, match="lr_schedule"):
        _lr({**cfg, "lr_schedule": "step"}, 10)


def test_time_shift_moves_training_times_toward_noise():
    """The loss's times are the logit-normal draws mapped by t -> s t / (1 + (s - 1) t) (drawn with
    the same generator after the noise); s = 3 puts P(z > logit(0.75)) = 13.6% of the clips above
    t = 0.9 instead of P(z > logit(0.9)) = 1.4% (z standard normal)."""
    import solverzoo as sz
    from solverzoo.model import TIME_INPUTS
    from solverzoo.models.train_video_dit import video_loss

    x0 = torch.zeros(4000, 1, 1, 1, 1)
    seen = {}

    def zero(x, t, **cond):
        seen["t"] = t / 1000
        return torch.zeros_like(x)

    sched, time_in = sz.get_schedule("flow"), TIME_INPUTS["t1000"]
    video_loss(zero, sched, {"prediction": "velocity", "time_shift": 3.0}, time_in, x0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    torch.randn(x0.shape, generator=g)
    u = torch.sigmoid(torch.randn(4000, generator=g, dtype=torch.float64))
    torch.testing.assert_close(seen["t"].double(), (3 * u / (1 + 2 * u)).clamp(1e-4, 1 - 1e-4), atol=1e-4, rtol=1e-5)
    shifted = float((seen["t"] > 0.9).float().mean())
    video_loss(zero, sched, {"prediction": "velocity"}, time_in, x0, torch.Generator().manual_seed(1))
    plain = float((seen["t"] > 0.9).float().mean())
    tail = lambda p: 0.5 * math.erfc(math.log(p / (1 - p)) / math.sqrt(2))  # noqa: E731  P(sigmoid(z) > p)
    # binomial standard errors at n = 4000: about 0.0054 and 0.0019
    assert abs(shifted - tail(0.75)) < 0.02 and abs(plain - tail(0.9)) < 0.007, (shifted, plain)
