"""Exponential Heun in data prediction and log-SNR time: ``exp_heun_2_x0`` and ``exp_heun_2_x0_sde``.

The second-order exponential Runge-Kutta method with its stage at the end of the step
(Hochbruck & Ostermann, "Exponential integrators", Acta Numerica 2010, the ``phi_2`` Heun
scheme), applied to the diffusion ODE / SDE on the data prediction as in SEEDS (Gonzalez et al.,
NeurIPS 2023): it is SEEDS-2 with ``r = 1`` and ``solver_type = "phi_2"``.

Source: ComfyUI's ``sample_exp_heun_2_x0`` / ``sample_exp_heun_2_x0_sde`` (thin wrappers of its
``sample_seeds_2``); here a thin wrapper of :mod:`solverzoo_builtin.solvers.seeds`, valid on any
schedule (log-SNR frame, see there).
"""
from solverzoo import hookimpl
from solverzoo_builtin.solvers.seeds import ExpRKSDE, seeds2_plan


class ExpHeun2X0(ExpRKSDE):
    """Exponential Heun (2nd order) — deterministic exponential Runge-Kutta on x0 in log-SNR
    (Hochbruck & Ostermann 2010; SEEDS-2 with ``r = 1``, ``phi_2``, ``eta = 0``; ComfyUI's
    ``exp_heun_2_x0``). ``x' = (sigma'/sigma) x + alpha' [(1 - e^-h) D_0 + (h - 1 + e^-h)/h (D_1 - D_0)]``
    with ``D_1`` the data prediction at the end of a first-order (DDIM) step.

    Options:
        solver_type: ``phi_2`` (default) or ``phi_1`` (trapezoid-like weights, also second order).
    """

    name = "exp_heun_2_x0"
    order = 2
    evals_per_step = 2
    stochastic = False

    def plan(self, schedule, grid, *, solver_type: str = "phi_2"):
        return seeds2_plan(self.name, schedule, grid, 0.0, 0.0, 1.0, solver_type)


class ExpHeun2X0SDE(ExpRKSDE):
    """Exponential Heun SDE — SEEDS-2 (Gonzalez et al. 2023) with ``r = 1``: the stochastic
    exponential Heun method on x0 (ComfyUI's ``exp_heun_2_x0_sde``), any schedule.

    Options:
        eta: SDE strength (default 1; 0 is ``exp_heun_2_x0``).
        s_noise: scale of the injected noise (default 1).
        solver_type: ``phi_2`` (default) or ``phi_1``.
    """

    name = "exp_heun_2_x0_sde"
    order = 2
    evals_per_step = 2

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "phi_2"):
        return seeds2_plan(self.name, schedule, grid, eta, s_noise, 1.0, solver_type)


@hookimpl
def register_solvers(register):
    for cls in (ExpHeun2X0, ExpHeun2X0SDE):
        register(cls())
