"""SolverzooScheduler inside unmodified diffusers pipelines, on tiny random components built from
config dicts (no download; the CLIP tokenizer is a byte-level vocabulary written here).

Each pipeline's output with SolverzooScheduler is compared with ``sz.sample`` on the same network
wrapped by the adapters (same noise, grid and guidance) and, where diffusers has the same
algorithm, with diffusers' own scheduler. Tolerances (absolute, on unit-scale latents):

* ``EXACT`` 1e-6 with no guidance: the scheduler replays the solver's own torch calls, so
  the same model outputs give the same result (measured: 0, bit for bit);
* ``GUIDED`` 1e-5 with classifier-free guidance: the pipeline combines the raw network outputs
  (eps, v or velocity) and sz combines x0 / eps, the same affine map in another rounding order;
* ``PEER`` 2e-4 against diffusers' schedulers, which compute their coefficients in float32
  (solverzoo: float64), as in test_diffusers_crosscheck.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional test dependency (pip install 'solverzoo[test]')")
transformers = pytest.importorskip("transformers")

import solverzoo as sz  # noqa: E402
from solverzoo.diffusers import SolverzooScheduler, diffusers_model  # noqa: E402

EXACT, GUIDED, PEER = 1e-6, 1e-5, 2e-4


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _close(a, b, tol):
    """max |a - b| <= tol * max(1, max |b|): absolute on unit-scale outputs, relative on larger ones."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    diff, scale = float((a - b).abs().max()), max(1.0, float(b.abs().max()))
    print(f"max |difference| {diff:.3g} (scale {scale:.3g}, tolerance {tol * scale:.3g})")
    assert diff <= tol * scale, f"max |difference| {diff:.3g} > {tol:g} x {scale:.3g}"
    return diff


def _swap(pipe, **kw):
    pipe.scheduler = SolverzooScheduler.from_config(pipe.scheduler.config, **kw)
    return pipe


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """A CLIP tokenizer with a 514-token byte-level vocabulary (no merges), saved and reloaded offline."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    path = tmp_path_factory.mktemp("clip_tok")
    transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8).save_pretrained(path)
    return transformers.CLIPTokenizer.from_pretrained(path)


def _clip_text(tok, projection=False, dim=16):
    torch.manual_seed(1)
    cfg = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=8, projection_dim=dim,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(cfg).eval()


def _vae(latent=4):
    torch.manual_seed(2)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent, block_out_channels=(8, 16),
                                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                   norm_num_groups=4, layers_per_block=1).eval()


# -- DDIMPipeline / DDPMPipeline: unconditional UNet ------------------------------------------------------
@pytest.fixture(scope="module")
def unet2d():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                                 norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()


def _unet_ref(unet, config, solver, grid, seed, **opts):
    g = _gen(seed)
    x = diffusers.utils.torch_utils.randn_tensor((2, 3, 8, 8), generator=g)  # what DDIM/DDPMPipeline draw first
    with torch.no_grad():
        out = sz.sample(solver, diffusers_model(unet, config).denoiser(), x, grid, generator=g, **opts).x
    return (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("solver,grid,opts", [("ddim", None, {}), ("dpmpp_3m", "karras", {}), ("heun", "karras", {}),
                                              ("rk4", "trailing", {}), ("midpoint", "logsnr", {}),
                                              ("euler_ancestral", "trailing", {"eta": 1.0})])
def test_ddim_pipeline(unet2d, solver, grid, opts):
    base = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    pipe = diffusers.DDIMPipeline(unet=unet2d, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    steps = 5
    if solver == "ddim":  # diffusers' own DDIM on the same pipeline
        peer = pipe(batch_size=2, num_inference_steps=steps, generator=_gen(3), output_type="np").images
    _swap(pipe, solver=solver, grid=grid, solver_options=opts)
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    ours = pipe(batch_size=2, num_inference_steps=steps, generator=_gen(3), output_type="np").images
    # one network call per evaluation; multi-stage solvers end with an Euler step to sigma = 0
    assert len(calls) == len(pipe.scheduler.timesteps) == {"heun": 2 * steps - 1, "midpoint": 2 * steps - 1,
                                                           "rk4": 4 * steps - 3}.get(solver, steps)
    ref = _unet_ref(unet2d, base.config, solver, pipe.scheduler._grid, 3, **opts)
    _close(ours, ref, EXACT)
    if solver == "ddim":
        _close(ours, peer, PEER)
    pipe.unet._forward_hooks.clear()


def test_ddpm_pipeline_is_stochastic_ddpm_with_the_pipeline_generator(unet2d):
    base = diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small", timestep_spacing="leading")
    pipe = diffusers.DDPMPipeline(unet=unet2d, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    peer = pipe(batch_size=2, num_inference_steps=6, generator=_gen(5), output_type="np").images
    _swap(pipe, solver="ddpm")
    ours = pipe(batch_size=2, num_inference_steps=6, generator=_gen(5), output_type="np").images
    _close(ours, _unet_ref(unet2d, base.config, "ddpm", pipe.scheduler._grid, 5), EXACT)
    _close(ours, peer, PEER)
    other = pipe(batch_size=2, num_inference_steps=6, generator=_gen(6), output_type="np").images
    assert np.abs(other - ours).max() > 1e-2  # the step noise comes from the pipeline's generator


# -- StableDiffusionPipeline: text-conditioned UNet, epsilon and v ------------------------------------------
def _sd_pipe(tok, prediction):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                    set_alpha_to_one=True, steps_offset=1, prediction_type=prediction)
    pipe = diffusers.StableDiffusionPipeline(vae=_vae(), text_encoder=_clip_text(tok), tokenizer=tok, unet=unet,
                                             scheduler=sched, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_stable_diffusion_pipeline(clip_tokenizer, prediction):
    pipe = _sd_pipe(clip_tokenizer, prediction)
    base = pipe.scheduler.config
    latents = torch.randn((1, 4, 8, 8), generator=_gen(7))
    kw = dict(prompt="red cube", negative_prompt="blur", height=16, width=16, num_inference_steps=6, guidance_scale=5.0,
              latents=latents, output_type="latent")
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++",
                                                                       final_sigmas_type="zero")
    peer = pipe(**kw).images
    _swap(pipe, solver="dpmpp_2m")  # grid=None: DPMSolverMultistepScheduler's own timesteps
    ours = pipe(**kw).images
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt("red cube", "cpu", 1, True, "blur")
        model = diffusers_model(pipe.unet, base)
        den = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=5.0),
                                {"cond": {"encoder_hidden_states": cond}, "uncond": {"encoder_hidden_states": uncond}})
        ref = sz.sample("dpmpp_2m", den, latents, pipe.scheduler._grid).x
    _close(ours, ref, GUIDED)
    _close(ours, peer, PEER)


# -- StableDiffusion3Pipeline: flow-matching MMDiT (two CLIP encoders, no T5) ---------------------------------
def test_stable_diffusion_3_pipeline(clip_tokenizer):
    torch.manual_seed(0)
    tr = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                         pooled_projection_dim=32, out_channels=4).eval()
    pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                              vae=_vae(), text_encoder=_clip_text(clip_tokenizer, True),
                                              tokenizer=clip_tokenizer, text_encoder_2=_clip_text(clip_tokenizer, True),
                                              tokenizer_2=clip_tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler.config
    latents = torch.randn((1, 4, 8, 8), generator=_gen(8))
    kw = dict(prompt="red cube", height=16, width=16, num_inference_steps=5, guidance_scale=4.0, latents=latents,
              output_type="latent", max_sequence_length=8)
    peer = pipe(**kw).images
    _swap(pipe, solver="euler")
    ours = pipe(**kw).images
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt("red cube", "red cube", "red cube", device="cpu",
                                                      do_classifier_free_guidance=True, max_sequence_length=8)
        den = sz.GuidedDenoiser(diffusers_model(tr, base), sz.get_guidance("cfg", scale=4.0),
                                {"cond": {"encoder_hidden_states": pe, "pooled_projections": pooled},
                                 "uncond": {"encoder_hidden_states": npe, "pooled_projections": npooled}})
        ref = sz.sample("euler", den, latents, pipe.scheduler._grid).x
    _close(ours, ref, GUIDED)
    _close(ours, peer, PEER)
    _swap(pipe, solver="dpmpp_3m", grid="flow_shift", grid_options={"shift": 1.0})  # a multistep zoo solver, zoo grid
    assert torch.isfinite(pipe(**kw).images).all()


# -- FluxPipeline: flow, dynamic shift (mu), packed latents -----------------------------------------------------
def test_flux_pipeline_dynamic_shift(clip_tokenizer):
    torch.manual_seed(0)
    tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                          pooled_projection_dim=16, axes_dims_rope=(4, 6, 6)).eval()
    torch.manual_seed(3)
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(clip_tokenizer), d_model=16, d_kv=8, d_ff=32,
                                                           num_layers=1, num_heads=2)).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=_vae(), text_encoder=_clip_text(clip_tokenizer),
                                  tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=clip_tokenizer, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 16, 16), generator=_gen(9))  # packed: (B, tokens, 4 * latent channels)
    kw = dict(prompt="red cube", height=16, width=16, num_inference_steps=5, latents=latents, output_type="latent",
              max_sequence_length=8)
    peer = pipe(**kw).images
    for solver, grid in (("euler", None), ("heun", "flow_shift")):
        _swap(pipe, solver=solver, grid=grid, grid_options={"shift": 1.0} if grid else None)
        ours = pipe(**kw).images
        with torch.no_grad():
            pe, pooled, txt_ids = pipe.encode_prompt("red cube", None, device="cpu", max_sequence_length=8)
            img_ids = pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
            cond = {"encoder_hidden_states": pe, "pooled_projections": pooled, "img_ids": img_ids, "txt_ids": txt_ids}
            ref = sz.sample(solver, diffusers_model(tr, sched.config).denoiser(cond), latents, pipe.scheduler._grid).x
        _close(ours, ref, GUIDED)  # FLUX's pipeline passes float32(1000 t) / 1000 as time: 1 ulp from the adapter's t
        if solver == "euler":
            _close(ours, peer, PEER)
            assert pipe.scheduler._grid[1] > 0.8  # mu shifted the grid (plain linspace would give 0.8)


# -- DiTPipeline: class-conditional DiT with learned sigma + VAE -------------------------------------------------
def test_dit_pipeline_class_conditional(tmp_path):
    torch.manual_seed(0)
    tr = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                         num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                         norm_num_groups=4).eval()
    vae = _vae()
    base = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    pipe = diffusers.DiTPipeline(transformer=tr, vae=vae, scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(class_labels=[1, 2], guidance_scale=4.0, num_inference_steps=5, output_type="np")
    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(base.config, final_sigmas_type="zero")
    peer = pipe(generator=_gen(4), **kw).images
    _swap(pipe, solver="unipc")
    ours = pipe(generator=_gen(4), **kw).images
    x = diffusers.utils.torch_utils.randn_tensor((2, 4, 8, 8), generator=_gen(4))
    with torch.no_grad():
        den = sz.GuidedDenoiser(diffusers_model(tr, base.config), sz.get_guidance("cfg", scale=4.0),
                                {"cond": {"class_labels": torch.tensor([1, 2])},
                                 "uncond": {"class_labels": torch.tensor([1000, 1000])}})
        z = sz.sample("unipc", den, x, pipe.scheduler._grid).x
        ref = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    _close(ours, ref, GUIDED)
    _close(ours, peer, PEER)
