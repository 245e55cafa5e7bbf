"""Guidance by a degraded network: perturbed self-attention (PAG, SEG), skipped layers (SLG / STG),
self-attention-masked inputs (SAG) and a weaker model (autoguidance).

The perturbed branches use the conditional prompt and run in the same batched forward as CFG's
two branches; the network says where its blocks and self-attention are with a
:class:`solverzoo.perturb.PerturbSpec` (solverzoo's DiT declares its own; the diffusers
``DiTTransformer2DModel`` and ``SD3Transformer2DModel`` specs are below). With a perturbation
scale of 0 the perturbed branch is not evaluated at all, so the method is exactly CFG.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from solverzoo import Guidance, Model, Prediction, hookimpl
from solverzoo.perturb import (
    Perturbation,
    PerturbSpec,
    attention_map,
    gaussian_blur_tokens,
    identity_attention,
    perturbed,
    smoothed_attention,
)


# -- diffusers transformers -------------------------------------------------------------------
def _hidden(args: tuple, kwargs: dict):
    return args[0] if args else kwargs["hidden_states"]


def _hf_qkv(attn, args, kwargs):
    """Per-head q, k, v of a diffusers ``Attention`` used as self-attention (``attn1``)."""
    h = _hidden(args, kwargs)
    B, N, _ = h.shape
    q, k, v = (f(h).view(B, N, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    if getattr(attn, "norm_q", None) is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    return q, k, v


def _hf_project(attn, y, args, kwargs):
    B, H, N, d = y.shape
    out = attn.to_out[1](attn.to_out[0](y.transpose(1, 2).reshape(B, N, H * d).to(attn.to_q.weight.dtype)))
    if attn.residual_connection:
        out = out + _hidden(args, kwargs)
    return out / attn.rescale_output_factor


HF_DIT = PerturbSpec(
    "transformer_blocks", skip=lambda blk, a, k: _hidden(a, k), attention="attn1", qkv=_hf_qkv, project=_hf_project,
    name="DiTTransformer2DModel",
    description="diffusers DiTTransformer2DModel: .transformer_blocks, self-attention .attn1",
)
SD3 = PerturbSpec(
    "transformer_blocks",
    skip=lambda blk, a, k: (None if blk.context_pre_only else k["encoder_hidden_states"], k["hidden_states"]),
    name="SD3Transformer2DModel",
    description="diffusers SD3Transformer2DModel: .transformer_blocks (joint blocks; skipping only, as SD3.5's SLG)",
)
SPECS = {s.name: s for s in (HF_DIT, SD3)}
"""Specs for networks that carry none, by class name (handed to every perturbation below)."""


def _layers(layers):
    if layers == "middle" or layers is None:
        return layers
    if isinstance(layers, int):
        return (layers,)
    return tuple(int(i) for i in layers)


class _Perturbed(Guidance):
    """CFG plus a perturbed conditional branch: ``f_u + scale (f_c - f_u) + pscale (f_c - f_p)``
    (the formula of diffusers' PAG / SEG / SLG guiders); ``pscale = 0`` drops the perturbed branch,
    which makes the method CFG exactly. ``layers``: block indices, or ``"middle"`` (the middle block)."""

    sources = {"perturbed": "cond"}

    def _setup(self, scale: float, pscale: float, layers) -> None:
        self.scale = self.check_scale("scale", scale)
        self.layers = _layers(layers)
        self.branches = ("cond", "uncond", "perturbed") if pscale != 0.0 else ("cond", "uncond")

    def _perturbation(self) -> Perturbation:
        raise NotImplementedError

    def perturbation(self, branch):
        return self._perturbation() if branch == "perturbed" else None

    def combine(self, preds, x, t, alpha, sigma):
        c, u = preds["cond"], preds["uncond"]
        s, ps = self.scale, self._pscale()
        if "perturbed" not in preds:
            return Prediction(u.x0 + s * (c.x0 - u.x0), u.eps + s * (c.eps - u.eps))
        p = preds["perturbed"]
        return Prediction(u.x0 + s * (c.x0 - u.x0) + ps * (c.x0 - p.x0), u.eps + s * (c.eps - u.eps) + ps * (c.eps - p.eps))


class PAG(_Perturbed):
    """Perturbed-attention guidance — Ahn et al. 2024 ("Self-Rectifying Diffusion Sampling with
    Perturbed-Attention Guidance"): the perturbed branch replaces the self-attention map of ``layers``
    by the identity (each token's output is its own value)."""

    name = "pag"

    def __init__(self, scale: float = 4.0, pag_scale: float = 3.0, layers="middle"):
        self.pag_scale = self.check_scale("pag_scale", pag_scale)
        self._setup(scale, self.pag_scale, layers)

    def _pscale(self):
        return self.pag_scale

    def _perturbation(self):
        return Perturbation(self.layers, identity_attention, specs=SPECS, what="pag")


class SEG(_Perturbed):
    """Smoothed energy guidance — Hong 2024 ("Smoothed Energy Guidance: Guiding Diffusion Models with
    Reduced Energy Curvature of Attention"): the perturbed branch blurs the self-attention queries of
    ``layers`` over the token grid with a Gaussian of std ``blur_sigma`` (inf: the mean query)."""

    name = "seg"

    def __init__(self, scale: float = 4.0, seg_scale: float = 3.0, blur_sigma: float = math.inf, layers="middle"):
        self.seg_scale = self.check_scale("seg_scale", seg_scale)
        if not blur_sigma > 0:
            raise ValueError(f"seg: blur_sigma must be > 0 (inf: the mean query), got {blur_sigma!r}")
        self.blur_sigma = float(blur_sigma)
        self._setup(scale, self.seg_scale, layers)

    def _pscale(self):
        return self.seg_scale

    def _perturbation(self):
        return Perturbation(self.layers, smoothed_attention(self.blur_sigma), specs=SPECS, what="seg")


class SLG(_Perturbed):
    """Skip-layer guidance — SD3.5 (Stability AI 2024) / spatiotemporal skip guidance (Hyung et al.
    2024): the perturbed branch skips the blocks ``layers`` (each returns its input)."""

    name = "slg"

    def __init__(self, scale: float = 4.0, slg_scale: float = 2.8, layers="middle"):
        self.slg_scale = self.check_scale("slg_scale", slg_scale)
        self._setup(scale, self.slg_scale, layers)

    def _pscale(self):
        return self.slg_scale

    def _perturbation(self):
        return Perturbation(self.layers, None, specs=SPECS, what="slg")


def sag_mask(attn: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """SAG's mask (B, 1, H, W): tokens that receive more than the mean attention (summed over
    queries, averaged over heads), nearest-upsampled from the token grid to the latent size."""
    mass = attn.mean(dim=1).sum(dim=1)  # (B, N): attention each key receives
    h, w = grid
    m = (mass[:, :h * w] > 1.0).to(attn.dtype).reshape(-1, 1, h, w)
    return F.interpolate(m, size=size, mode="nearest")


class SAG(Guidance):
    """Self-attention guidance — Hong et al. 2023 ("Improving Sample Quality of Diffusion Models Using
    Self-Attention Guidance"): blur the unconditional x0 where the unconditional branch's
    self-attention (block ``layer``) concentrates, renoise it with the unconditional noise, evaluate
    the unconditional branch there, and add ``sag_scale (f_u - f_degraded)`` to CFG (in the noise
    prediction, as the paper). Three network evaluations per call; image-shaped states only."""

    name = "sag"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0, sag_scale: float = 0.75, blur_sigma: float = 1.0, layer: int | str = "middle"):
        self.scale = self.check_scale("scale", scale)
        self.sag_scale = self.check_scale("sag_scale", sag_scale)
        self.blur_sigma = self.check_scale("blur_sigma", blur_sigma)
        self.layer = _layers(layer)

    @property
    def evals_per_call(self) -> int:
        return 3

    def evaluate(self, den, x, t):
        if x.ndim != 4:
            raise ValueError(f"sag blurs image-shaped states (B, C, H, W); got {tuple(x.shape)}")
        seen = []
        record = lambda q, k, v, grid: seen.append((attention_map(q, k), grid))  # noqa: E731
        B = x.shape[0]
        with perturbed(den.model.net, Perturbation(self.layer, record, observe=True, specs=SPECS, what="sag"),
                       slice(B, 2 * B), 2 * B):
            preds = den.forward(x, t)
        if len(seen) != 1:
            raise ValueError(f"sag: expected one self-attention map from layer {self.layer!r}, got {len(seen)}; "
                             "pass one block index as layer")
        attn, grid = seen[0]
        u = preds["uncond"]
        mask = sag_mask(attn, grid, x.shape[-2:]).to(x.dtype)
        C, H, W = x.shape[1:]
        tok = u.x0.reshape(B, 1, C, H * W).transpose(-1, -2)  # blur the x0 image over its own H x W grid
        blurred = gaussian_blur_tokens(tok, (H, W), self.blur_sigma).transpose(-1, -2).reshape(x.shape)
        _, _, (alpha, sigma) = den.model.constants(t, x.dtype)
        x_deg = alpha * (blurred * mask + u.x0 * (1.0 - mask)) + sigma * u.eps
        preds["degraded"] = den.forward(x_deg, t, branches=("uncond",))["uncond"]
        return preds

    def combine(self, preds, x, t, alpha, sigma):
        c, u, d = preds["cond"], preds["uncond"], preds["degraded"]
        eps = u.eps + self.scale * (c.eps - u.eps) + self.sag_scale * (u.eps - d.eps)
        x0 = u.x0 + self.scale * (c.x0 - u.x0)
        if isinstance(alpha, float) and alpha == 0.0:
            return Prediction(x0, eps)  # x0 does not depend on eps where alpha = 0 (all noise)
        return Prediction(x0 - (sigma / alpha) * self.sag_scale * (u.eps - d.eps), eps)


class AutoGuidance(Guidance):
    """Autoguidance — Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself"):
    ``f_weak + scale (f_main - f_weak)``, both conditional, with ``weak`` a smaller or less trained
    version of the same model: a :class:`solverzoo.Model`, a ``.safetensors`` path or the name of a
    shipped DiT checkpoint (default ``shapes-dit-flow-weak``; the file must exist: train it with
    ``solverzoo train dit_flow artifact=shapes-dit-flow-weak steps=1000 net.hidden=64 net.depth=3``).
    Two network evaluations per call (main and weak)."""

    name = "autoguidance"
    branches = ("cond",)

    def __init__(self, scale: float = 2.0, weak="shapes-dit-flow-weak"):
        self.scale = self.check_scale("scale", scale)
        self._model = weak if isinstance(weak, Model) else None
        self._path = None if self._model is not None else _weak_path(weak)
        self.weak = getattr(weak, "name", type(weak).__name__) if self._model is not None else str(weak)

    @property
    def evals_per_call(self) -> int:
        return 2

    def weak_model(self, main: Model) -> Model:
        if self._model is None:
            self._model = _load_weak(self._path, main)
        return self._model

    def evaluate(self, den, x, t):
        preds = den.forward(x, t)
        preds["weak"] = den.forward(x, t, model=self.weak_model(den.model))["cond"]
        return preds

    def combine(self, preds, x, t, alpha, sigma):
        c, w = preds["cond"], preds["weak"]
        return Prediction(w.x0 + self.scale * (c.x0 - w.x0), w.eps + self.scale * (c.eps - w.eps))


def _weak_path(weak):
    from solverzoo.models import weights

    try:
        return weights.resolve(weak)
    except weights.WeightsError as exc:
        raise FileNotFoundError(
            f"autoguidance: the weak checkpoint {weak!r} is missing ({exc}). Train it (CPU, a few minutes) with "
            "`solverzoo train dit_flow artifact=shapes-dit-flow-weak steps=1000 net.hidden=64 net.depth=3`, or pass "
            "weak=<path to a .safetensors DiT> or weak=<a solverzoo.Model of the same parametrisation>") from None


def _load_weak(path, main: Model) -> Model:
    from solverzoo.models import weights
    from solverzoo.models.nets import DiT

    cfg = weights.read_meta(path).get("config", {})
    if "net" not in cfg:
        raise ValueError(f"autoguidance: {path} carries no DiT config in its metadata; pass weak=<a solverzoo.Model>")
    for key, have in (("prediction", main.prediction), ("time_input", None)):
        if have is not None and cfg.get(key, have) != have:
            raise ValueError(f"autoguidance: the weak checkpoint predicts {cfg[key]!r} but the guided model {have!r}; "
                             "train the weak model with the main model's config")
    ref = next(main.net.parameters(), None) if hasattr(main.net, "parameters") else None
    net = weights.load_into(DiT(**cfg["net"]), path)
    if ref is not None:
        net = net.to(device=ref.device, dtype=ref.dtype)
    return Model(net, main.prediction, main.schedule, main.time_input)


@hookimpl
def register_guidance(register):
    for cls in (PAG, SEG, SLG, SAG, AutoGuidance):
        register(cls, name=cls.name)


@hookimpl
def register_perturb_specs(register):
    for spec in SPECS.values():
        register(spec, name=spec.name)
