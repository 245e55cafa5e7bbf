"""DEIS (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR 2023),
the log-rho multistep variant (rho AB-DEIS): diffusers' ``DEISMultistepScheduler``.

In the VE frame ``y = x / alpha`` against ``rho = sigma / alpha`` the PF-ODE is ``dy/drho = eps``;
DEIS interpolates the eps history by a polynomial in ``log rho`` and integrates it exactly over
the step: ``x' = (alpha'/alpha) x + alpha' sum_k c_k eps_{i-k}`` with
``c_k = int_{rho_i}^{rho_{i+1}} L_k(log rho) d rho`` (``L_k`` the Lagrange basis on the last
``p`` log-rhos). The integral of ``P(u) e^u`` is ``Q(u) e^u`` with ``Q = P - P' + P'' - ...``.
ComfyUI's ``deis`` defaults to another variant (``tab``, numerical integration in a VP time).
"""
import math

import numpy as np

from solverzoo import Solver, hookimpl
from solverzoo.kit import lincomb, multistep_orders, table


def _rho_weights(us: list[float], u0: float, u1: float) -> list[float]:
    """``int_{e^u0}^{e^u1} L_k(log rho) d rho`` for the Lagrange basis ``L_k`` on the nodes ``us``."""
    out = []
    for k, uk in enumerate(us):
        others = [u for j, u in enumerate(us) if j != k]
        poly = np.poly(others) / np.prod([uk - u for u in others]) if others else np.array([1.0])
        q, d = np.zeros(1), poly
        for m in range(len(poly)):  # Q = P - P' + P'' - ...
            q = np.polyadd(q, (-1) ** m * d)
            d = np.polyder(d)
        out.append(float(np.polyval(q, u1) * math.exp(u1) - np.polyval(q, u0) * math.exp(u0)))
    return out


class DEIS(Solver):
    """DEIS — Zhang & Chen 2023: log-rho Adams-Bashforth exponential integrator on eps (diffusers'
    ``DEISMultistepScheduler``, ``solver_type="logrho"``), orders 1-3.

    Options: ``order`` (1, 2 or 3; 1 is DDIM), ``lower_order_final`` (lower the last two steps of
    grids shorter than 15 steps, as diffusers does). A step to sigma = 0 (or from alpha = 0) is
    first order.
    """

    name = "deis"
    order = 3

    def plan(self, schedule, grid, *, order: int = 3, lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"deis: order must be 1, 2 or 3, got {order!r}")
        tab = table(schedule, grid)
        steps = []
        for i, p in enumerate(multistep_orders(tab, order, lower_order_final)):
            a1, s1 = tab.alpha[i + 1], tab.sigma[i + 1]
            if p == 1:
                steps.append((tab.t[i], None, (a1, s1)))  # x' = alpha' x0 + sigma' eps: DDIM, exact form
                continue
            us = [-tab.lam[i - k] for k in range(p)]  # log rho of the history, newest first
            w = _rho_weights(us, us[0], -tab.lam[i + 1])
            steps.append((tab.t[i], a1 / tab.alpha[i], tuple(a1 * v for v in w)))
        return steps

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        hist = []  # eps, newest first
        for i, (t, a, w) in enumerate(plan):
            pred = denoiser(x, t)
            hist = [pred.eps] + hist[:2]
            x = pred.lin(*w) if a is None else lincomb(x, a, list(zip(w, hist)))
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x

    def declared_order(self, **options):
        return options.get("order", 3)


@hookimpl
def register_solvers(register):
    register(DEIS())
