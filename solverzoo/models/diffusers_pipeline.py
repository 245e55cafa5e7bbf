"""Any local diffusers pipeline folder as a solverzoo :class:`~solverzoo.backbone.Backbone`
(``solverzoo bench backbone=diffusers backbone.path=DIR``).

The folder is loaded with ``DiffusionPipeline.from_pretrained(DIR, local_files_only=True,
use_safetensors=True, trust_remote_code=False)`` after :func:`~solverzoo.models.safe_load.check_model_folder`
has refused custom code and pickle-only weights. Its network becomes a solverzoo Model through
:func:`solverzoo.models.adapters.diffusers_model` (prediction type and schedule from the
pipeline's scheduler config); its text encoders are used through the pipeline's own
``encode_prompt``, so conditioning and the *null* conditioning that classifier-free guidance
needs are exactly the pipeline family's (the embedding of the empty prompt, or SDXL's zeros where
its config forces them; DiT's null class). Every solver, grid, guidance method and cache of the
zoo then runs on it. Supported families: :data:`FAMILIES`.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from solverzoo.backbone import Backbone
from solverzoo.models.diffusers_world import DiffusersWorld, _fail, read_prompts

FAMILIES = {
    "StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3",
    "DiTPipeline": "dit", "DDPMPipeline": "unconditional", "DDIMPipeline": "unconditional",
}
"""Pipeline class (``model_index.json``'s ``_class_name``) -> family."""
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def pipeline_class(path: str) -> str:
    """The pipeline class a diffusers folder declares, with clear errors for a wrong folder."""
    if path is None:
        raise _fail("backbone=diffusers needs backbone.path=DIR: a local diffusers pipeline folder (the one holding "
                    "model_index.json, as written by pipe.save_pretrained or huggingface-cli download)")
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise _fail(f"backbone.path={path!r} does not exist; give a local diffusers pipeline folder")
    index = root / "model_index.json"
    if not root.is_dir() or not index.is_file():
        raise _fail(f"backbone.path={path!r} is not a diffusers pipeline folder (no model_index.json in it); give the "
                    "folder written by pipe.save_pretrained(DIR) or downloaded with huggingface-cli download")
    try:
        cls = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError) as exc:
        raise _fail(f"{index} is not a diffusers model index ({type(exc).__name__}: {exc})") from None
    if cls not in FAMILIES:
        raise _fail(f"backbone.path={path!r} holds a {cls}, which backbone=diffusers does not support yet; supported: "
                    f"{', '.join(sorted(FAMILIES))}")
    return cls


def load_pipeline(path: str, dtype: str = "float32", device: str = "cpu"):
    """The pipeline of a local folder (checked, safetensors only, no remote code), in ``dtype`` on ``device``."""
    cls = pipeline_class(path)
    if dtype not in DTYPES:
        raise _fail(f"backbone.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise _fail(f"device={device!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _fail(f"device={device} but this torch build ({torch.__version__}) sees no CUDA device; use device=cpu")
    from diffusers import DiffusionPipeline

    from solverzoo.models.safe_load import check_model_folder

    check_model_folder(path, what="diffusers pipeline folder")
    index = json.loads((Path(str(path)).expanduser() / "model_index.json").read_text())
    absent = {k: None for k, v in index.items() if not k.startswith("_") and v in ([None, None], None)}  # e.g. SD3 without T5
    with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; older ones know only torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = DiffusionPipeline.from_pretrained(str(Path(str(path)).expanduser()), local_files_only=True,
                                                 use_safetensors=True, trust_remote_code=False, torch_dtype=DTYPES[dtype],
                                                 **absent)
    if type(pipe).__name__ != cls:
        raise _fail(f"{path}: model_index.json names {cls} but diffusers built a {type(pipe).__name__}")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.to(torch.float32)  # decode in float32 whatever the network's dtype (the metrics see these images)
    return pipe


# -- conditioning, per family: (prompts -> cond of the prompts, cond of the null prompt (one row)) ----------
def _text_sd(pipe, prompts: list[str], device):
    pe, _ = pipe.encode_prompt(prompts, device, 1, False)
    _, ne = pipe.encode_prompt([""], device, 1, True, None)  # the pipeline's unconditional ("" prompt) embedding
    return {"encoder_hidden_states": pe}, {"encoder_hidden_states": ne}


def _text_sdxl(pipe, prompts: list[str], device):
    pe, ne, pp, npp = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=True)
    h, w = pipe._solverzoo_size
    proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else int(pp.shape[-1])
    ids = pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=pe.dtype, text_encoder_projection_dim=proj)
    cond = {"encoder_hidden_states": pe, "text_embeds": pp, "time_ids": ids.repeat(len(prompts), 1)}
    return cond, {"encoder_hidden_states": ne[:1], "text_embeds": npp[:1], "time_ids": ids}


def _text_sd3(pipe, prompts: list[str], device):
    pe, _, pp, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                      do_classifier_free_guidance=False)
    _, ne, _, npp = pipe.encode_prompt(prompt=[""], prompt_2=None, prompt_3=None, device=device,
                                       do_classifier_free_guidance=True)
    return {"encoder_hidden_states": pe, "pooled_projections": pp}, {"encoder_hidden_states": ne, "pooled_projections": npp}


def _labels_dit(pipe, prompts: list[str], device):
    labels = [int(p) if str(p).strip().lstrip("-").isdigit() else pipe.get_label_ids([str(p)])[0] for p in prompts]
    null = int(pipe.transformer.config.num_embeds_ada_norm)  # DiT's unconditional class
    return {"class_labels": torch.tensor(labels)}, {"class_labels": torch.tensor([null])}


def _unconditional(pipe, prompts: list[str], device):
    return {}, {}


ENCODERS: dict[str, Callable] = {"sd": _text_sd, "sdxl": _text_sdxl, "sd3": _text_sd3, "dit": _labels_dit,
                                 "unconditional": _unconditional}


class PipelineConditioner:
    """Prompts -> the pipeline's own conditioning (memoised per prompt, float32 on the CPU); ``null``
    is the pipeline family's unconditional input."""

    def __init__(self, pipe, family: str, device):
        self.pipe, self.family, self.device = pipe, family, device
        self._cache: dict = {}
        self._null: dict | None = None

    @torch.no_grad()
    def _fill(self, prompts: list) -> None:
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for i in range(0, len(new), 64):
            part = new[i:i + 64]
            cond, null = ENCODERS[self.family](self.pipe, part, self.device)
            for j, p in enumerate(part):
                self._cache[p] = {k: _host(v[j]) for k, v in cond.items()}
            if self._null is None:
                self._null = {k: _host(v[0]) for k, v in null.items()}

    def encode(self, prompts: Sequence) -> dict[str, Tensor]:
        prompts = list(prompts)
        self._fill(prompts)
        keys = self._cache[prompts[0]].keys() if prompts else ()
        return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in keys}

    def null(self, batch: int) -> dict[str, Tensor]:
        if self._null is None:
            self._fill([self._example()])
        return {k: v.expand(batch, *v.shape).clone() for k, v in self._null.items()}

    def _example(self):
        return "" if self.family != "dit" else "0"


def _host(v: Tensor) -> Tensor:
    return v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)


def _network(pipe, family: str):
    """(module, the Model from the shared adapter with a dtype-casting net)."""
    from solverzoo.models.adapters import diffusers_model

    module = pipe.unet if family in ("sd", "sdxl", "unconditional") else pipe.transformer
    model = diffusers_model(module, pipe.scheduler.config)
    inner, dtype = model.net, module.dtype

    def net(x, t, **cond):
        c = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        if family == "sdxl":  # SDXL's micro-conditioning goes in a nested dict
            c = {"encoder_hidden_states": c["encoder_hidden_states"],
                 "added_cond_kwargs": {"text_embeds": c["text_embeds"], "time_ids": c["time_ids"]}}
        return inner(x.to(dtype), t, **c).to(x.dtype)  # time stays float32 (the embedding upcasts it anyway)

    net.module = module  # caches find the block stack through it
    model.net = net
    return module, model


def _geometry(pipe, family: str, module, height: int | None, width: int | None) -> tuple[tuple[int, ...], int]:
    """(latent shape, pixels per latent) for the requested or the network's native size."""
    vsf = int(getattr(pipe, "vae_scale_factor", 0) or 0) if family != "unconditional" else 1
    if family == "dit":
        vsf = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    native = int(module.config.sample_size) * vsf
    h, w = int(height or native), int(width or native)
    multiple = vsf * int(getattr(module.config, "patch_size", None) or 1)
    if h % multiple or w % multiple:
        raise _fail(f"backbone.height/width = {h}x{w} must be multiples of {multiple} for this pipeline")
    return (int(module.config.in_channels), h // vsf, w // vsf), vsf


def _default_grid(schedule_cfg: dict, latent_shape, module, flow: bool) -> tuple[str, dict]:
    """The grid the pipeline's scheduler would use: flow shift (dynamic where configured) or its spacing."""
    if flow:
        shift = float(schedule_cfg.get("shift", 1.0))
        if schedule_cfg.get("use_dynamic_shifting"):
            patch = int(getattr(module.config, "patch_size", None) or 1)
            seq = (latent_shape[1] // patch) * (latent_shape[2] // patch)
            b0, b1 = schedule_cfg.get("base_image_seq_len", 256), schedule_cfg.get("max_image_seq_len", 4096)
            s0, s1 = schedule_cfg.get("base_shift", 0.5), schedule_cfg.get("max_shift", 1.15)
            shift = math.exp(s0 + (s1 - s0) * (seq - b0) / (b1 - b0))  # diffusers' mu, shift = e^mu
        return "flow_shift", {"shift": shift}
    spacing = schedule_cfg.get("timestep_spacing", "leading")
    if spacing == "leading":
        return "leading", {"steps_offset": int(schedule_cfg.get("steps_offset", 0))}
    return (spacing, {}) if spacing in ("trailing", "linspace") else ("leading", {})


def folder_sha(path: str) -> str:
    """A hash of the folder's weights, configs and tokenizer files (its identity: a fine-tune differs)."""
    from solverzoo.models.inception import file_sha

    root = Path(str(path)).expanduser()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES and ".git" not in p.parts):
        h.update(f"{f.relative_to(root)}\0{file_sha(f)}\n".encode())
    return h.hexdigest()[:16]


def _decoder(pipe, family: str, decode_batch: int):
    if family == "unconditional":
        return lambda z: z.float().clamp(-1, 1)
    from solverzoo.models.adapters import DiffusersVAE

    vae = DiffusersVAE(pipe.vae)

    @torch.no_grad()
    def decode(z: Tensor) -> Tensor:
        parts = [vae.from_latent(z[i:i + decode_batch].to(pipe.vae.device, torch.float32))
                 for i in range(0, len(z), decode_batch)]
        return torch.cat(parts).to(z.device).float().clamp(-1, 1)

    return decode


def _prompt_pool(pipe, family: str, prompts: str | None) -> tuple[list, str, str]:
    """(prompt pool, its source, conditioning kind)."""
    if family == "unconditional":
        return [""], "unconditional", "none"
    if family == "dit":
        if prompts is not None:
            return read_prompts(prompts)[0], str(prompts), "labels"
        labels = getattr(pipe, "labels", None) or {}
        if labels:
            return sorted(labels, key=lambda k: labels[k]), "the pipeline's id2label", "labels"
        n = int(pipe.transformer.config.num_embeds_ada_norm)
        return [str(i) for i in range(n)], f"class labels 0..{n - 1}", "labels"
    pool, source = read_prompts(prompts)
    return pool, source, "text"


def diffusers_backbone(device: str = "cpu", path: str | None = None, dtype: str = "float32", prompts: str | None = None,
                       clip: str | None = None, reference: str | None = None, inception_weights: str | None = None,
                       inception_resize: str = "tf1", height: int | None = None, width: int | None = None,
                       decode_batch: int = 8) -> Backbone:
    """The diffusers pipeline folder ``path`` as a :class:`Backbone` (see the module docstring;
    the options are ``backbone.<name>`` in ``solverzoo bench``)."""
    cls = pipeline_class(path)
    family = FAMILIES[cls]
    pipe = load_pipeline(path, dtype, device)
    module, model = _network(pipe, family)
    latent_shape, vsf = _geometry(pipe, family, module, height, width)
    pipe._solverzoo_size = (latent_shape[1] * vsf, latent_shape[2] * vsf)
    pool, source, kind = _prompt_pool(pipe, family, prompts)
    sample_shape = (int(getattr(module.config, "out_channels", 3)) if family == "unconditional" else 3,
                    latent_shape[1] * vsf, latent_shape[2] * vsf)
    world = DiffusersWorld(f"diffusers:{Path(str(path)).expanduser().resolve().name}", pool, source,
                           sample_shape=sample_shape, reference=reference, inception_weights=inception_weights,
                           inception_resize=inception_resize, clip=clip, conditioning=kind, device=device)
    grid, grid_options = _default_grid(dict(pipe.scheduler.config), latent_shape, module, model.prediction == "velocity")
    ident = {"folder": folder_sha(path), "class": cls, "dtype": dtype, "latent_shape": latent_shape, "world": world.identity()}
    card = (f"{cls} loaded from {path} ({dtype}); family {family}; network {type(module).__name__}; "
            f"prediction {model.prediction}; schedule {model.schedule.describe()}; prompts: {source}")
    return Backbone("diffusers", model, PipelineConditioner(pipe, family, device), latent_shape,
                    _decoder(pipe, family, int(decode_batch)), grid, grid_options, None, world=world, card=card,
                    artifact=str(path), weights_id=hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16])
