"""SolverzooScheduler as a diffusers scheduler: config round trips, the README's five lines,
noising, img2img's begin index, and the errors users meet. Tiny UNet, a few steps, CPU."""
from __future__ import annotations

import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional test dependency (pip install 'solverzoo[test]')")

import solverzoo as sz  # noqa: E402
from solverzoo.diffusers import SolverzooScheduler, TapeError, diffusers_model  # noqa: E402

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                                 norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    p = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False, **SD_BETAS))
    p.set_progress_bar_config(disable=True)
    return p


def test_readme_five_lines(pipe):
    """The README section "Use a zoo solver in your diffusers pipeline", run as written (on the
    tiny DDIMPipeline instead of a downloaded one)."""
    from solverzoo.diffusers import SolverzooScheduler

    pipe.scheduler = SolverzooScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m", grid="karras",
                                                    solver_options={"lower_order_final": True}, grid_options={"rho": 7.0})
    images = pipe(num_inference_steps=8, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 3) and pipe.scheduler.timesteps.numel() == 8
    pipe.scheduler = diffusers.DDIMScheduler(clip_sample=False, **SD_BETAS)


def test_config_round_trip_keeps_solver_grid_options_and_base(tmp_path):
    base = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.4)
    s = SolverzooScheduler.from_config(base.config, solver="heun", grid="flow_shift", grid_options={"shift": 1.0})
    assert s.config.base_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert s.config.use_dynamic_shifting is True and s.config.base_shift == 0.4  # what FLUX / SD3 pipelines read
    s.save_pretrained(tmp_path)
    for again in (SolverzooScheduler.from_pretrained(tmp_path), SolverzooScheduler.from_config(s.config)):
        assert (again.config.solver, again.config.grid, again.config.grid_options) == ("heun", "flow_shift", {"shift": 1.0})
        again.set_timesteps(4, mu=0.7)
        s.set_timesteps(4, mu=0.7)
        assert torch.equal(again.timesteps, s.timesteps) and torch.equal(again.sigmas, s.sigmas)
    assert s.order == 2 and len(s.timesteps) == 7  # heun: 2 evaluations per step, an Euler step to sigma = 0
    # a diffusers scheduler made from ours gets the base config back
    assert diffusers.FlowMatchEulerDiscreteScheduler.from_config(s.config).config.base_shift == 0.4


def test_from_a_scheduler_instance_names_its_class():
    s = SolverzooScheduler.from_config(diffusers.UniPCMultistepScheduler(**SD_BETAS), solver="unipc")
    assert s.config.base_config["_class_name"] == "UniPCMultistepScheduler"


def test_timesteps_sigmas_and_init_noise_sigma_follow_the_base_scheduler():
    ddim = diffusers.DDIMScheduler(**SD_BETAS, timestep_spacing="trailing")
    ddim.set_timesteps(7)
    s = SolverzooScheduler.from_config(ddim.config, solver="ddim")
    s.set_timesteps(7)
    assert torch.equal(s.timesteps, ddim.timesteps) and s.init_noise_sigma == pytest.approx(1.0, abs=1e-12)
    euler = diffusers.EulerDiscreteScheduler(**SD_BETAS)
    euler.set_timesteps(7)
    torch.testing.assert_close(s.sigmas[:-1], torch.as_tensor(((1 - ddim.alphas_cumprod) / ddim.alphas_cumprod) ** 0.5)[
        ddim.timesteps].float(), rtol=1e-5, atol=0)  # VE sigma of each timestep, as diffusers' sigmas
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(5)
    f = SolverzooScheduler.from_config(flow.config, solver="euler")
    f.set_timesteps(5)
    torch.testing.assert_close(f.timesteps, flow.timesteps, rtol=0, atol=1e-4)
    torch.testing.assert_close(f.sigmas, flow.sigmas, rtol=0, atol=1e-7)


def test_add_noise_and_scale_noise_match_diffusers():
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    ddpm = diffusers.DDPMScheduler(**SD_BETAS)
    s = SolverzooScheduler.from_config(ddpm.config)
    t = torch.tensor([10, 500, 999])
    torch.testing.assert_close(s.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t), rtol=0, atol=2e-6)
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(6)
    f = SolverzooScheduler.from_config(flow.config, solver="euler")
    f.set_timesteps(6)
    tf = flow.timesteps[2:3]
    torch.testing.assert_close(f.scale_noise(x0, tf, noise), flow.scale_noise(x0, tf, noise), rtol=0, atol=1e-6)


def test_begin_index_starts_the_solver_mid_grid(pipe):
    """img2img: set_begin_index(k) runs the solver on the grid from evaluation k; equals sz.sample
    on that sub-grid from the noised image."""
    s = SolverzooScheduler.from_config(pipe.scheduler.config, solver="heun", grid="karras")
    s.set_timesteps(5)
    k = 2 * s.order  # the start of grid step 2
    s.set_begin_index(k)
    x0, noise = torch.rand(1, 3, 8, 8) * 2 - 1, torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x = s.add_noise(x0, noise, s.timesteps[k:k + 1])
    lat = x
    with torch.no_grad():
        for t in s.timesteps[k:]:
            lat = s.step(pipe.unet(lat, t).sample, t, lat).prev_sample
        ref = sz.sample("heun", diffusers_model(pipe.unet, pipe.scheduler.config).denoiser(), x, s._grid[2:]).x
    assert s.step_index == len(s.timesteps)
    torch.testing.assert_close(lat, ref, rtol=0, atol=1e-6)
    s.set_timesteps(5)
    s.set_begin_index(1)  # heun's second stage: not where a step starts
    with pytest.raises(ValueError, match="not the first of a grid step"):
        s.step(torch.zeros(1, 3, 8, 8), s.timesteps[1], torch.zeros(1, 3, 8, 8))


def test_errors_say_what_to_do():
    cfg = diffusers.DDIMScheduler().config
    with pytest.raises(sz.UnknownComponentError):
        SolverzooScheduler.from_config(cfg, solver="dpmpp_9m")
    with pytest.raises(TypeError, match="has no option"):
        SolverzooScheduler.from_config(cfg, solver="ddim", solver_options={"etaa": 1.0})
    with pytest.raises(ValueError, match="adaptive"):
        SolverzooScheduler.from_config(cfg, solver="dop853")
    s = SolverzooScheduler.from_config(cfg, solver="ddim")
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        s.step(torch.zeros(1, 1), 999, torch.zeros(1, 1))
    s.set_timesteps(3)
    with pytest.raises(TypeError, match="solver options are set once"):
        s.step(torch.zeros(1, 1), s.timesteps[0], torch.zeros(1, 1), eta=0.5)
    churn = SolverzooScheduler.from_config(cfg, solver="heun", grid="karras", solver_options={"s_churn": 10.0})
    with pytest.raises(TapeError, match="changes the starting noise"):
        churn.set_timesteps(4)
    dyn = SolverzooScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config,
                                         solver="euler", grid="flow_shift")
    with pytest.raises(ValueError, match="needs mu"):
        dyn.set_timesteps(4)


def test_a_loop_that_reads_tensor_values_is_refused():
    """The replay needs loops without host reads (the solver contract); recording on meta tensors
    catches one and says so."""

    class Peeking(sz.Solver):
        name = "peeking_test_solver"

        def plan(self, schedule, grid):
            return None

        def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
            for i in range(len(grid) - 1):
                pred = denoiser(x, grid[i])
                if float(pred.x0.abs().max()) > 1e9:  # a host read inside the loop
                    break
                x = pred.x0
            return x

    plugin = types.ModuleType("peeking_test_plugin")
    plugin.register_solvers = sz.hookimpl(lambda register: register(Peeking()))
    sz.registry.add_plugin(plugin, "peeking_test_plugin", "peeking-test 1.0")
    try:
        s = SolverzooScheduler.from_config(diffusers.DDIMScheduler().config, solver="peeking_test_solver")
        with pytest.raises(TapeError, match="reads tensor values on the host"):
            s.set_timesteps(3)
    finally:
        sz.registry.remove_plugin("peeking_test_plugin")
