"""diffusers models wrapped as solverzoo Models reproduce the diffusers pipelines' latents.
Tiny random models built from config dicts: no download."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional test dependency (pip install 'solverzoo[test]'); "
                                "this module wraps diffusers models")

import solverzoo as sz  # noqa: E402
from solverzoo.models.adapters import DiffusersVAE, diffusers_model, schedule_from_config  # noqa: E402


def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("steps", [5, 12])
def test_ddim_on_wrapped_unet_matches_ddim_pipeline(steps):
    unet = _tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                    timestep_spacing="leading", set_alpha_to_one=True)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, num_inference_steps=steps, eta=0.0, generator=torch.Generator().manual_seed(3),
               output_type="np").images  # (B, H, W, C) in [0, 1]
    model = diffusers_model(unet, sched.config)
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    grid = sz.get_grid("leading")(model.schedule, steps)
    with torch.no_grad():
        out = sz.sample("ddim", model.denoiser(), x, grid).x
    ours = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_euler_on_wrapped_sd3_transformer_matches_the_sd3_loop():
    torch.manual_seed(0)
    tr = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                         pooled_projection_dim=8, out_channels=4).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn((2, 4, 8, 8), generator=g)
    ctx, pooled = torch.randn((2, 5, 16), generator=g), torch.randn((2, 8), generator=g)
    ref = latents.clone()
    with torch.no_grad():
        for t in sched.timesteps:  # the denoising loop of StableDiffusion3Pipeline (no CFG)
            noise_pred = tr(hidden_states=ref, timestep=t.expand(2), encoder_hidden_states=ctx, pooled_projections=pooled).sample
            ref = sched.step(noise_pred, t, ref).prev_sample
        model = diffusers_model(tr, sched.config)
        times = tuple(float(s) for s in sched.sigmas)
        grid = sz.get_grid("explicit")(model.schedule, len(times) - 1, times=times)
        ours = sz.sample("euler", model.denoiser({"encoder_hidden_states": ctx, "pooled_projections": pooled}), latents, grid).x
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_wrapped_dit_transformer_and_guidance():
    torch.manual_seed(0)
    tr = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                         num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    model = diffusers_model(tr, diffusers.DDIMScheduler().config)
    conds = {"cond": {"class_labels": torch.tensor([1, 2])}, "uncond": {"class_labels": torch.tensor([10, 10])}}
    den = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=4.0), conds)
    with torch.no_grad():
        res = sz.sample("dpmpp_2m", den, torch.randn(2, 4, 8, 8), sz.get_grid("trailing")(model.schedule, 6))
    assert res.x.shape == (2, 4, 8, 8) and torch.isfinite(res.x).all() and res.nfe == 12


def test_wrapped_unet2d_condition_and_vae():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=12,
                                          attention_head_dim=2,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    model = diffusers_model(unet, {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear",
                                   "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True})
    assert model.prediction == "v" and model.schedule.rescale_zero_terminal_snr
    with torch.no_grad():
        out = sz.sample("unipc", model.denoiser({"encoder_hidden_states": torch.randn(1, 3, 12)}), torch.randn(1, 4, 8, 8),
                        sz.get_grid("trailing")(model.schedule, 5)).x
    assert torch.isfinite(out).all()
    vae = DiffusersVAE(diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                               down_block_types=("DownEncoderBlock2D",) * 2,
                                               up_block_types=("UpDecoderBlock2D",) * 2,
                                               norm_num_groups=4, layers_per_block=1).eval())
    z = vae.to_latent(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert z.shape == (1, 4, 8, 8) and vae.from_latent(z).shape == (1, 3, 16, 16)


def test_flow_config_and_errors():
    sched, pred, time_input = schedule_from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert sched.name == "flow" and pred == "velocity" and time_input == "t1000"
    with pytest.raises(ValueError, match="unsupported diffusers prediction_type"):
        schedule_from_config({"prediction_type": "banana"})
    with pytest.raises(TypeError, match="no solverzoo adapter for Linear"):
        diffusers_model(torch.nn.Linear(2, 2), {})


def test_wrapped_flux_transformer_samples_packed_latents():
    torch.manual_seed(0)
    tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                          pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler()
    model = diffusers_model(tr, sched.config)
    assert model.prediction == "velocity" and model.schedule.name == "flow"
    n_img, n_txt = 16, 5
    img_ids = torch.zeros(n_img, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(n_img) // 4, torch.arange(n_img) % 4
    cond = {"encoder_hidden_states": torch.randn(2, n_txt, 16), "pooled_projections": torch.randn(2, 8),
            "img_ids": img_ids, "txt_ids": torch.zeros(n_txt, 3)}
    x = torch.randn(2, n_img, 8)  # packed latent tokens
    sched.set_timesteps(4)
    ref = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:  # FluxPipeline's loop (no guidance embedding): timestep = t / 1000
            v = tr(hidden_states=ref, timestep=(t / 1000).expand(2), **cond).sample
            ref = sched.step(v, t, ref).prev_sample
        times = tuple(float(s) for s in sched.sigmas)
        grid = sz.get_grid("explicit")(model.schedule, len(times) - 1, times=times)
        ours = sz.sample("euler", model.denoiser(cond), x, grid).x
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_text_conditioner_wraps_t5_and_clip_text_encoders(tmp_path):
    import transformers  # a required dependency of solverzoo: missing, it must fail, not skip

    from solverzoo.models.conditioners import TextConditioner, minilm_path

    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())  # any tokenizer works for a random model
    t5 = transformers.T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5Model(t5).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    c = TextConditioner(str(tmp_path / "t5"), max_length=12)
    e = c.encode(["a red circle", "a blue square"])
    assert e["tokens"].shape == (2, 12, 16) and c.dim == 16 and c.null(3)["pooled"].shape == (3, 16)
