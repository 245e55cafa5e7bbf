"""Built-in guidance methods. Each combines the branch predictions of one batched forward."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from solverzoo import Guidance, Prediction, hookimpl
from solverzoo.guidance import RenoisedPrediction
from solverzoo.prediction import from_x0


def _lerp(u: Prediction, c: Prediction, scale: float) -> Prediction:
    """``u + scale * (c - u)`` on both x0 and eps (consistent: the map is affine)."""
    return Prediction(u.x0 + scale * (c.x0 - u.x0), u.eps + scale * (c.eps - u.eps))


def _dims(x):
    return tuple(range(1, x.ndim))


def _norm(x):
    """Per-sample L2 norm over every non-batch dim, keepdim (``Tensor.norm`` takes at most 2 dims)."""
    return torch.linalg.vector_norm(x, dim=_dims(x), keepdim=True)


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
        # a float in eager mode (inf where alpha = 0, the start of a flow schedule), a 0-dim tensor under torch.compile
        s = (math.inf if alpha == 0.0 else sigma / alpha) if isinstance(alpha, float) else sigma / alpha
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
            norm = _norm(diff)
            diff = diff * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        unit = c / _norm(c).clamp_min(1e-12)
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


class CFGpp(Guidance):
    """CFG++ — Chung et al. 2024 ("CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
    Models"): the guided data estimate ``x0_u + scale (x0_c - x0_u)`` (the paper's lambda, typically in
    [0, 1]) renoised with the *unconditional* noise, so DDIM's step is ``alpha' x0_lambda + sigma' eps_u``.

    It returns a :class:`~solverzoo.guidance.RenoisedPrediction` and sets ``renoise``: only solvers that
    declare ``renoise = True`` run it (the DDIM / Euler family, Runge-Kutta solvers of the kit); any
    other solver raises instead of sampling something else. In a solver that continues from the
    renoised state, every step starts from ``alpha x0_lambda + sigma eps_u``: the paper's DDIM update
    for ddim and euler (any frame), ComfyUI's ``euler_ancestral_cfg_pp`` for euler_ancestral."""

    name = "cfg_pp"
    branches = ("cond", "uncond")
    renoise = True

    def __init__(self, scale: float = 0.6):
        self.scale = self.check_scale("scale", scale)

    def combine(self, preds, x, t, alpha, sigma):
        u, c = preds["uncond"], preds["cond"]
        x0 = u.x0 + self.scale * (c.x0 - u.x0)
        eps = u.eps
        return RenoisedPrediction(x0, eps, alpha * x0 + sigma * eps)


# -- methods that combine non-linearly, in a chosen prediction space ------------------------------
SPACES = ("velocity", "eps", "x0")


def _space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"guidance option space={space!r} must be one of {SPACES} (the prediction the formula acts on: "
                         "'velocity' the flow-frame eps - x0, finite at every noise level; 'eps' as diffusers on epsilon models)")
    return space


def _get(p: Prediction, space: str):
    return p.velocity_flow() if space == "velocity" else p.eps if space == "eps" else p.x0


def _back(space: str, out, x, alpha, sigma) -> Prediction:
    """The prediction consistent at ``x`` whose ``space`` component is ``out``."""
    if space == "x0":
        return from_x0(out, x, alpha, sigma)
    if space == "eps":
        if isinstance(alpha, float) and alpha == 0.0:
            raise ValueError("space='eps' cannot give x0 where alpha = 0 (the start of a flow schedule); use space='velocity'")
        return Prediction(x0=(x - sigma * out) / alpha, eps=out)
    y, u = x / (alpha + sigma), sigma / (alpha + sigma)
    return Prediction(x0=y - u * out, eps=y + (1.0 - u) * out)


class TCFG(Guidance):
    """Tangential CFG — Kwon et al. 2025 ("TCFG: Tangential Damping Classifier-free Guidance"): per
    sample, stack ``[f_c; f_u]`` as a 2 x D matrix, keep only the unconditional prediction's component
    along the first right singular vector (damping its tangential part), then
    ``f_u' + scale (f_c - f_u')``. ``space``: the prediction ``f`` it acts on (see ``SPACES``)."""

    name = "tcfg"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 4.0, space: str = "velocity"):
        self.scale = self.check_scale("scale", scale)
        self.space = _space(space)

    def combine(self, preds, x, t, alpha, sigma):
        c, u = _get(preds["cond"], self.space), _get(preds["uncond"], self.space)
        m = torch.stack([c.flatten(1), u.flatten(1)], dim=1)  # (B, 2, D)
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        v1 = vh[:, :1]  # (B, 1, D): the first right singular vector
        u_par = ((u.flatten(1)[:, None] @ v1.transpose(1, 2)) @ v1).reshape(u.shape)
        return _back(self.space, u_par + self.scale * (c - u_par), x, alpha, sigma)


def _blur5(x):
    """The 5x5 binomial blur ([1, 4, 6, 4, 1] / 16 each way) with reflected borders."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    ch = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(ch, 1, 1, 5), groups=ch)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(ch, 1, 5, 1), groups=ch)


def _down(x):
    return F.interpolate(_blur5(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def _up(x):
    return _blur5(F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False))


def laplacian_pyramid(x, levels: int) -> list:
    """Band-pass levels, finest first, and the low-pass residual last (Burt & Adelson 1983):
    ``g_0 = x``, ``g_{i+1} = down(g_i)``, ``L_i = g_i - up(g_{i+1})``; :func:`from_pyramid` inverts it exactly."""
    g = [x]
    for _ in range(levels - 1):
        g.append(_down(g[-1]))
    return [g[i] - _up(g[i + 1]) for i in range(levels - 1)] + [g[-1]]


def from_pyramid(levels: list):
    out = levels[-1]
    for band in reversed(levels[:-1]):
        out = _up(out) + band
    return out


class FDG(Guidance):
    """Frequency-decoupled guidance — Sadat et al. 2025 ("Guidance in the Frequency Domain Enables
    High-Fidelity Sampling at Low CFG Scales"): CFG with its own scale on each level of a Laplacian
    pyramid of the predictions (``scales`` from the finest level to the low-pass residual), each
    level's update optionally with its part parallel to the conditional level weighted by
    ``parallel_weights`` (1: plain CFG), then the inverse transform. Needs image-shaped states
    (B, C, H, W) with H and W divisible by 2^(levels-1)."""

    name = "fdg"
    branches = ("cond", "uncond")

    def __init__(self, scales: tuple = (10.0, 5.0), parallel_weights: tuple | None = None, space: str = "velocity"):
        self.scales = tuple(self.check_scale("scales", s) for s in scales)
        if not self.scales:
            raise ValueError("fdg: scales needs one scale per pyramid level (at least one)")
        pw = (1.0,) * len(self.scales) if parallel_weights is None else tuple(parallel_weights)
        if len(pw) != len(self.scales):
            raise ValueError(f"fdg: {len(pw)} parallel_weights for {len(self.scales)} scales; give one per level")
        self.parallel_weights = tuple(self.check_scale("parallel_weights", w) for w in pw)
        self.space = _space(space)

    def combine(self, preds, x, t, alpha, sigma):
        n = len(self.scales)
        if x.ndim != 4 or x.shape[-1] % 2 ** (n - 1) or x.shape[-2] % 2 ** (n - 1):
            raise ValueError(f"fdg needs image-shaped states (B, C, H, W) with H, W divisible by {2 ** (n - 1)} "
                             f"for {n} levels; got {tuple(x.shape)}")
        pc = laplacian_pyramid(_get(preds["cond"], self.space), n)
        pu = laplacian_pyramid(_get(preds["uncond"], self.space), n)
        out = []
        for c, u, s, w in zip(pc, pu, self.scales, self.parallel_weights):
            shift = c - u
            if w != 1.0:
                unit = c / _norm(c).clamp_min(1e-12)
                par = (shift * unit).sum(dim=_dims(c), keepdim=True) * unit
                shift = shift - par + w * par
            out.append(u + s * shift)
        return _back(self.space, from_pyramid(out), x, alpha, sigma)


class MamboG(Guidance):
    """MAMBO-G — magnitude-aware mitigation for boosted guidance (arXiv 2508.03442): CFG whose scale
    falls with the relative size of the update, ``1 + (scale - 1) exp(-alpha ||f_c - f_u|| / ||f_u||)``
    per sample."""

    name = "mambo_g"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 10.0, alpha: float = 8.0, space: str = "velocity"):
        self.scale = self.check_scale("scale", scale)
        self.alpha = self.check_scale("alpha", alpha)
        self.space = _space(space)

    def combine(self, preds, x, t, alpha, sigma):
        c, u = _get(preds["cond"], self.space), _get(preds["uncond"], self.space)
        ratio = _norm(c - u) / _norm(u).clamp_min(1e-12)
        w = 1.0 + (self.scale - 1.0) * torch.exp(-self.alpha * ratio)
        return _back(self.space, u + w * (c - u), x, alpha, sigma)


class PerpNeg(Guidance):
    """Perp-Neg — Armandpour et al. 2023 ("Re-imagine the Negative Prompt Algorithm"): CFG plus a
    negative prompt whose update keeps only its part perpendicular to the positive one,
    ``f_u + scale (d_c - neg_scale d_n_perp)`` with ``d = f - f_u`` and
    ``d_n_perp = d_n - (<d_n, d_c> / ||d_c||^2) d_c`` per sample. The differences are proportional
    in every prediction space, so the projection is taken once and applied to x0 and eps alike."""

    name = "perp_neg"
    branches = ("cond", "uncond", "negative")

    def __init__(self, scale: float = 4.0, neg_scale: float = 1.0):
        self.scale = self.check_scale("scale", scale)
        self.neg_scale = self.check_scale("neg_scale", neg_scale)

    def combine(self, preds, x, t, alpha, sigma):
        c, u, n = preds["cond"], preds["uncond"], preds["negative"]
        vc, vn = c.velocity_flow() - u.velocity_flow(), n.velocity_flow() - u.velocity_flow()
        d = _dims(x)
        k = (vn * vc).sum(dim=d, keepdim=True) / (vc * vc).sum(dim=d, keepdim=True).clamp_min(1e-30)

        def mix(f):
            dc, dn = f(c) - f(u), f(n) - f(u)
            return f(u) + self.scale * (dc - self.neg_scale * (dn - k * dc))

        return Prediction(mix(lambda p: p.x0), mix(lambda p: p.eps))


@hookimpl
def register_guidance(register):
    for cls in (CFG, NegativePrompt, CFGRescale, IntervalCFG, APG, CFGZeroStar, CFGpp, TCFG, FDG, MamboG, PerpNeg):
        register(cls, name=cls.name)
