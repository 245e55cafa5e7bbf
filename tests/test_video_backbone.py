"""The video backbones (``shapes-video``: the space-time DiT; ``shapes-video-frames``: the image DiT
frame by frame): every deterministic solver and every cache on 5-D states, guidance, the
frame-by-frame baseline against the image backbone run on each frame (the independent
reference), and that the space-time model couples frames while the baseline does not."""
import copy
import warnings

import pytest
import torch

import solverzoo as sz
from solverzoo.backbone import load_backbone
from solverzoo.bench.generate import generate
from solverzoo.caching import CacheError, StackSpec, find_stack
from solverzoo.models.nets import DiT
from solverzoo.models.nets.video_dit import FrameByFrame, VideoDiT, inflate_from
from solverzoo.models.worlds.video import FRAMES, frame_captions

PROMPTS = ["a small red circle moving from the top left to the top right", "a large blue square growing at the center"]
NEVER_SKIP = {"teacache": {"threshold": 0.0}, "first_block": {"threshold": 0.0}, "taylorseer": {"interval": 1}}
SKIPPING = {"teacache": {"threshold": 0.3}, "first_block": {"threshold": 0.3}, "taylorseer": {"interval": 2}}


@pytest.fixture(scope="module")
def video():
    return load_backbone("shapes-video")


@pytest.fixture(scope="module")
def frames_bb():
    return load_backbone("shapes-video-frames")


def _den(bb, prompts, guidance=None, scale=3.0):
    conds = bb.conds(prompts)
    if guidance is None:
        return bb.model.denoiser(conds["cond"])
    return sz.GuidedDenoiser(bb.model, sz.get_guidance(guidance, scale=scale), conds)


def _noise(bb, n, seed=0):
    return sz.randn((n,) + tuple(bb.latent_shape), sz.generators(range(seed, seed + n)))


def _grid(bb, steps):
    return sz.get_grid(bb.default_grid)(bb.model.schedule, steps, **bb.default_grid_options)


def test_backbones_declare_video_shapes(video, frames_bb):
    for bb in (video, frames_bb):
        assert tuple(bb.latent_shape) == (FRAMES, 4, 8, 8)
        clip = bb.decode(torch.zeros((2,) + tuple(bb.latent_shape)))
        assert clip.shape == (2, FRAMES, 3, 32, 32) and clip.abs().max() <= 1.0
    assert isinstance(video.model.net, VideoDiT) and isinstance(frames_bb.model.net, FrameByFrame)
    assert video.world is not None and frames_bb.world is not None and video.weights_id != frames_bb.weights_id


def _fixed_step_solvers():
    return [n for n in sz.registry.names("solver") if not sz.get_solver(n).stochastic and not sz.get_solver(n).adaptive]


def test_every_fixed_step_ode_solver_samples_clips(video):
    den, grid = _den(video, PROMPTS), _grid(video, 3)
    assert len(_fixed_step_solvers()) >= 15
    for name in _fixed_step_solvers():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'tuned' without a recommendation file warns and runs its default
            res = sz.sample(name, den, _noise(video, 2), grid)
        assert res.x.shape == (2, FRAMES, 4, 8, 8) and torch.isfinite(res.x).all(), name
        assert res.nfe >= 3, name


def test_adaptive_ode_solvers_sample_clips(video):
    """dpm_adaptive integrates one sample at a time; dop853 (scipy) in float64, so on a float64 copy of the net."""
    adaptive = [n for n in sz.registry.names("solver") if not sz.get_solver(n).stochastic and sz.get_solver(n).adaptive]
    assert set(adaptive) >= {"dop853", "dpm_adaptive"}
    grid = _grid(video, 2)
    for name in adaptive:
        model, x = video.model, _noise(video, 1)
        if name == "dop853":
            model, x = model.with_net(copy.deepcopy(model.net).double()), x.double()
        cond = {k: v.to(x.dtype) if v.is_floating_point() else v for k, v in video.conds(PROMPTS[:1])["cond"].items()}
        opts = {"rtol": 1e-2, "atol": 1e-2} if name == "dop853" else {"rtol": 0.1, "atol": 0.05}
        with torch.no_grad():
            res = sz.sample(name, model.denoiser(cond), x, grid, **opts)
        assert res.x.shape == (1, FRAMES, 4, 8, 8) and torch.isfinite(res.x).all(), name


def _stack_caches():
    return [n for n in sz.registry.names("cache") if StackSpec in sz.registry.get("cache", n).layouts]


@pytest.mark.parametrize("which", ["video", "frames_bb"])
def test_every_cache_runs_and_is_exact_when_it_never_skips(which, request):
    bb = request.getfixturevalue(which)
    assert find_stack(bb.model.net) is not None
    den, grid = _den(bb, PROMPTS, "cfg"), _grid(bb, 5)
    with torch.no_grad():
        base = sz.sample("dpmpp_2m", den, _noise(bb, 2), grid)
    assert set(_stack_caches()) >= set(NEVER_SKIP)
    for name in sz.registry.names("cache"):
        if name not in _stack_caches():
            with pytest.raises(CacheError), torch.no_grad():  # e.g. DeepCache drives U-Nets only
                sz.sample("dpmpp_2m", den, _noise(bb, 2), grid, cache=name)
            continue
        with torch.no_grad():
            skip = sz.sample("dpmpp_2m", den, _noise(bb, 2), grid, cache=name, cache_options=SKIPPING.get(name, {}))
        assert torch.isfinite(skip.x).all() and skip.nfe == base.nfe, name
        if name in NEVER_SKIP:
            with torch.no_grad():
                same = sz.sample("dpmpp_2m", den, _noise(bb, 2), grid, cache=name, cache_options=NEVER_SKIP[name])
            assert torch.equal(same.x, base.x), name
            assert skip.backbone_evals < base.backbone_evals, name  # the skipping setting did skip work


def test_guidance_is_cfg_of_the_two_branches(video, frames_bb):
    """The guided prediction equals uncond + s * (cond - uncond) from separate network calls."""
    for bb in (video, frames_bb):
        x, t = _noise(bb, 2), torch.tensor(0.6, dtype=torch.float64)
        with torch.no_grad():
            guided = _den(bb, PROMPTS, "cfg", scale=3.0)(x, t).x0
            c, u = (bb.model.predict(x, t, bb.conds(PROMPTS)[k]).x0 for k in ("cond", "uncond"))
        torch.testing.assert_close(guided, u + 3.0 * (c - u), atol=1e-4, rtol=1e-4)
        assert (c - u).abs().mean() > 1e-3  # the prompt matters
        out = generate(bb, PROMPTS, solver="euler", steps=3, guidance="cfg", scale=3.0, seeds=[5, 6])
        assert out.images.shape == (2, FRAMES, 3, 32, 32) and torch.isfinite(out.images).all()


def test_frame_by_frame_equals_the_image_backbone_on_each_frame(frames_bb):
    image = load_backbone("shapes-flow")
    prompt = PROMPTS[0]
    caps = frame_captions(prompt, FRAMES)
    assert caps[0] != caps[-1]  # the frames really have different captions (the object moves)
    x, grid = _noise(frames_bb, 1, seed=11), _grid(frames_bb, 4)
    with torch.no_grad():
        clip = sz.sample("dpmpp_2m", _den(frames_bb, [prompt], "cfg", 3.0), x, grid).x
        ref = sz.sample("dpmpp_2m", _den(image, caps, "cfg", 3.0), x[0], grid).x
    assert torch.equal(clip[0], ref)


def test_space_time_model_couples_frames_and_the_baseline_does_not(video, frames_bb):
    for bb, coupled in ((video, True), (frames_bb, False)):
        x = _noise(bb, 1, seed=3)
        y = x.clone()
        y[:, 0] += 0.5 * torch.randn(y[:, 0].shape, generator=torch.Generator().manual_seed(1))
        cond = bb.conds(PROMPTS[:1])["cond"]
        with torch.no_grad():
            a, b = (bb.model.predict(z, torch.tensor(0.5, dtype=torch.float64), cond).x0 for z in (x, y))
        assert not torch.equal(a[:, 0], b[:, 0])  # the perturbed frame itself changes
        diff5 = float((a[:, 5] - b[:, 5]).abs().max())
        assert (diff5 > 1e-3) if coupled else (diff5 == 0.0), (bb.name, diff5)


def test_inflated_video_dit_starts_as_the_image_dit_on_every_frame():
    torch.manual_seed(0)
    image = DiT(in_channels=4, input_size=8, patch=2, hidden=32, depth=2, heads=2, text_dim=16).eval()
    for p in image.parameters():
        torch.nn.init.normal_(p, std=0.05)
    net = inflate_from(VideoDiT(hidden=32, depth=2, heads=2, text_dim=16), image).eval()
    x, t = torch.randn(2, 5, 4, 8, 8), torch.tensor([100.0, 700.0])
    tok, mask, pooled = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 16)
    with torch.no_grad():
        out = net(x, t, tok, mask, pooled)
        ref = image(x.flatten(0, 1), t.repeat_interleave(5), tok.repeat_interleave(5, 0), mask.repeat_interleave(5, 0),
                    pooled.repeat_interleave(5, 0))
    torch.testing.assert_close(out, ref.reshape(out.shape), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        inflate_from(VideoDiT(hidden=64, depth=2, heads=2, text_dim=16), image)


def test_video_loss_is_the_velocity_regression():
    """A network predicting zero scores the mean square of the rectified-flow velocity eps - x0,
    drawn with the same generator (the loss's draws: noise first, then logit-normal times)."""
    from solverzoo.model import TIME_INPUTS
    from solverzoo.models.train_video_dit import video_loss

    x0 = torch.randn(3, 4, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    seen = {}

    def zero(x, t, **cond):
        seen["t"] = t
        return torch.zeros_like(x)

    cfg = {"prediction": "velocity"}
    loss = video_loss(zero, sz.get_schedule("flow"), cfg, TIME_INPUTS["t1000"], x0, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.sigmoid(torch.randn(3, generator=g, dtype=torch.float64))
    torch.testing.assert_close(loss, ((eps - x0) ** 2).mean())
    torch.testing.assert_close(seen["t"], (1000 * t).float())


def test_trainer_smoke_writes_loadable_weights_and_card(tmp_path):
    from solverzoo.models import weights
    from solverzoo.models.train import run

    rec = run("video_dit", ["steps=3", "n_clips=4", "batch=2", "init_from=null", "net.hidden=32", "net.depth=1",
                            "net.heads=2", "net.frames=4"], out_dir=tmp_path)
    assert 0.3 < rec["final_loss"] < 5.0 and rec["n_clips"] == 4  # about E|eps - x0|^2 at the start
    path = tmp_path / "shapes-dit-video.safetensors"
    meta = weights.read_meta(path)
    net = weights.load_into(VideoDiT(**meta["config"]["net"]), path)
    assert net.hidden == 32 and len(net.blocks) == 1 and meta["record"]["final_loss"] == rec["final_loss"]
    card = (tmp_path / "shapes-dit-video.md").read_text()
    assert "3 steps of batch 2" in card and f"{rec['final_loss']:.4f}" in card and "Training fits in" in card
    assert "solverzoo train video_dit steps=3" in card


def test_layer_skip_guidance_runs_and_attention_guidance_is_refused(video):
    """The VideoDiT declares its blocks for perturbation guidance (SLG skips the middle one), not a
    per-sample self-attention (its spatial attention runs per frame), so PAG is refused clearly."""
    from solverzoo.perturb import PerturbError

    x, grid = _noise(video, 1), _grid(video, 2)
    with torch.no_grad():
        slg = sz.sample("euler", _den(video, PROMPTS[:1], "slg", 3.0), x, grid)
        cfg = sz.sample("euler", _den(video, PROMPTS[:1], "cfg", 3.0), x, grid)
    assert torch.isfinite(slg.x).all() and not torch.equal(slg.x, cfg.x) and slg.nfe > cfg.nfe
    with pytest.raises(PerturbError, match="self-attention"), torch.no_grad():
        sz.sample("euler", _den(video, PROMPTS[:1], "pag", 3.0), x, grid)
