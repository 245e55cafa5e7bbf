"""Noise schedules: the path ``x_t = alpha(t) * x0 + sigma(t) * eps``.

Every schedule is a small object that maps its own time variable ``t`` to ``alpha``, ``sigma``
and their time derivatives. Everything else (log-SNR ``lambda = log(alpha / sigma)``, its
inverse, the VE sigma ``sigma / alpha``) is derived here once, so solvers and grids never
re-implement a parametrisation conversion.

Time runs from ``t_zero`` (clean data, ``sigma == 0``) up to ``t_max`` (the noisiest point);
``t_min`` is the smallest noise level a grid normally stops at before the final jump to
``t_zero``.
"""
from __future__ import annotations

import torch
from torch import Tensor


class NoiseSchedule:
    """Base class of every schedule. Subclasses implement :meth:`alpha_sigma` and
    :meth:`alpha_sigma_dot`; the rest is derived.

    Attributes:
        name: registry name of the schedule family.
        t_zero: time of clean data (sigma == 0).
        t_min: smallest positive noise level a grid usually visits.
        t_max: noisiest time.
        discrete_steps: number of training timesteps for discrete-time schedules, else None.
    """

    name: str = "schedule"
    t_zero: float = 0.0
    t_min: float = 1e-3
    t_max: float = 1.0
    discrete_steps: int | None = None

    # -- to implement ---------------------------------------------------------------------
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(alpha(t), sigma(t))`` elementwise."""
        raise NotImplementedError

    def alpha_sigma_dot(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(d alpha / dt, d sigma / dt)`` elementwise."""
        raise NotImplementedError

    # -- derived --------------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(t)[0]

    def sigma(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(t)[1]

    def lam(self, t: Tensor) -> Tensor:
        """Half log-SNR ``lambda(t) = log(alpha / sigma)`` (DPM-Solver's lambda)."""
        a, s = self.alpha_sigma(t)
        return torch.log(a) - torch.log(s)

    def sigma_ve(self, t: Tensor) -> Tensor:
        """The variance-exploding sigma ``sigma / alpha`` (k-diffusion's and EDM's sigma)."""
        a, s = self.alpha_sigma(t)
        return s / a

    def t_of_lam(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`lam`. The default bisects (the log-SNR is monotone in t);
        subclasses with a closed form override it."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.full_like(lam, self.t_zero)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            go_up = self.lam(mid) > lam  # lambda decreases with t
            lo = torch.where(go_up, mid, lo)
            hi = torch.where(go_up, hi, mid)
        return 0.5 * (lo + hi)

    def t_of_sigma_ve(self, sigma_ve: Tensor) -> Tensor:
        sigma_ve = torch.as_tensor(sigma_ve, dtype=torch.float64)
        t = self.t_of_lam(-torch.log(sigma_ve))
        return torch.where(sigma_ve == 0, torch.full_like(t, self.t_zero), t)

    def index_to_t(self, index: Tensor) -> Tensor:
        """Map a virtual training index in ``[-1, T - 1]`` (T = 1000 for continuous
        schedules) onto this schedule's time axis; -1 is clean data. Used by the
        diffusers-style spacings (leading, linspace, trailing)."""
        if self.discrete_steps is not None:
            return index.to(torch.float64)
        return self.t_zero + (index.to(torch.float64) + 1) / 1000.0 * (self.t_max - self.t_zero)

    # -- host fast paths for plans (optional overrides) -------------------------------------
    # Plans evaluate the schedule on the host in float64. These three hooks batch that work; each
    # must return exactly (bit for bit) what its documented reference computes, so an override
    # may only change the cost. The defaults are the references themselves.
    def _alpha_sigma_host(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha_sigma`` on the 1-D float64 CPU tensor ``t`` (the reference itself by default)."""
        return self.alpha_sigma(t)

    def _alpha_sigma_points(self, ts: list[float]) -> tuple[list[float], list[float]]:
        """``alpha_sigma`` at each time of ``ts`` called on its own 0-d float64 tensor, as floats.
        (Elementwise torch kernels may round differently inside a vector than on a scalar, so a
        batched override must be checked against this.)"""
        out_a, out_s = [], []
        for t in ts:
            a, s = self.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
            out_a.append(float(a))
            out_s.append(float(s))
        return out_a, out_s

    def _t_of_sigma_ve_points(self, sigma_ve: list[float]) -> list[float]:
        """``t_of_sigma_ve`` at each value of ``sigma_ve`` called on its own 0-d float64 tensor."""
        return [float(self.t_of_sigma_ve(torch.tensor(float(v), dtype=torch.float64))) for v in sigma_ve]

    @property
    def train_steps(self) -> int:
        return self.discrete_steps or 1000

    def describe(self) -> dict:
        return {"name": self.name, "t_zero": self.t_zero, "t_min": self.t_min, "t_max": self.t_max}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


def vp_sigma_from_log_alpha(log_alpha: Tensor) -> Tensor:
    """``sqrt(1 - alpha^2)`` computed without cancellation near alpha = 1."""
    return torch.sqrt(-torch.expm1(2.0 * log_alpha))


TINY_ALPHA_BAR = 1e-30
"""Floor for a zero terminal alpha_bar, so log-space interpolation stays finite."""
