"""Bad input gets a clear error that says what was wrong and what to do."""

import pytest
import torch

import solverzoo as sz
from solverzoo.cli import main


@pytest.fixture()
def setup(gmm):
    sched = sz.get_schedule("vp")
    return sched, gmm.model(sched).denoiser()


def test_unknown_names_list_close_matches():
    with pytest.raises(sz.UnknownComponentError, match=r"unknown solver 'dpmpp2m'.*'dpmpp_2m'"):
        sz.get_solver("dpmpp2m")
    with pytest.raises(sz.UnknownComponentError, match=r"unknown grid 'karas'.*'karras'"):
        sz.get_grid("karas")
    with pytest.raises(sz.UnknownComponentError, match=r"unknown guidance 'cgf'.*'cfg'"):
        sz.get_guidance("cgf")
    with pytest.raises(sz.UnknownComponentError, match="Registered schedules: ddpm, edm, flow, vp"):
        sz.get_schedule("nope")


def test_cli_unknown_solver(capsys):
    assert main(["verify", "eulr"]) == 2
    assert "Did you mean 'euler'" in capsys.readouterr().err


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_below_one(steps):
    with pytest.raises(sz.GridError, match="steps must be a positive integer"):
        sz.get_grid("karras")(sz.get_schedule("vp"), steps)


@pytest.mark.parametrize("times,msg", [
    ([0.5, 0.8, 0.0], "strictly decreasing"),
    ([0.9, 0.9, 0.1], "strictly decreasing"),
    ([0.9, float("nan"), 0.0], "NaN or inf"),
    ([1.5, 0.5, 0.0], "range"),
    ([0.5], "at least 2"),
])
def test_bad_grids(setup, times, msg):
    sched, den = setup
    with pytest.raises(sz.GridError, match=msg):
        sz.sample("ddim", den, torch.randn(2, 4), torch.tensor(times))


def test_too_many_steps_for_a_discrete_schedule():
    with pytest.raises(sz.GridError, match="exceed the 1000 training timesteps"):
        sz.get_grid("leading")(sz.get_schedule("ddpm"), 1001)


def test_nan_from_the_model_names_the_first_bad_step(gmm):
    sched = sz.get_schedule("vp")
    inner = gmm.model(sched)

    def net(x, t, **c):
        out = inner.net(x, t, **c)
        return torch.where(t[:, None] < 0.25, torch.full_like(out, float("nan")), out)

    den = sz.Model(net, "epsilon", sched).denoiser()
    grid = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    with pytest.raises(sz.NonFiniteError, match=r"call 8 \(t=0\.2, grid step 8 of 10\)"):
        sz.sample("dpmpp_2m", den, torch.randn(3, 4), grid)


def test_nan_check_does_not_sync_per_step(gmm, monkeypatch):
    """The watch keeps its flags as tensors; a host read happens once, after the loop."""
    sched = sz.get_schedule("vp")
    reads = []
    orig = torch.Tensor.__int__
    monkeypatch.setattr(torch.Tensor, "__int__", lambda self: reads.append(1) or orig(self))
    sz.sample("ddim", gmm.model(sched).denoiser(), torch.randn(2, 4), sz.get_grid("logsnr")(sched, 25))
    assert len(reads) <= 1


@pytest.mark.parametrize("name,kw", [("cfg", {"scale": float("nan")}), ("cfg", {"scale": float("inf")}),
                                     ("apg", {"scale": "4"}), ("cfg_rescale", {"phi": float("nan")})])
def test_nan_guidance_scale(name, kw):
    with pytest.raises(ValueError, match="must be a finite number"):
        sz.get_guidance(name, **kw)


def test_mismatched_shapes(gmm):
    sched = sz.get_schedule("vp")
    bad = sz.Model(lambda x, t, **c: x[:, :2], "epsilon", sched).denoiser()
    with pytest.raises(ValueError, match=r"model output has shape \(2, 2\) but the input has shape \(2, 4\)"):
        sz.sample("ddim", bad, torch.randn(2, 4), sz.get_grid("logsnr")(sched, 3))
    den = gmm.model(sched).denoiser()
    with pytest.raises(ValueError, match="got 3 generators for a batch of 2"):
        sz.sample("ddpm", den, torch.randn(2, 4), sz.get_grid("logsnr")(sched, 3), generator=sz.generators([1, 2, 3]))
    with pytest.raises(ValueError, match="floating-point tensor"):
        sz.sample("ddim", den, torch.zeros(2, 4, dtype=torch.long), sz.get_grid("logsnr")(sched, 3))


def test_unknown_and_bad_solver_options(setup):
    sched, den = setup
    grid = sz.get_grid("logsnr")(sched, 4)
    with pytest.raises(TypeError, match=r"solver 'ddim' has no option\(s\) \['etta'\]; valid options: \{'eta': 0.0\}"):
        sz.sample("ddim", den, torch.randn(2, 4), grid, etta=0.5)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        sz.sample("ddim", den, torch.randn(2, 4), grid, eta=2.0)
    with pytest.raises(ValueError, match="variance must be 'small'"):
        sz.sample("ddpm", den, torch.randn(2, 4), grid, variance="medium")
    with pytest.raises(ValueError, match="frame='ve' cannot start where alpha = 0"):
        sz.sample("heun", gmm_flow(den), torch.randn(2, 4), sz.get_grid("flow_shift")(sz.get_schedule("flow"), 4), frame="ve")


def gmm_flow(den):
    from solverzoo.testbeds import GaussianMixture
    return GaussianMixture.default().model(sz.get_schedule("flow"), "velocity").denoiser()


def test_unknown_prediction_and_time_input(gmm):
    with pytest.raises(ValueError, match="unknown prediction type 'eps'"):
        sz.Model(lambda x, t: x, "eps", sz.get_schedule("vp"))
    with pytest.raises(ValueError, match="unknown time_input 'sigmas'"):
        sz.Model(lambda x, t: x, "epsilon", sz.get_schedule("vp"), time_input="sigmas")


def test_guidance_without_the_branches_it_needs(gmm):
    sched = sz.get_schedule("vp")
    cond = gmm.conditioner()
    with pytest.raises(ValueError, match=r"needs conditioning for branches \['cond', 'negative'\]; missing \['negative'\]"):
        sz.GuidedDenoiser(gmm.model(sched), sz.get_guidance("negative_prompt"), sz.branch_conds(cond, [0, 1]))
    with pytest.raises(ValueError, match="class label 7 is out of range"):
        cond.encode([7])
