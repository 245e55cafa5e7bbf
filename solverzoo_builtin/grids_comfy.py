"""The ComfyUI / k-diffusion time grids, on every schedule.

Formulas follow k-diffusion 0.1.1 (``get_sigmas_exponential``, ``get_sigmas_polyexponential``,
``get_sigmas_vp``), ComfyUI's ``comfy/samplers.py`` schedulers (``simple``, ``sgm_uniform``,
``ddim_uniform``, ``beta``, ``linear_quadratic``, ``kl_optimal``), ComfyUI's ``get_sigmas_laplace``
and its Align Your Steps node. Each is written once, in float64, in the coordinate its formula uses:

* sigma-space grids take ``space`` (see :func:`solverzoo.timegrid.resolve_space`; ``"auto"``: the
  flow sigma on flow paths, the VE sigma elsewhere, as ComfyUI treats flow and epsilon models) and
  map to the schedule's time through its own log-SNR inverse;
* index-space grids pick indices of the schedule's training table (``schedule.index_to_t``; a
  continuous schedule has a virtual table of 1000 entries at times ``(i + 1) / 1000``, the table
  of ComfyUI's flow models).

Where ComfyUI would return a different number of steps than asked (``beta`` dropping repeated
indices, ``ddim_uniform``'s loop), these raise a :class:`~solverzoo.timegrid.GridError` or keep the
requested count, as documented on each: a zoo grid always has ``steps + 1`` times.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from solverzoo import time_grid
from solverzoo.timegrid import GridError, resolve_space, sigma_range, times_of_sigmas

_F64 = torch.float64


def _check_final(final: str, name: str) -> int:
    if final not in ("zero", "none"):
        raise GridError(f"{name}: final must be 'zero' (end with a step to sigma = 0) or 'none' (end at sigma_min)")
    return 0 if final == "zero" else 1


def _ramp(n: int, start: float, end: float) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=_F64) if n > 1 else torch.tensor([start], dtype=_F64)


def _sigma_grid(schedule, sig: torch.Tensor, space: str, final: str, name: str) -> torch.Tensor:
    """Times of the positive levels ``sig`` (in ``space``), plus ``t_zero`` for ``final="zero"``."""
    t = times_of_sigmas(schedule, sig, space, name)
    if final == "zero":
        t = torch.cat([t, torch.tensor([schedule.t_zero], dtype=_F64)])
    return t


def _index_grid(schedule, idx, name: str) -> torch.Tensor:
    """Times of training indices ``idx`` (noisy to clean) plus the final step to clean data."""
    idx = [float(i) for i in idx]
    T = schedule.train_steps
    if len(set(idx)) != len(idx):
        raise GridError(f"{name}: {len(idx)} steps repeat a timestep of the {T}-step table; use fewer steps")
    if min(idx) < 0 or max(idx) > T - 1:
        raise GridError(f"{name}: indices must lie in [0, {T - 1}], got [{min(idx):g}, {max(idx):g}]; use fewer steps")
    return schedule.index_to_t(torch.tensor(idx + [-1.0], dtype=_F64))


# -- sigma space ------------------------------------------------------------------------------
@time_grid("exponential")
def exponential(schedule, steps, *, sigma_min: float | None = None, sigma_max: float | None = None,
                space: str = "auto", final: str = "zero"):
    """Uniform in log sigma (k-diffusion ``get_sigmas_exponential``; in VE space, the same times as ``logsnr``)."""
    n = steps + _check_final(final, "exponential")
    sp = resolve_space(schedule, space, "exponential")
    smin, smax = sigma_range(schedule, sp, sigma_min, sigma_max, "exponential")
    return _sigma_grid(schedule, _ramp(n, math.log(smax), math.log(smin)).exp(), sp, final, "exponential")


@time_grid("polyexponential")
def polyexponential(schedule, steps, *, sigma_min: float | None = None, sigma_max: float | None = None,
                    rho: float = 1.0, space: str = "auto", final: str = "zero"):
    """Polynomial in log sigma: ``log s = log s_min + r^rho (log s_max - log s_min)``, r from 1 to 0
    (k-diffusion ``get_sigmas_polyexponential``; rho = 1 is ``exponential``)."""
    n = steps + _check_final(final, "polyexponential")
    if not rho > 0:
        raise GridError(f"polyexponential: rho must be positive, got {rho!r}")
    sp = resolve_space(schedule, space, "polyexponential")
    smin, smax = sigma_range(schedule, sp, sigma_min, sigma_max, "polyexponential")
    ramp = _ramp(n, 1.0, 0.0) ** rho
    sig = torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin))
    return _sigma_grid(schedule, sig, sp, final, "polyexponential")


@time_grid("vp")
def vp(schedule, steps, *, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, final: str = "zero"):
    """Uniform in the time of a continuous VP SDE (Song et al., 2021; k-diffusion ``get_sigmas_vp``):
    ``sigma_ve(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` for t from 1 to ``eps_s``, in VE
    sigma. On a schedule whose VE sigma_max is smaller (EDM's 80), t starts where that VP's sigma
    reaches it, so the grid starts at the schedule's top."""
    n = steps + _check_final(final, "vp")
    if not (beta_d > 0 and beta_min >= 0 and 0 < eps_s < 1):
        raise GridError(f"vp: need beta_d > 0, beta_min >= 0 and 0 < eps_s < 1, got {beta_d!r}, {beta_min!r}, {eps_s!r}")
    _, smax = sigma_range(schedule, "ve", name="vp")
    L = math.log1p(smax * smax)  # beta_d t^2 / 2 + beta_min t = log(1 + sigma^2): solve for t
    t_top = min(1.0, 2.0 * L / (math.sqrt(beta_min ** 2 + 2.0 * beta_d * L) + beta_min))
    if not t_top > eps_s:
        raise GridError(f"vp: the schedule's sigma_max {smax:g} lies below the VP sigma at eps_s={eps_s:g}; lower eps_s")
    t = _ramp(n, t_top, eps_s)
    sig = torch.sqrt(torch.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1)
    return _sigma_grid(schedule, sig, "ve", final, "vp")


@time_grid("kl_optimal")
def kl_optimal(schedule, steps, *, sigma_min: float | None = None, sigma_max: float | None = None,
               space: str = "auto", final: str = "zero"):
    """Uniform in ``atan(sigma)``: the KL-optimal schedule of "Beyond Fixed Step Sizes" / AUTOMATIC1111
    PR 15608 (ComfyUI ``kl_optimal``): ``sigma_i = tan((1 - i/(n-1)) atan s_max + i/(n-1) atan s_min)``."""
    n = steps + _check_final(final, "kl_optimal")
    sp = resolve_space(schedule, space, "kl_optimal")
    smin, smax = sigma_range(schedule, sp, sigma_min, sigma_max, "kl_optimal")
    w = torch.arange(n, dtype=_F64) / (n - 1) if n > 1 else torch.zeros(1, dtype=_F64)
    sig = torch.tan(w * math.atan(smin) + (1 - w) * math.atan(smax))
    return _sigma_grid(schedule, sig, sp, final, "kl_optimal")


@time_grid("laplace")
def laplace(schedule, steps, *, sigma_min: float | None = None, sigma_max: float | None = None,
            mu: float = 0.0, beta: float = 0.5, space: str = "ve", final: str = "zero"):
    """Laplace-distributed log-SNR (Hang et al., 2024, "Improved Noise Schedule for Diffusion Training";
    ComfyUI ``get_sigmas_laplace``): ``log sigma = mu - beta sign(1/2 - x) log(1 - 2|1/2 - x| + 1e-5)``,
    x uniform in [0, 1], clamped to [sigma_min, sigma_max]. Defined on log-SNR, so VE space by default."""
    n = steps + _check_final(final, "laplace")
    if not beta > 0:
        raise GridError(f"laplace: beta must be positive, got {beta!r}")
    sp = resolve_space(schedule, space, "laplace")
    smin, smax = sigma_range(schedule, sp, sigma_min, sigma_max, "laplace")
    x = _ramp(n, 0.0, 1.0)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return _sigma_grid(schedule, torch.exp(lmb).clamp(smin, smax), sp, final, "laplace")


@time_grid("linear_quadratic")
def linear_quadratic(schedule, steps, *, threshold_noise: float = 0.025, linear_steps: int | None = None,
                     space: str = "flow"):
    """Mochi's linear-then-quadratic schedule (Genmo 2024; ComfyUI ``linear_quadratic``): the first
    ``linear_steps`` (default steps // 2) fall linearly to ``1 - threshold_noise``, the rest follow a
    quadratic to 0, all as fractions of sigma_max. Ends at sigma = 0.

    Defined for flow models, so in flow sigma on every schedule by default; ComfyUI multiplies the
    fractions by a VP / VE model's VE sigma_max (``space="ve"``), which never visits small noise
    levels and does not converge as steps grow."""
    sp = resolve_space(schedule, space, "linear_quadratic")
    _, smax = sigma_range(schedule, sp, name="linear_quadratic")
    if steps == 1:
        frac = [1.0, 0.0]
    else:
        ls = steps // 2 if linear_steps is None else int(linear_steps)
        if not 0 < ls < steps:
            raise GridError(f"linear_quadratic: linear_steps must be in 1..{steps - 1}, got {linear_steps!r}")
        diff = ls - threshold_noise * steps
        qs = steps - ls
        qc = diff / (ls * qs ** 2)
        lc = threshold_noise / ls - 2 * diff / qs ** 2
        const = qc * ls ** 2
        sched = [i * threshold_noise / ls for i in range(ls)] + [qc * i ** 2 + lc * i + const for i in range(ls, steps)]
        frac = [1.0 - v for v in sched + [1.0]]
    return times_of_sigmas(schedule, torch.tensor(frac, dtype=_F64) * smax, sp, "linear_quadratic")


# Align Your Steps (Sabour, Fidler & Kreis, 2024): the published 10-step noise levels (VE sigmas) for
# Stable Diffusion 1.5, SDXL and Stable Video Diffusion, as given in NVIDIA's "How to use AYS" notes
# (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html) and ComfyUI's AlignYourStepsScheduler.
# These are ComfyUI's 10-digit values; NVIDIA's page and diffusers' AysSchedules round them to 3
# decimals and differ by up to 1.4% (SDXL: 0.113 vs 0.1114; SD1.5: 2.697 vs 2.6946).
AYS_SIGMAS = {
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def loglinear_interp(levels, num: int) -> np.ndarray:
    """AYS's log-linear interpolation of decreasing ``levels`` to ``num`` points (ends kept)."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


@time_grid("ays")
def ays(schedule, steps, *, model: str = "sd15"):
    """Align Your Steps (Sabour et al., 2024): the published table for ``model`` (``sd15``, ``sdxl``,
    ``svd``; VE sigmas), log-linearly interpolated to ``steps + 1`` levels, the last replaced by 0
    (as ComfyUI's node and NVIDIA's notes do)."""
    if model not in AYS_SIGMAS:
        raise GridError(f"ays: model must be one of {sorted(AYS_SIGMAS)}, got {model!r}")
    table = AYS_SIGMAS[model]
    sig = np.asarray(table, dtype=np.float64) if steps + 1 == len(table) else loglinear_interp(table, steps + 1)
    sig[-1] = 0.0
    _, smax = sigma_range(schedule, "ve", name="ays")
    if sig[0] > smax * (1 + 1e-6):
        raise GridError(f"ays: the {model!r} table starts at sigma {sig[0]:g}, above this schedule's sigma_max "
                        f"{smax:g}; use a table made for a model with this range (e.g. model='sd15')")
    return times_of_sigmas(schedule, torch.from_numpy(np.minimum(sig, smax)), "ve", "ays")


# -- index space ------------------------------------------------------------------------------
@time_grid("simple")
def simple(schedule, steps):
    """ComfyUI ``simple``: every (T / steps)-th entry of the training table from the top,
    ``i_x = T - 1 - floor(x T / steps)``."""
    T = schedule.train_steps
    ss = T / steps
    return _index_grid(schedule, [T - 1 - int(x * ss) for x in range(steps)], "simple")


@time_grid("sgm_uniform")
def sgm_uniform(schedule, steps):
    """ComfyUI ``sgm_uniform`` (Stability's SGM): ``steps`` indices uniform from T - 1 towards 0,
    ``linspace(T - 1, 0, steps + 1)[:-1]`` (fractional on a discrete table), then sigma = 0."""
    T = schedule.train_steps
    idx = torch.linspace(T - 1, 0, steps + 1, dtype=_F64)[:-1]
    return _index_grid(schedule, idx.tolist(), "sgm_uniform")


@time_grid("ddim_uniform")
def ddim_uniform(schedule, steps):
    """DDIM's uniform skip (Song et al., 2021; ComfyUI ``ddim_uniform``): indices ``1 + k c``,
    ``c = T // steps``, k = steps - 1 .. 0 (offset 0 where the 1 would leave the table, at steps = T).
    ComfyUI's loop adds one more index when ``c`` does not divide T - 1 evenly; this keeps exactly
    ``steps`` (ComfyUI's, without its noisiest)."""
    T = schedule.train_steps
    c = T // steps
    if c < 1:
        raise GridError(f"ddim_uniform: {steps} steps do not fit a {T}-step table; use at most {T}")
    offset = 1 if 1 + (steps - 1) * c <= T - 1 else 0
    return _index_grid(schedule, [offset + k * c for k in range(steps - 1, -1, -1)], "ddim_uniform")


@time_grid("beta")
def beta(schedule, steps, *, alpha: float = 0.6, beta: float = 0.6, variant: str = "comfyui", space: str = "auto"):
    """Beta-distributed timesteps (Lee et al., 2024, "Beta Sampling is All You Need").

    ``variant="comfyui"``: training indices ``rint(ppf(1 - x/steps) (T - 1))`` (ComfyUI ``beta``);
    where rounding repeats an index (ComfyUI then drops steps) the unrounded, fractional positions
    are used instead. ``variant="diffusers"``: sigmas
    ``s_min + ppf(1 - linspace(0, 1, steps)) (s_max - s_min)`` in ``space`` (diffusers'
    ``use_beta_sigmas``)."""
    from scipy.stats import beta as beta_dist

    if not (alpha > 0 and beta > 0):
        raise GridError(f"beta: alpha and beta must be positive, got {alpha!r}, {beta!r}")
    if variant == "comfyui":
        T = schedule.train_steps
        pos = beta_dist.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * (T - 1)
        idx = np.rint(pos)
        return _index_grid(schedule, (idx if len(np.unique(idx)) == steps else pos).tolist(), "beta")
    if variant != "diffusers":
        raise GridError(f"beta: variant must be 'comfyui' (training indices) or 'diffusers' (sigmas), got {variant!r}")
    sp = resolve_space(schedule, space, "beta")
    smin, smax = sigma_range(schedule, sp, name="beta")
    ppf = beta_dist.ppf(1 - np.linspace(0, 1, steps), alpha, beta) if steps > 1 else np.ones(1)
    sig = torch.tensor([smin + p * (smax - smin) for p in ppf], dtype=_F64)
    return _sigma_grid(schedule, sig, sp, "zero", "beta")


GRIDS = (exponential, polyexponential, vp, kl_optimal, laplace, linear_quadratic, ays, simple, sgm_uniform,
         ddim_uniform, beta)
