"""Adapters that turn diffusers models into solverzoo Models.

The prediction type and the noise schedule come from the diffusers *scheduler config* the model
was trained with (``prediction_type``, betas, ``rescale_betas_zero_snr``; flow-matching configs
give a rectified-flow path with ``velocity = noise - x0`` and time input ``1000 * sigma``).
Real weights load with the usual ``from_pretrained`` (a local folder, or a hub id where the
network allows); tests build tiny random models from config dicts.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from solverzoo.model import Model
from solverzoo.registry import registry

_PRED = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}


def schedule_from_config(config):
    """(schedule, prediction type, time input) from a diffusers scheduler or its config."""
    cls = type(config).__name__ if hasattr(config, "config") else ""
    cfg = dict(config.config if hasattr(config, "config") else config)
    cls = cfg.get("_class_name", cls)
    flow_keys = {"shift", "use_dynamic_shifting"} <= set(cfg)  # FlowMatch* scheduler configs
    if "FlowMatch" in cls or flow_keys or cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        # diffusers applies `shift` to the inference sigmas, not to training: the path is plain RF
        return registry.get("schedule", "flow")(), "velocity", "t1000"
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in _PRED:
        raise ValueError(f"unsupported diffusers prediction_type {pred!r}; supported: {sorted(_PRED)}")
    bs = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
        sched = registry.get("schedule", "ddpm")(alphas_cumprod=torch.cumprod(1 - betas, 0),
                                                 rescale_zero_terminal_snr=bool(cfg.get("rescale_betas_zero_snr")))
    else:
        if bs not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"unsupported diffusers beta_schedule {bs!r}")
        sched = registry.get("schedule", "ddpm")(
            beta_schedule="cosine" if bs == "squaredcos_cap_v2" else bs, beta_start=cfg.get("beta_start", 1e-4),
            beta_end=cfg.get("beta_end", 0.02), num_train_timesteps=cfg.get("num_train_timesteps", 1000),
            rescale_zero_terminal_snr=bool(cfg.get("rescale_betas_zero_snr", False)))
    return sched, _PRED[pred], "t"


def _first_half_if_learned_sigma(out: Tensor, x: Tensor) -> Tensor:
    return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out


def diffusers_model(module, scheduler_config) -> Model:
    """Wrap a diffusers UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel,
    SD3Transformer2DModel or FluxTransformer2DModel as a :class:`Model`.

    Conditioning keys (pass them through the denoiser's ``cond`` / guidance branches):
    UNet2DConditionModel ``encoder_hidden_states``; DiT ``class_labels``; SD3
    ``encoder_hidden_states``, ``pooled_projections``; FLUX ``encoder_hidden_states``,
    ``pooled_projections``, ``img_ids``, ``txt_ids`` (and ``guidance`` for guidance-distilled
    checkpoints), with ``x`` the packed latent tokens.
    """
    schedule, prediction, time_input = schedule_from_config(scheduler_config)
    name = type(module).__name__

    if name in ("UNet2DModel", "UNet2DConditionModel"):
        def net(x, t, **cond):
            return module(x, t, **cond).sample
    elif name == "DiTTransformer2DModel":
        def net(x, t, class_labels=None):
            labels = class_labels
            if labels is None:
                raise ValueError("DiT needs class_labels (its null label is num_embeds_ada_norm)")
            return _first_half_if_learned_sigma(module(x, timestep=t, class_labels=labels).sample, x)
    elif name == "SD3Transformer2DModel":
        def net(x, t, encoder_hidden_states=None, pooled_projections=None):
            return module(hidden_states=x, timestep=t, encoder_hidden_states=encoder_hidden_states,
                          pooled_projections=pooled_projections).sample
    elif name == "FluxTransformer2DModel":
        time_input = "t"  # FLUX takes sigma in [0, 1] (its pipeline passes timestep / 1000)

        def net(x, t, encoder_hidden_states=None, pooled_projections=None, img_ids=None, txt_ids=None, guidance=None):
            return module(hidden_states=x, timestep=t, encoder_hidden_states=encoder_hidden_states,
                          pooled_projections=pooled_projections, img_ids=img_ids[0] if img_ids.ndim == 3 else img_ids,
                          txt_ids=txt_ids[0] if txt_ids.ndim == 3 else txt_ids, guidance=guidance).sample
    else:
        raise TypeError(f"no solverzoo adapter for {name}; supported: UNet2DModel, UNet2DConditionModel, "
                        "DiTTransformer2DModel, SD3Transformer2DModel, FluxTransformer2DModel")
    net.module = module  # caches find the transformer's block stack through it
    return Model(net, prediction, schedule, time_input=time_input)


class DiffusersVAE:
    """An AutoencoderKL with its scaling (and shift) factor: ``to_latent`` / ``from_latent``."""

    def __init__(self, vae):
        self.vae = vae
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    @torch.no_grad()
    def to_latent(self, x: Tensor) -> Tensor:
        return (self.vae.encode(x).latent_dist.mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def from_latent(self, z: Tensor) -> Tensor:
        return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample


def load_pretrained(kind: str, path: str, subfolder: str | None = None, **kwargs):
    """``from_pretrained`` of a diffusers class by name, from a local folder or hub id, with a
    clear error when it cannot be had offline. Never runs code from the model: a local folder with
    custom code or pickle-only weights is refused before loading, weights load from safetensors
    only and ``trust_remote_code`` is off."""
    import diffusers

    from solverzoo.models.safe_load import HF_SAFE_KWARGS, UnsafeFileError, check_model_folder

    cls = getattr(diffusers, kind, None)
    if cls is None:
        raise ValueError(f"diffusers has no class {kind!r}")
    unsafe = {k: v for k, v in kwargs.items()
              if (k in ("custom_pipeline", "trust_remote_code") and v) or (k == "use_safetensors" and v is False)}
    if unsafe:
        raise UnsafeFileError(f"load_pretrained refuses {unsafe} (it would load code or pickled weights); "
                              "use a standard diffusers model with safetensors weights")
    if os.path.isdir(path):
        check_model_folder(path, what=f"diffusers {kind} folder")
    kwargs.update(use_safetensors=True, **HF_SAFE_KWARGS)
    try:
        return cls.from_pretrained(path, subfolder=subfolder, **kwargs)
    except OSError as exc:
        raise FileNotFoundError(f"could not load {kind} from {path!r}: {exc}. Pass a local folder holding the "
                                "model (download it once with `huggingface-cli download`), or allow network access") from exc
