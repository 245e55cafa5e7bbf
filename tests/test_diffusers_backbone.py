"""``backbone=diffusers``: a saved local diffusers pipeline folder as a benchmark backbone.

Tiny random pipelines are built from config dicts (a CLIP tokenizer from a 54-token vocabulary
written here: no download), saved with ``save_pretrained`` and loaded back by path. Checks:
the quick sweep runs end to end by path, with the converged-solve errors and every skipped
metric's reason in the records; guided DDIM on the backbone equals ``StableDiffusionPipeline`` with
its ``DDIMScheduler`` on the same initial latents (its own text encoding and empty-prompt CFG);
DiT's class names and null class; FID against a folder and an ``.npz`` with the self-contained
Inception; clear errors for every misuse."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional test dependency (pip install 'solverzoo[test]')")
transformers = pytest.importorskip("transformers")

import solverzoo as sz  # noqa: E402
from solverzoo.models.diffusers_pipeline import diffusers_backbone  # noqa: E402
from solverzoo.models.diffusers_world import DiffusersBackboneError, prompt_draw  # noqa: E402

MAX_TOKENS = 12


def _tokenizer(folder: Path):
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(letters)},
             **{c + "</w>": 28 + i for i, c in enumerate(letters)}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def _text_encoder(tok, projection: bool = False):
    cfg = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1, projection_dim=8)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(cfg).eval()


def _vae():
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                   norm_num_groups=4, layers_per_block=1, sample_size=16,
                                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def sd_path(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline (UNet with cross-attention, CLIP text encoder, VAE, DDIM), saved."""
    root = tmp_path_factory.mktemp("pipes")
    torch.manual_seed(0)
    tok = _tokenizer(root / "vocab")
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                    set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
    pipe = diffusers.StableDiffusionPipeline(unet=unet, vae=_vae(), text_encoder=_text_encoder(tok), tokenizer=tok,
                                             scheduler=sched, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(str(root / "sd"))
    return root / "sd"


@pytest.fixture(scope="module")
def dit_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipes")
    torch.manual_seed(1)
    tr = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                         num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=3, norm_num_groups=4)
    pipe = diffusers.DiTPipeline(transformer=tr, vae=_vae(), scheduler=diffusers.DDIMScheduler(),
                                 id2label={0: "cat", 1: "dog, puppy", 2: "owl"})
    pipe.save_pretrained(str(root / "dit"))
    index = root / "dit" / "model_index.json"  # the hub's DiT folders carry id2label here; save_pretrained drops it
    index.write_text(json.dumps({**json.loads(index.read_text()), "id2label": {"0": "cat", "1": "dog, puppy", "2": "owl"}}))
    return root / "dit"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))  # records store NaN as null


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "solverzoo.cli", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_quick_sweep_runs_on_a_saved_pipeline_by_path(sd_path, tmp_path):
    # (sweep.caches=[none]: the quick preset's teacache does not apply to a UNet, and which UNet cache does is
    # another test's business)
    out = _bench("backbone=diffusers", f"backbone.path={sd_path}", "sweep=quick", "sweep.n_samples=8", "sweep.caches=[none]",
                 "metrics.converged.steps=8", "progress=false", f"results_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "r" / "records").glob("*.json"))]
    assert len(records) == 4 and all(r["status"] == "ok" and r["backbone"] == "diffusers" for r in records)
    assert {r["solver"] for r in records} == {"euler", "dpmpp_2m"} and {r["steps"] for r in records} == {5, 10}
    for r in records:
        # the converged-solve errors need nothing but the model: always there
        assert np.isfinite(r["err_converged"]) and r["err_converged_ci_low"] <= r["err_converged"] <= r["err_converged_ci_high"]
        assert np.isfinite(r["psnr_converged"])
        # everything that cannot apply is skipped with its reason, in the record
        text = " | ".join(r["warnings"])
        assert _missing(r["fid"]) and "fid/kid skipped: FID / KID and fd_converged need Inception features" in text
        assert "backbone.inception_weights" in text and "torch-fidelity/releases" in text
        assert _missing(r["prompt_accuracy"]) and "prompt_accuracy skipped: " in text and "no prompt scorer" in text
        assert _missing(r["clip_score"]) and "clip_score skipped: no CLIP model" in text
        assert _missing(r["fd_converged"]) and "fd_converged: " in text
    # the ODE solvers land closer to the converged solve with more steps, on every (solver, grid)
    for s in ("euler", "dpmpp_2m"):
        e = {r["steps"]: r["err_converged"] for r in records if r["solver"] == s and r["grid"] == "leading"}
        assert e[10] < e[5], (s, e)
    assert "grid optimised key=diffusers-dpmpp_2m-cfg4 skipped" in out.stderr  # no saved grid for a user's model: said
    assert (tmp_path / "r" / "report" / "index.md").is_file()


@pytest.fixture(scope="module")
def sd_backbone(sd_path):
    return diffusers_backbone(path=str(sd_path))


@pytest.mark.parametrize("steps", [4, 7])
def test_guided_ddim_on_the_backbone_equals_the_stable_diffusion_pipeline(sd_path, sd_backbone, steps):
    """Same initial latents, prompts, scale and DDIM timesteps: the pipeline's latents (its own
    encode_prompt, its "" unconditional embedding, its CFG, its scheduler) equal the zoo's ddim on
    the backbone, to 1e-5 relative + 1e-5 absolute (float32 rounding of the same operations in another order;
    measured: at most 1.7e-5 absolute, 1.4e-6 relative, on latents of magnitude up to ~10)."""
    bb = sd_backbone
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_path), local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red fox", "two cats on a sofa"]
    x = torch.randn((2,) + bb.latent_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = pipe(prompts, num_inference_steps=steps, guidance_scale=3.0, latents=x.clone(), height=16, width=16,
                   output_type="latent").images
        grid = sz.get_grid(bb.default_grid)(bb.model.schedule, steps, **bb.default_grid_options)
        den = sz.GuidedDenoiser(bb.model, sz.get_guidance("cfg", scale=3.0), bb.conds(prompts))
        ours = sz.sample("ddim", den, x, grid).x
    assert bb.default_grid == "leading" and bb.default_grid_options == {"steps_offset": 1}
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_flow_euler_on_an_sd3_backbone_equals_the_sd3_pipeline(tmp_path):
    """SD3 (flow, two CLIP encoders, no T5: a folder saved without text_encoder_3): the pipeline's
    latents with FlowMatchEulerDiscreteScheduler (shift 3) and CFG equal the zoo's euler on the
    backbone over the scheduler's own sigmas, to 1e-5 (measured 7e-7)."""
    torch.manual_seed(0)
    tok = _tokenizer(tmp_path / "vocab")
    tr = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                         pooled_projection_dim=16, out_channels=4)
    pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                              vae=_vae(), text_encoder=_text_encoder(tok, True), tokenizer=tok,
                                              text_encoder_2=_text_encoder(tok, True), tokenizer_2=tok, text_encoder_3=None,
                                              tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp_path / "sd3"))
    bb = diffusers_backbone(path=str(tmp_path / "sd3"))
    assert bb.model.prediction == "velocity" and (bb.default_grid, bb.default_grid_options) == ("flow_shift", {"shift": 3.0})
    prompts = ["a red fox", "an owl"]
    x = torch.randn((2,) + bb.latent_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = pipe(prompts, num_inference_steps=6, guidance_scale=3.0, latents=x.clone(), height=16, width=16,
                   output_type="latent").images
        pipe.scheduler.set_timesteps(6)
        grid = sz.get_grid("explicit")(bb.model.schedule, 6, times=tuple(float(s) for s in pipe.scheduler.sigmas))
        den = sz.GuidedDenoiser(bb.model, sz.get_guidance("cfg", scale=3.0), bb.conds(prompts))
        ours = sz.sample("euler", den, x, grid).x
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_dit_pipeline_class_names_null_class_and_a_cache(dit_path):
    bb = diffusers_backbone(path=str(dit_path))
    pipe = diffusers.DiTPipeline.from_pretrained(str(dit_path), local_files_only=True, use_safetensors=True)
    assert bb.world.prompts(0, 3) == prompt_draw(sorted(pipe.labels, key=pipe.labels.get), 0, 3)
    conds = bb.conds(["owl", "puppy", "1"])
    assert conds["cond"]["class_labels"].tolist() == pipe.get_label_ids(["owl", "puppy"]) + [1]
    assert conds["uncond"]["class_labels"].tolist() == [3, 3, 3]  # num_embeds_ada_norm: DiT's null class
    x = torch.randn((3,) + bb.latent_shape, generator=torch.Generator().manual_seed(0))
    grid = sz.get_grid(bb.default_grid)(bb.model.schedule, 6, **bb.default_grid_options)
    den = sz.GuidedDenoiser(bb.model, sz.get_guidance("cfg", scale=2.0), conds)
    with torch.no_grad():
        plain = sz.sample("dpmpp_2m", den, x, grid).x
        # a cache that never skips (threshold 0) is the uncached network, bit for bit, through the backbone's wrapper
        cached = sz.sample("dpmpp_2m", den, x, grid, cache="teacache", cache_options={"threshold": 0.0}).x
    assert torch.equal(plain, cached) and bb.decode(plain).shape == (3, 3, 16, 16)
    assert "clip_score" in bb.world.not_applicable


def test_fid_against_a_folder_and_an_npz_with_the_inception_extractor(sd_path, tmp_path):
    from PIL import Image

    from solverzoo.bench.metrics import make_extractor
    from solverzoo.bench.reference_set import load_reference
    from solverzoo.models.inception import FIDInceptionV3

    weights = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), str(weights))
    folder = tmp_path / "real"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bb = diffusers_backbone(path=str(sd_path), reference=str(folder), inception_weights=str(weights))
    assert "fid" not in bb.world.not_applicable
    real = bb.world.reference(0, 100)
    assert real.shape == (3, 3, 16, 16) and real.min() >= -1 and real.max() <= 1  # at the decoded sample size
    mcfg = {"reference": {"kind": "world", "seed": 0, "n": 100}, "resize": None, "antialias": True}
    ex = make_extractor("domain", bb, mcfg)
    ref = load_reference(bb, mcfg, ex, tmp_path / "cache", n_prompts=4)
    feats = ex(real)
    assert ex.num_features == 2048 and ref.n == 3 and np.allclose(ref.mu, feats.numpy().mean(0))
    np.savez(tmp_path / "stats.npz", mu=ref.mu, sigma=ref.sigma, n=3)
    bb2 = diffusers_backbone(path=str(sd_path), reference=str(tmp_path / "stats.npz"), inception_weights=str(weights))
    ref2 = load_reference(bb2, mcfg, make_extractor("domain", bb2, mcfg), tmp_path / "cache", n_prompts=4)
    assert ref2.features is None and np.array_equal(ref2.mu, ref.mu) and np.array_equal(ref2.sigma, ref.sigma)
    assert bb2.weights_id != bb.weights_id  # another reference: other records


def test_clear_errors(sd_path, tmp_path):
    with pytest.raises(DiffusersBackboneError, match=r"needs backbone.path=DIR"):
        diffusers_backbone()
    with pytest.raises(DiffusersBackboneError, match=r"does not exist"):
        diffusers_backbone(path=str(tmp_path / "nope"))
    with pytest.raises(DiffusersBackboneError, match=r"not a diffusers pipeline folder \(no model_index.json"):
        diffusers_backbone(path=str(tmp_path))
    odd = tmp_path / "flux"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(DiffusersBackboneError, match=r"FluxPipeline.*does not support yet; supported: DDIMPipeline, "
                                                     r"DDPMPipeline, DiTPipeline, StableDiffusion3Pipeline"):
        diffusers_backbone(path=str(odd))
    with pytest.raises(DiffusersBackboneError, match=r"backbone.dtype='float8' is not one of float32, float16, bfloat16"):
        diffusers_backbone(path=str(sd_path), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(DiffusersBackboneError, match=r"device=cuda but .* sees no CUDA device; use device=cpu"):
            diffusers_backbone(path=str(sd_path), device="cuda")
    empty = tmp_path / "prompts.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(DiffusersBackboneError, match=r"holds no prompts"):
        diffusers_backbone(path=str(sd_path), prompts=str(empty))
    with pytest.raises(DiffusersBackboneError, match=r"inception_weights=.* is not a file.*download https://github.com"):
        diffusers_backbone(path=str(sd_path), inception_weights=str(tmp_path / "none.pth"))


def test_prompts_from_a_file_are_a_prefix_stable_draw(sd_path, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# mine\na cat\n\na dog\nan owl\n")
    bb = diffusers_backbone(path=str(sd_path), prompts=str(f))
    assert bb.world.prompts(3, 7)[:5] == bb.world.prompts(3, 5) and sorted(bb.world.prompts(3, 3)) == ["a cat", "a dog", "an owl"]
    assert bb.world.identity()["prompt_source"] == str(f)
