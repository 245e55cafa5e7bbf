"""Built-in time grids.

``leading``, ``linspace`` and ``trailing`` are the spacings of Lin et al. (2023, Table 2) as
diffusers defines them on a T-step discrete schedule (continuous schedules use a virtual
T = 1000); ``karras`` is EDM's rho-schedule (Karras et al., 2022); ``logsnr`` is uniform in
log-SNR (DPM-Solver, Lu et al., 2022); ``flow_shift`` is SD3's shifted uniform grid
(Esser et al., 2024); ``explicit`` takes a list of times. The ComfyUI / k-diffusion family
(``exponential``, ``polyexponential``, ``vp``, ``beta``, ``kl_optimal``, ``linear_quadratic``,
``simple``, ``sgm_uniform``, ``ddim_uniform``, ``laplace``, ``ays``) lives in
:mod:`solverzoo_builtin.grids_comfy`.

Sigma-space grids take ``space``: the noise coordinate their formula is written in (``"ve"``:
``sigma / alpha``; ``"flow"``: ``sigma / (alpha + sigma)``; ``"auto"``: flow on flow paths, VE
elsewhere), mapped onto any schedule through its own log-SNR inverse
(:func:`solverzoo.timegrid.times_of_sigmas`). Index-space grids (``leading``, ``simple``, ...) pick
training indices of a T-step discrete schedule, or of the virtual T = 1000 table of a continuous
one (``schedule.index_to_t``: index i is time ``(i + 1) / 1000`` of [t_zero, t_max], the table of
ComfyUI's flow models).
"""
from __future__ import annotations

import numpy as np
import torch

from solverzoo import hookimpl, time_grid
from solverzoo.timegrid import GridError, resolve_space, sigma_range, times_of_sigmas

_FINALS = ("zero", "none")


def _check_final(final: str) -> None:
    if final not in _FINALS:
        raise GridError(f"final must be one of {_FINALS}: 'zero' ends with a step to sigma = 0, "
                        "'none' ends at the last noise level")


def _from_indices(schedule, idx, name: str) -> torch.Tensor:
    idx = np.asarray(idx, dtype=np.float64).tolist() if isinstance(idx, np.ndarray) else [float(i) for i in idx]
    if len(set(idx)) != len(idx):  # (np.unique's sort costs more on a short grid)
        raise GridError(f"{name}: {len(idx)} steps do not fit on a {schedule.train_steps}-step schedule "
                        "without repeating a timestep; use fewer steps")
    idx.append(-1.0)  # final step to clean data
    return schedule.index_to_t(torch.tensor(idx, dtype=torch.float64))


@time_grid("leading")
def leading(schedule, steps, *, steps_offset: int = 0):
    """Leading spacing: ``t_i = i * (T // N) + offset`` (DDIM / Stable Diffusion 1.x default)."""
    T = schedule.train_steps
    ratio = T // steps
    if ratio == 0:
        raise GridError(f"leading: {steps} steps exceed the {T} training timesteps")
    if type(steps_offset) is int:  # the same integers, in Python (no numpy round trip on a short grid)
        return _from_indices(schedule, [i * ratio + steps_offset for i in range(steps - 1, -1, -1)], "leading")
    return _from_indices(schedule, (np.arange(steps) * ratio)[::-1] + steps_offset, "leading")


@time_grid("linspace")
def linspace(schedule, steps):
    """Linspace spacing: ``round(linspace(0, T - 1, N))`` reversed (with 1 step: start at T - 1)."""
    T = schedule.train_steps
    idx = np.linspace(0, T - 1, steps).round()[::-1] if steps > 1 else np.array([T - 1.0])
    return _from_indices(schedule, idx, "linspace")


@time_grid("trailing")
def trailing(schedule, steps):
    """Trailing spacing: ``round(arange(T, 0, -T / N)) - 1``; always starts at the last timestep."""
    T = schedule.train_steps
    return _from_indices(schedule, np.arange(T, 0, -T / steps).round()[:steps] - 1, "trailing")


def _finish(schedule, t: torch.Tensor, final: str) -> torch.Tensor:
    if final == "zero":
        t = torch.cat([t, torch.tensor([schedule.t_zero], dtype=torch.float64)])
    return t


def _sigma_range(schedule, sigma_min, sigma_max):
    smin = float(schedule.sigma_ve(torch.tensor(schedule.t_min, dtype=torch.float64))) if sigma_min is None else float(sigma_min)
    smax = float(schedule.sigma_ve(torch.tensor(schedule.t_max, dtype=torch.float64))) if sigma_max is None else float(sigma_max)
    smax = min(smax, 1e4)  # alpha(t_max) == 0 (zero terminal SNR, rectified flow): VE sigma is infinite
    if not 0 < smin < smax:
        raise GridError(f"need 0 < sigma_min < sigma_max, got sigma_min={smin:g}, sigma_max={smax:g}")
    return smin, smax


@time_grid("karras")
def karras(schedule, steps, *, sigma_min: float | None = None, sigma_max: float | None = None,
           rho: float = 7.0, final: str = "zero", space: str = "ve"):
    """Karras et al. (2022) rho-spaced sigmas between sigma_max and sigma_min (schedule's range by default).

    ``space="ve"`` (default) spaces VE sigmas; ``"flow"`` / ``"auto"`` space flow sigmas on flow
    paths, as ComfyUI's ``karras`` does for flow models."""
    _check_final(final)
    sp = resolve_space(schedule, space, "karras")
    smin, smax = sigma_range(schedule, sp, sigma_min, sigma_max, "karras")
    n = steps if final == "zero" else steps + 1
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    if sp == "ve":
        t = schedule.t_of_sigma_ve(sig)
        t[0] = min(float(t[0]), schedule.t_max)
    else:
        t = times_of_sigmas(schedule, sig, sp, "karras")
    return _finish(schedule, t, final)


@time_grid("logsnr")
def logsnr(schedule, steps, *, sigma_min: float | None = None, sigma_max: float | None = None, final: str = "zero"):
    """Uniform in log-SNR between sigma_max and sigma_min (DPM-Solver's 'logSNR' skip type)."""
    _check_final(final)
    smin, smax = _sigma_range(schedule, sigma_min, sigma_max)
    n = steps if final == "zero" else steps + 1
    lam = (torch.linspace(-np.log(smax), -np.log(smin), n, dtype=torch.float64) if n > 1
           else torch.tensor([-np.log(smax)], dtype=torch.float64))
    t = schedule.t_of_lam(lam)
    t[0] = min(float(t[0]), schedule.t_max)
    return _finish(schedule, t, final)


@time_grid("flow_shift")
def flow_shift(schedule, steps, *, shift: float = 3.0, final: str = "zero"):
    """Uniform grid warped by ``u -> shift u / (1 + (shift - 1) u)`` (SD3); shift = 1 is time-uniform."""
    _check_final(final)
    if not shift > 0:
        raise GridError(f"flow_shift: shift must be positive, got {shift!r}")
    span = schedule.t_max - schedule.t_zero
    w_end = 0.0 if final == "zero" else (schedule.t_min - schedule.t_zero) / span
    u_end = w_end / (shift - (shift - 1.0) * w_end)  # inverse warp, so the grid ends at t_min exactly
    u = torch.linspace(1.0, u_end, steps + 1, dtype=torch.float64)
    w = shift * u / (1.0 + (shift - 1.0) * u)
    return schedule.t_zero + w * span


@time_grid("explicit")
def explicit(schedule, steps, *, times: tuple = ()):
    """An explicit, user-given list of ``steps + 1`` decreasing times in the schedule's units."""
    if len(times) != steps + 1:
        raise GridError(f"explicit: got {len(times)} times for {steps} steps; give steps + 1 times, start to end")
    return torch.as_tensor(list(times), dtype=torch.float64)


@time_grid("optimised")
def optimised(schedule, steps, *, key: str = ""):
    """A grid optimised for one model, solver and step count (``solverzoo optimise-grid``), by key."""
    from solverzoo.saved_grids import grid_for

    if not key:
        raise GridError("optimised: pass key=NAME of a saved grid (e.g. grid: {name: optimised, key: gmm-dpmpp_2m-none}); "
                        "`solverzoo optimise-grid` makes them")
    return grid_for(schedule, steps, key)


@hookimpl
def register_grids(register):
    from solverzoo_builtin.grids_comfy import GRIDS

    for g in (leading, linspace, trailing, karras, logsnr, flow_shift, explicit, optimised, *GRIDS):
        register(g)
