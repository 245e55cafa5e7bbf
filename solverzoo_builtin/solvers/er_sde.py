"""ER-SDE-Solver (Cui et al., "Elucidating the Solution Space of Extended Reverse-Time SDE for
Diffusion Models", arXiv:2309.06169, WACV 2025): ``er_sde``.

Source: ComfyUI's ``sample_er_sde`` and its ``SamplerER_SDE`` node (the reference code is
QinpengCui/ER-SDE-Solver); nothing else ships it. The solver works in VE units
``x_ve = x / alpha`` against ``s = sigma / alpha`` (the paper's VP form uses the same ratio) and
is lifted to any path by ``x = alpha * x_ve``, so VP, VE and rectified-flow models share one update.

The extended reverse-time SDE has a noise-scale function ``phi``; its exact solution from ``s``
to ``s'`` with ``D`` expanded to second order in ``s`` is::

    x_ve' = r x_ve + (1 - r) D + W1 D' + W2 D'' + sqrt(s'^2 - r^2 s^2) z,   r = phi(s') / phi(s)
    W1 = (s' - s) + phi(s') * int_{s'}^{s} du / phi(u)
    W2 = (s' - s)^2 / 2 + phi(s') * int_{s'}^{s} (u - s) / phi(u) du

``phi(u) = u`` is the probability-flow ODE (no noise); ``u^(1 + eta)`` the reverse-time SDE at
``eta = 1``; the default ``u (e^(u^0.3) + 10)^eta`` is the paper's tuned ER-SDE.
"""
import math

import numpy as np

from solverzoo import hookimpl
from solverzoo.kit import table
from solverzoo_builtin.solvers.res_multistep import LinearX0Multistep

SCALERS = ("er_sde", "reverse_sde", "ode")
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(32)
_COMFY_POINTS = 200  # ComfyUI's left Riemann sum


def _log_g(kind: str, eta: float, u):
    """``log(phi(u) / u)`` of the noise scaler (``u`` a float or an array; inf where u is)."""
    if kind == "ode" or eta == 0.0:
        return np.zeros_like(u) if isinstance(u, np.ndarray) else 0.0
    if kind == "reverse_sde":
        return eta * np.log(u)
    a = np.power(u, 0.3)
    with np.errstate(over="ignore"):
        return eta * (a + np.log1p(10.0 * np.exp(-a)))  # log(e^a + 10), overflow-free


def _integrals(kind: str, eta: float, s0: float, s1: float, coefficients: str) -> tuple[float, float]:
    """``int_{s1}^{s0} du / phi(u)`` and ``int_{s1}^{s0} (u - s0) / phi(u) du``: 32-point
    Gauss-Legendre in ``log u`` (exact to round-off) or ComfyUI's 200-point left Riemann sum in ``u``."""
    if coefficients == "comfyui":
        step = (s0 - s1) / _COMFY_POINTS
        u = s1 + np.arange(_COMFY_POINTS, dtype=np.float64) * step
        inv = 1.0 / (u * np.exp(_log_g(kind, eta, u)))
        return float(np.sum(inv) * step), float(np.sum((u - s0) * inv) * step)
    lo, hi = math.log(s1), math.log(s0)
    v = 0.5 * (hi - lo) * _GL_NODES + 0.5 * (hi + lo)
    w = 0.5 * (hi - lo) * _GL_WEIGHTS
    u = np.exp(v)
    inv_g = np.exp(-_log_g(kind, eta, u))  # du / phi(u) = dv / g(u)
    return float(np.sum(w * inv_g)), float(np.sum(w * (u - s0) * inv_g))


def er_sde_steps(tab, kind: str, eta: float, s_noise: float, max_stage: int, coefficients: str) -> list:
    """``(a, (b_0, b_1, b_2), std)`` of every step (see the module docstring)."""
    sve = [s / a if a > 0 else math.inf for a, s in zip(tab.alpha, tab.sigma)]
    grows = kind != "ode" and eta > 0  # g(inf) = inf; g(0) never enters (a step to 0 returns D)
    lg = [float(_log_g(kind, eta, v)) if 0.0 < v < math.inf else (math.inf if v > 0 and grows else 0.0) for v in sve]
    out = []
    for i in range(tab.n):
        a1, s0, s1 = tab.alpha[i + 1], sve[i], sve[i + 1]
        if s1 == 0.0:  # to clean data: x = D
            out.append((0.0, (a1, 0.0, 0.0), 0.0))
            continue
        q = math.exp(lg[i + 1] - lg[i]) if math.isfinite(lg[i]) else 0.0  # g(s') / g(s)
        r = (s1 / s0) * q
        b = [a1 * (1.0 - r), 0.0, 0.0]
        stage = min(max_stage, i + 1)
        while stage > 1 and not math.isfinite(sve[i - stage + 1]):
            stage -= 1
        if stage >= 2:
            S, Su = _integrals(kind, eta, s0, s1, coefficients)
            phi1 = s1 * math.exp(lg[i + 1])
            dt = s1 - s0
            w1, w2 = a1 * (dt + phi1 * S), a1 * (dt * dt / 2 + phi1 * Su)
            k1 = w1 / (s0 - sve[i - 1])  # D' ~ f1 = (D_i - D_{i-1}) / (s_i - s_{i-1})
            b[0] += k1
            b[1] -= k1
            if stage >= 3:  # D'' ~ 2 f2, f2 = (f1_i - f1_{i-1}) / (s_i - s_{i-2})
                span = s0 - sve[i - 2]
                k2 = 2.0 * w2 / span
                if coefficients == "exact":  # Newton form: D' at s_i is f1 + f2 (s_i - s_{i-1})
                    k2 += w1 * (s0 - sve[i - 1]) / span
                g0, g1 = k2 / (s0 - sve[i - 1]), k2 / (sve[i - 1] - sve[i - 2])
                b[0] += g0
                b[1] -= g0 + g1
                b[2] += g1
        std = s_noise * tab.sigma[i + 1] * math.sqrt(max(1.0 - q * q, 0.0))  # alpha' sqrt(s'^2 - r^2 s^2)
        out.append(((tab.sigma[i + 1] / tab.sigma[i]) * q, tuple(b), std))  # alpha' r / alpha
    return out


class ERSDE(LinearX0Multistep):
    """ER-SDE-Solver — Cui et al. 2023 (arXiv:2309.06169): multistep (up to 3 stages) solver of
    the extended reverse-time SDE, exact in its linear part, with Taylor terms of the data
    prediction in the VE sigma.

    Source: ComfyUI's ``sample_er_sde`` / ``SamplerER_SDE`` (the reference code QinpengCui/ER-SDE-Solver).

    Options:
        noise_scaler: ``er_sde`` (default, ``phi(u) = u (e^(u^0.3) + 10)^eta``), ``reverse_sde``
            (``phi(u) = u^(1 + eta)``) or ``ode`` (``phi(u) = u``: deterministic).
        eta: the exponent above (default 1; 0 is the ODE).
        s_noise: scale of the injected noise (default 1).
        max_stage: 1, 2 or 3 (default 3): Taylor terms used, i.e. history length.
        coefficients: ``exact`` (default): exact integrals and the Newton-form first derivative,
            so 3 stages are third order (measured ~3 on the testbed); ``comfyui``: ComfyUI's and the
            reference code's 200-point Riemann sums and backward-difference first derivative, which
            make the 3-stage method second order.
    """

    name = "er_sde"
    order = 3
    stochastic = True

    def plan(self, schedule, grid, *, noise_scaler: str = "er_sde", eta: float = 1.0, s_noise: float = 1.0,
             max_stage: int = 3, coefficients: str = "exact"):
        if noise_scaler not in SCALERS:
            raise ValueError(f"er_sde: noise_scaler must be one of {SCALERS}, got {noise_scaler!r}")
        if max_stage not in (1, 2, 3):
            raise ValueError(f"er_sde: max_stage must be 1, 2 or 3, got {max_stage!r}")
        if coefficients not in ("exact", "comfyui"):
            raise ValueError(f"er_sde: coefficients must be 'exact' or 'comfyui', got {coefficients!r}")
        if not (eta >= 0 and s_noise >= 0):
            raise ValueError(f"er_sde: eta and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")
        return er_sde_steps(table(schedule, grid), noise_scaler, float(eta), float(s_noise), int(max_stage), coefficients)

    def declared_order(self, **options):
        opts = {**self.options(), **options}
        order = int(opts["max_stage"])
        return min(order, 2) if opts["coefficients"] == "comfyui" else order

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["noise_scaler"] != "ode" and opts["eta"] > 0 and opts["s_noise"] > 0


@hookimpl
def register_solvers(register):
    register(ERSDE())
