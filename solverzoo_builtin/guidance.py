"""Built-in guidance methods. Each combines the branch predictions of one batched forward."""
from __future__ import annotations

import math

import torch

from solverzoo import Guidance, Prediction, hookimpl
from solverzoo.prediction import from_x0


def _lerp(u: Prediction, c: Prediction, scale: float) -> Prediction:
    """``u + scale * (c - u)`` on both x0 and eps (consistent: the map is affine)."""
    return Prediction(u.x0 + scale * (c.x0 - u.x0), u.eps + scale * (c.eps - u.eps))


def _dims(x):
    return tuple(range(1, x.ndim))


class CFG(Guidance):
    """Classifier-free guidance — Ho & Salimans 2022: ``f(u) + scale * (f(c) - f(u))``."""

    name = "cfg"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0):
        self.scale = self.check_scale("scale", scale)

    def combine(self, preds, x, t, alpha, sigma):
        return _lerp(preds["uncond"], preds["cond"], self.scale)


class NegativePrompt(Guidance):
    """Negative prompt — ``f(p) + scale * (f(p) - f(neg))``: push away from a negative prompt."""

    name = "negative_prompt"
    branches = ("cond", "negative")

    def __init__(self, scale: float = 3.0):
        self.scale = self.check_scale("scale", scale)

    def combine(self, preds, x, t, alpha, sigma):
        return _lerp(preds["negative"], preds["cond"], 1.0 + self.scale)


class CFGRescale(Guidance):
    """CFG rescale — Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Sec. 3.4): rescale the guided x0 to the conditional prediction's per-sample std,
    mixing ``phi`` of the rescaled with ``1 - phi`` of plain CFG."""

    name = "cfg_rescale"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0, phi: float = 0.7):
        self.scale = self.check_scale("scale", scale)
        self.phi = self.check_scale("phi", phi)

    def combine(self, preds, x, t, alpha, sigma):
        g = _lerp(preds["uncond"], preds["cond"], self.scale)
        d = _dims(x)
        ratio = preds["cond"].x0.std(dim=d, keepdim=True) / g.x0.std(dim=d, keepdim=True).clamp_min(1e-12)
        x0 = self.phi * g.x0 * ratio + (1.0 - self.phi) * g.x0
        return from_x0(x0, x, alpha, sigma)


class IntervalCFG(Guidance):
    """Guidance interval — Kynkaanniemi et al. 2024 ("Applying Guidance in a Limited Interval
    Improves Sample and Distribution Quality"): CFG only while ``sigma_lo < sigma_ve <= sigma_hi``,
    the conditional prediction elsewhere (both branches are still evaluated in the batch)."""

    name = "interval"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0, sigma_lo: float = 0.28, sigma_hi: float = 5.42):
        self.scale = self.check_scale("scale", scale)
        self.sigma_lo = self.check_scale("sigma_lo", sigma_lo)
        self.sigma_hi = float(sigma_hi) if sigma_hi == math.inf else self.check_scale("sigma_hi", sigma_hi)

    def combine(self, preds, x, t, alpha, sigma):
        s = sigma / alpha  # a float in eager mode, a 0-dim tensor under torch.compile
        inside = (s > self.sigma_lo) & (s <= self.sigma_hi)
        on = float(inside) if isinstance(inside, bool) else inside.to(x.dtype)
        return _lerp(preds["cond"], _lerp(preds["uncond"], preds["cond"], self.scale), on)


class APG(Guidance):
    """Adaptive projected guidance — Sadat et al. 2024 ("Eliminating Oversaturation and Artifacts
    of High Guidance Scales"): split the x0 guidance update into parts parallel and orthogonal to
    the conditional x0, down-weight the parallel part by ``eta`` and cap the update's norm at
    ``norm_threshold`` (0 disables). Momentum is not used, so the wrapper stays stateless."""

    name = "apg"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0, eta: float = 0.0, norm_threshold: float = 0.0):
        self.scale = self.check_scale("scale", scale)
        self.eta = self.check_scale("eta", eta)
        self.norm_threshold = self.check_scale("norm_threshold", norm_threshold)

    def combine(self, preds, x, t, alpha, sigma):
        c, u = preds["cond"].x0, preds["uncond"].x0
        d = _dims(x)
        diff = c - u
        if self.norm_threshold > 0:
            norm = diff.norm(dim=d, keepdim=True)
            diff = diff * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        unit = c / c.norm(dim=d, keepdim=True).clamp_min(1e-12)
        par = (diff * unit).sum(dim=d, keepdim=True) * unit
        x0 = c + (self.scale - 1.0) * (diff - par + self.eta * par)
        return from_x0(x0, x, alpha, sigma)


class CFGZeroStar(Guidance):
    """CFG-Zero* — Fan et al. 2025: scale the unconditional branch by the optimised
    ``s* = <v_c, v_u> / ||v_u||^2`` (flow-frame velocities ``v = eps - x0``) before CFG, and
    zero the velocity while ``t >= zero_init_t`` (the paper's zero-init of the first steps)."""

    name = "cfg_zero_star"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0, zero_init_t: float = math.inf):
        self.scale = self.check_scale("scale", scale)
        self.zero_init_t = float(zero_init_t)

    def combine(self, preds, x, t, alpha, sigma):
        d = _dims(x)
        vc, vu = preds["cond"].velocity_flow(), preds["uncond"].velocity_flow()
        s_star = (vc * vu).sum(dim=d, keepdim=True) / (vu * vu).sum(dim=d, keepdim=True).clamp_min(1e-12)
        v = s_star * vu + self.scale * (vc - s_star * vu)
        y = x / (alpha + sigma)  # flow-frame state, u = sigma / (alpha + sigma)
        u = sigma / (alpha + sigma)
        if self.zero_init_t != math.inf:
            v = v * (torch.as_tensor(t) < self.zero_init_t).to(v.dtype)
        return Prediction(x0=y - u * v, eps=y + (1.0 - u) * v)


@hookimpl
def register_guidance(register):
    for cls in (CFG, NegativePrompt, CFGRescale, IntervalCFG, APG, CFGZeroStar):
        register(cls, name=cls.name)
