"""SEEDS (Gonzalez et al., "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from
Diffusion Models", NeurIPS 2023, arXiv:2305.14267): ``seeds_2`` and ``seeds_3``.

Source: ComfyUI's ``sample_seeds_2`` / ``sample_seeds_3`` (data-prediction, VP form), which exist
only there. Everything is written in the log-SNR ``lambda = log(alpha / sigma)`` with the
schedule's own ``alpha`` and ``sigma``, so one update serves VP, VE and rectified-flow paths. With
``H = (1 + eta) h`` a stage from ``lambda_s`` to ``lambda_s + c h`` is::

    x_c = (sigma_c / sigma_s) e^(-eta c h) x_s - alpha_c sum_j a_j D_j + sigma_c s_noise W_c

where ``W`` is one Brownian path sampled at the stage times: ``W_c = sqrt(1 - e^(-2 eta c h)) z_1``,
then ``W_c' = e^(-(c' - c) eta h) W_c + sqrt(1 - e^(-2 (c' - c) eta h)) z_2`` (so the step's total
noise has the exact variance ``sigma'^2 (1 - e^(-2 eta h))`` and the stages see the same path).
``eta = 0`` is the probability-flow ODE: ``seeds_2`` is then DPM-Solver-2 in data prediction
(``solver_type="phi_1"``, the midpoint ``r = 1/2``) or the exponential Heun method
(``phi_2``, ``r = 1``: ``exp_heun_2_x0``), ``seeds_3`` DPM-Solver++(3S).
A step to sigma = 0 returns ``D``; a step from alpha = 0 (infinite log-SNR step) is the
first-order limit of the same update (one evaluation).
"""
import math

import torch

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import lincomb, table


def ephi1(x: float) -> float:
    """``x phi_1(x) = e^x - 1``."""
    return math.expm1(x)


def ephi2(x: float) -> float:
    """``x phi_2(x) = (e^x - 1 - x) / x`` (series near 0)."""
    if abs(x) < 1e-6:
        return x / 2 + x * x / 6
    return (math.expm1(x) - x) / x


def _noise(eta_h: float, dc: float, s_noise: float, sigma_c: float) -> tuple[float, float, float]:
    """(decay, std of the fresh draw, scale) of the Brownian increment over ``dc`` of the step."""
    if eta_h == 0.0 or s_noise == 0.0:
        return 0.0, 0.0, 0.0  # scale 0: no noise at all
    return math.exp(-dc * eta_h), math.sqrt(-math.expm1(-2.0 * dc * eta_h)), sigma_c * s_noise


def _stage_points(schedule, tab, fractions: dict) -> dict:
    """``{(i, c): (t, alpha, sigma)}`` at log-SNR ``lambda_i + c h_i`` (one batched inverse)."""
    keys = [k for k in fractions if k[1] != 1.0]
    out = {(i, c): (tab.t[i + 1], tab.alpha[i + 1], tab.sigma[i + 1]) for i, c in fractions if c == 1.0}
    if keys:
        sve = torch.tensor([math.exp(-(tab.lam[i] + c * tab.h(i))) for i, c in keys], dtype=torch.float64)
        ts = schedule.t_of_sigma_ve(sve)
        a, s = schedule.alpha_sigma(ts)
        for k, t, ak, sk in zip(keys, ts.tolist(), a.tolist(), s.tolist()):
            out[k] = (t, ak, sk)
    return out


def seeds_plan(schedule, grid, nodes: tuple, weights, eta: float, s_noise: float) -> list:
    """Per step ``(stages, out)``; ``stages[k] = (t, x coef, D coefs, noise)``, ``out = (x coef,
    D coefs, noise)``, ``noise = (decay, std, scale)``.

    Args:
        nodes: the stage fractions ``c`` of the step (``0 < c <= 1``).
        weights: ``weights(k, H)`` -> the coefficients ``a_j`` of ``D_0 .. D_k`` at stage ``k``
            (``k = len(nodes)`` for the output), ``x_c = ... - alpha_c sum_j a_j D_j``.
    """
    tab = table(schedule, grid)
    finite = [i for i in range(tab.n) if tab.sigma[i + 1] > 0 and math.isfinite(tab.h(i))]
    points = _stage_points(schedule, tab, {(i, c): None for i in finite for c in nodes})
    steps = []
    for i in range(tab.n):
        a1, s0, s1 = tab.alpha[i + 1], tab.sigma[i], tab.sigma[i + 1]
        if s1 == 0.0:
            steps.append(((), (0.0, (a1,), (0.0, 0.0, 0.0))))
            continue
        if i not in finite:  # from alpha = 0: h = inf, the first-order limit
            emh = tab.emh(i)
            noise = (0.0, math.sqrt(max(1.0 - emh ** (2 * eta), 0.0)), s1 * s_noise) if eta > 0 and s_noise > 0 else (0.0,) * 3
            steps.append(((), ((s1 / s0) * emh ** eta, (a1 * (1.0 - emh ** (1.0 + eta)),), noise)))
            continue
        h = tab.h(i)
        H, eta_h = (1.0 + eta) * h, eta * h
        stages, prev_c = [], 0.0
        for k, c in enumerate(nodes):
            t_c, a_c, s_c = points[(i, c)]
            coefs = tuple(-a_c * w for w in weights(k, H))
            stages.append((t_c, (s_c / s0) * math.exp(-eta_h * c), coefs, _noise(eta_h, c - prev_c, s_noise, s_c)))
            prev_c = c
        coefs = tuple(-a1 * w for w in weights(len(nodes), H))
        steps.append((tuple(stages), ((s1 / s0) * math.exp(-eta_h), coefs, _noise(eta_h, 1.0 - prev_c, s_noise, s1))))
    return steps


class ExpRKSDE(Solver):
    """The loop of every SEEDS-type solver: stages of an exponential Runge-Kutta method on the data
    prediction, with step noise drawn from one Brownian path per step (see the module docstring)."""

    stochastic = True
    needs = ("x0",)

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        """Run every step's stages, then its output combination."""
        for i, (stages, (a, coefs, (decay, std, scale))) in enumerate(plan):
            d0 = denoiser(x, grid[i]).x0
            ds, w = [d0], None
            for t_c, a_c, c_coefs, (c_decay, c_std, c_scale) in stages:
                xc = lincomb(x, a_c, list(zip(c_coefs, ds)))
                if c_scale > 0:  # one draw per stage, even where its fresh part is 0 (r = 1)
                    z = randn_like(x, generator)
                    w = c_std * z if w is None else w * c_decay + c_std * z
                    xc = xc + c_scale * w
                ds.append(denoiser(xc, t_c).x0)
            x = lincomb(x, a, list(zip(coefs, ds)))
            if scale > 0:
                z = randn_like(x, generator)
                w = std * z if w is None else w * decay + std * z
                x = x + scale * w
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": d0})
        return x

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts.get("eta", 0.0) > 0 and opts.get("s_noise", 0.0) > 0


def _check_noise(name: str, eta: float, s_noise: float) -> None:
    if not (eta >= 0 and s_noise >= 0):
        raise ValueError(f"{name}: eta and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")


def seeds2_plan(name: str, schedule, grid, eta: float, s_noise: float, r: float, solver_type: str) -> list:
    """SEEDS-2: one stage at ``r``; ``phi_1`` (D at ``lerp(D_0, D_1, 1 / (2 r))``) or ``phi_2``."""
    _check_noise(name, eta, s_noise)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"{name}: r must lie in (0, 1], got {r!r}")
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"{name}: solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    fac = 1.0 / (2.0 * r)

    def weights(k, H):
        if k == 0:
            return (ephi1(-r * H),)
        if solver_type == "phi_1":
            return (ephi1(-H) * (1.0 - fac), ephi1(-H) * fac)
        b2 = ephi2(-H) / r
        return (ephi1(-H) - b2, b2)

    return seeds_plan(schedule, grid, (r,), weights, float(eta), float(s_noise))


class Seeds2(ExpRKSDE):
    """SEEDS-2 — Gonzalez et al. 2023 (arXiv:2305.14267): two-stage stochastic exponential
    solver on the data prediction; ``eta = 0`` gives the second-order ODE method.

    Source: ComfyUI's ``sample_seeds_2`` (derived here in the log-SNR frame for any schedule).

    Options:
        eta: SDE strength (default 1, the reverse SDE; 0 the probability-flow ODE).
        s_noise: scale of the injected noise (default 1).
        r: fraction of the log-SNR step of the intermediate stage (default 0.5).
        solver_type: ``phi_1`` (default) or ``phi_2``: how the two data predictions are combined.
    """

    name = "seeds_2"
    order = 2
    evals_per_step = 2

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, solver_type: str = "phi_1"):
        return seeds2_plan(self.name, schedule, grid, eta, s_noise, r, solver_type)


class Seeds3(ExpRKSDE):
    """SEEDS-3 — Gonzalez et al. 2023 (arXiv:2305.14267): three-stage stochastic exponential
    solver on the data prediction; ``eta = 0`` gives the third-order ODE method (DPM-Solver++(3S)).

    Source: ComfyUI's ``sample_seeds_3`` (derived here in the log-SNR frame for any schedule).

    Options:
        eta: SDE strength (default 1; 0 the probability-flow ODE).
        s_noise: scale of the injected noise (default 1).
        r_1, r_2: fractions of the log-SNR step of the two intermediate stages (default 1/3, 2/3).
    """

    name = "seeds_3"
    order = 3
    evals_per_step = 3

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1.0 / 3, r_2: float = 2.0 / 3):
        _check_noise(self.name, eta, s_noise)
        if not 0.0 < r_1 < r_2 <= 1.0:
            raise ValueError(f"seeds_3: need 0 < r_1 < r_2 <= 1, got r_1={r_1!r}, r_2={r_2!r}")

        def weights(k, H):
            if k == 0:
                return (ephi1(-r_1 * H),)
            if k == 1:
                a2 = r_2 / r_1 * ephi2(-r_2 * H)
                return (ephi1(-r_2 * H) - a2, a2)
            b3 = ephi2(-H) / r_2
            return (ephi1(-H) - b3, 0.0, b3)

        return seeds_plan(schedule, grid, (r_1, r_2), weights, float(eta), float(s_noise))


@hookimpl
def register_solvers(register):
    for cls in (Seeds2, Seeds3):
        register(cls())
