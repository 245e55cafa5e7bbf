"""Built-in noise schedules: discrete DDPM betas, continuous VP, EDM / VE, rectified flow."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from solverzoo import hookimpl
from solverzoo.schedules import TINY_ALPHA_BAR, NoiseSchedule, vp_sigma_from_log_alpha


def _t(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class DiscreteVP(NoiseSchedule):
    """Discrete-time VP schedule of DDPM (Ho et al., 2020) from a beta schedule.

    Time is the training index in ``[-1, T - 1]``; index -1 is clean data (DDIM's
    ``set_alpha_to_one``). Between indices, ``log alpha_bar`` is interpolated linearly (as in
    DPM-Solver's discrete-time wrapper), so fractional times are allowed.

    Args:
        beta_schedule: ``linear``, ``scaled_linear`` (Stable Diffusion) or ``cosine``
            (Nichol & Dhariwal 2021, diffusers' ``squaredcos_cap_v2``).
        beta_start, beta_end: end points of the linear schedules.
        num_train_timesteps: T.
        rescale_zero_terminal_snr: rescale to zero terminal SNR (Lin et al., 2023); use with
            v- or x0-prediction models.
        alphas_cumprod: explicit alpha_bar values (overrides the beta schedule).
    """

    name = "ddpm"

    def __init__(self, beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_train_timesteps: int = 1000, rescale_zero_terminal_snr: bool = False, alphas_cumprod=None):
        T = int(num_train_timesteps)
        if alphas_cumprod is not None:
            ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
            T = ab.numel()
        else:
            if beta_schedule == "linear":
                betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
            elif beta_schedule == "scaled_linear":
                betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
            elif beta_schedule == "cosine":
                f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
                betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
            else:
                raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected linear, scaled_linear or cosine")
            ab = torch.cumprod(1.0 - betas, dim=0)
        if rescale_zero_terminal_snr:
            s = ab.sqrt()
            s0, sT = s[0].clone(), s[-1].clone()
            ab = ((s - sT) * s0 / (s0 - sT)) ** 2
        self.beta_schedule = beta_schedule if alphas_cumprod is None else "explicit"
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        self.alphas_cumprod = ab
        self.discrete_steps = T
        self.t_zero, self.t_min, self.t_max = -1.0, 0.0, float(T - 1)
        # knots at t = -1, 0, ..., T-1 of log alpha_bar (alpha_bar(-1) = 1)
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ab.clamp_min(TINY_ALPHA_BAR))])
        self._log_ab_list = self._log_ab.tolist()  # the same knots as floats, for host plans

    def _segment(self, t: Tensor):
        pos = _t(t) + 1.0
        j = torch.clamp(torch.floor(pos), 0, self.discrete_steps - 1).long()
        w = pos - j
        L = self._log_ab.to(pos.device)
        lo, hi = torch.take(L, j), torch.take(L, j + 1)  # (take: traceable tensor indexing)
        return lo + w * (hi - lo), hi - lo

    def alpha_sigma(self, t):
        la, _ = self._segment(t)
        return torch.exp(0.5 * la), torch.sqrt(-torch.expm1(la))

    def _alpha_sigma_host(self, t):
        """:meth:`alpha_sigma` with the interpolation of :meth:`_segment` in Python floats (the
        same IEEE operations, without a dozen tiny tensor ops); exp, expm1 and sqrt stay torch's
        kernels (they round like the reference: elementwise, position-independent)."""
        ts = t.tolist()
        if not all(map(math.isfinite, ts)):
            return self.alpha_sigma(t)
        L, top = self._log_ab_list, self.discrete_steps - 1
        la = []
        for v in ts:
            pos = v + 1.0
            j = int(pos) if pos >= 0.0 else 0  # clamp(floor(pos), 0, top): int() is floor for pos >= 0
            if j > top:
                j = top
            w = pos - j
            lo, hi = L[j], L[j + 1]
            la.append(lo + w * (hi - lo))
        a = torch.exp(torch.tensor([0.5 * v for v in la], dtype=torch.float64))
        s = torch.sqrt(torch.expm1(torch.tensor(la, dtype=torch.float64)).neg_())
        return a, s

    def _alpha_sigma_points(self, ts):
        if not ts:
            return [], []
        a, s = self._alpha_sigma_host(torch.tensor(ts, dtype=torch.float64))  # elementwise exact in a batch
        return a.tolist(), s.tolist()

    def _t_of_sigma_ve_points(self, sigma_ve):
        if not sigma_ve:
            return []
        return self.t_of_sigma_ve(torch.tensor(sigma_ve, dtype=torch.float64)).tolist()  # log, logsigmoid, searchsorted

    def alpha_sigma_dot(self, t):
        la, slope = self._segment(t)
        a, s = torch.exp(0.5 * la), torch.sqrt(-torch.expm1(la))
        da = 0.5 * a * slope
        return da, -a * da / s

    def t_of_lam(self, lam):
        la = torch.nn.functional.logsigmoid(2.0 * _t(lam))  # log alpha_bar at that lambda
        neg = -self._log_ab  # increasing
        k = torch.clamp(torch.searchsorted(neg, (-la).contiguous()), 1, self.discrete_steps)
        lo, hi = neg[k - 1], neg[k]
        w = ((-la) - lo) / (hi - lo)
        return (k - 2).to(torch.float64) + w

    def describe(self):
        return {"name": self.name, "beta_schedule": self.beta_schedule, "num_train_timesteps": self.discrete_steps,
                "rescale_zero_terminal_snr": self.rescale_zero_terminal_snr}


class ContinuousVP(NoiseSchedule):
    """Continuous-time VP SDE with linear beta(t) (Song et al., 2021): ``log alpha(t) =
    -(beta_max - beta_min) t^2 / 4 - beta_min t / 2`` on ``t in [0, 1]``."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_zero, self.t_min, self.t_max = 0.0, float(t_min), 1.0

    def _log_alpha(self, t):
        t = _t(t)
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_sigma(self, t):
        la = self._log_alpha(t)
        return torch.exp(la), vp_sigma_from_log_alpha(la)

    def alpha_sigma_dot(self, t):
        t = _t(t)
        la = self._log_alpha(t)
        a, s = torch.exp(la), vp_sigma_from_log_alpha(la)
        da = a * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)
        return da, -a * da / s

    def t_of_lam(self, lam):
        L = torch.logaddexp(-2.0 * _t(lam), torch.zeros((), dtype=torch.float64))
        return self._t_of_L(L)

    def _t_of_L(self, L):
        db = self.beta_max - self.beta_min
        return 2.0 * L / (torch.sqrt(self.beta_min ** 2 + 2.0 * db * L) + self.beta_min)

    def _alpha_sigma_points(self, ts):
        if not ts:
            return [], []
        a, s = self.alpha_sigma(torch.tensor(ts, dtype=torch.float64))  # exp, expm1, sqrt: elementwise exact in a batch
        return a.tolist(), s.tolist()

    def _t_of_sigma_ve_points(self, sigma_ve):
        if not sigma_ve:
            return []
        sv = torch.tensor(sigma_ve, dtype=torch.float64)
        x = -2.0 * -torch.log(sv)
        # logaddexp rounds differently inside a vector than on a scalar: keep it per point
        zero = torch.zeros((), dtype=torch.float64)
        L = torch.stack([torch.logaddexp(v, zero) for v in x])
        t = self._t_of_L(L)
        return torch.where(sv == 0, torch.full_like(t, self.t_zero), t).tolist()

    def describe(self):
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class EDM(NoiseSchedule):
    """Variance-exploding path of EDM (Karras et al., 2022): ``alpha = 1, sigma = t``."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_zero, self.t_min, self.t_max = 0.0, float(sigma_min), float(sigma_max)

    def alpha_sigma(self, t):
        t = _t(t)
        return torch.ones_like(t), t

    def alpha_sigma_dot(self, t):
        t = _t(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def t_of_lam(self, lam):
        return torch.exp(-_t(lam))

    def _alpha_sigma_points(self, ts):
        return [1.0] * len(ts), [float(t) for t in ts]

    def _t_of_sigma_ve_points(self, sigma_ve):
        if not sigma_ve:
            return []
        return self.t_of_sigma_ve(torch.tensor(sigma_ve, dtype=torch.float64)).tolist()  # log, exp

    def describe(self):
        return {"name": self.name, "sigma_min": self.t_min, "sigma_max": self.t_max}


class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching path (Liu et al., 2022; Lipman et al., 2022):
    ``alpha = 1 - s(t), sigma = s(t)`` with the SD3 time shift
    ``s(t) = shift * t / (1 + (shift - 1) t)`` (Esser et al., 2024); ``shift = 1`` is plain RF."""

    name = "flow"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3):
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift!r}")
        self.shift = float(shift)
        self.t_zero, self.t_min, self.t_max = 0.0, float(t_min), 1.0

    def _s(self, t):
        t = _t(t)
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def alpha_sigma(self, t):
        s = self._s(t)
        return 1.0 - s, s

    def alpha_sigma_dot(self, t):
        t = _t(t)
        ds = self.shift / (1.0 + (self.shift - 1.0) * t) ** 2
        return -ds, ds

    def t_of_lam(self, lam):
        s = torch.sigmoid(-_t(lam))
        return s / (self.shift - (self.shift - 1.0) * s)

    def _alpha_sigma_points(self, ts):
        k = self.shift - 1.0
        s = [self.shift * t / (1.0 + k * t) for t in map(float, ts)]  # the same IEEE operations as _s
        return [1.0 - v for v in s], s

    def _t_of_sigma_ve_points(self, sigma_ve):
        if not sigma_ve:
            return []
        sv = torch.tensor(sigma_ve, dtype=torch.float64)
        x = torch.log(sv)  # -(-log): the negated lambda
        # sigmoid rounds differently inside a vector than on a scalar: keep it per point
        s = torch.stack([torch.sigmoid(v) for v in x])
        t = s / (self.shift - (self.shift - 1.0) * s)
        return torch.where(sv == 0, torch.full_like(t, self.t_zero), t).tolist()

    def describe(self):
        return {"name": self.name, "shift": self.shift, "t_min": self.t_min}


@hookimpl
def register_schedules(register):
    for cls in (DiscreteVP, ContinuousVP, EDM, RectifiedFlow):
        register(cls, name=cls.name)
