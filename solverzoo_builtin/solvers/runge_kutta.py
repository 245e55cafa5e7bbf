"""Explicit Runge-Kutta solvers of the probability-flow / flow ODE: Euler, Heun, midpoint, RK4.

All four share :class:`solverzoo.kit.RungeKutta`; each differs only by its tableau."""
from solverzoo import hookimpl
from solverzoo.kit import EULER_TABLEAU, RungeKutta


class Euler(RungeKutta):
    """Euler — first-order explicit step of the PF-ODE (Song et al. 2021; k-diffusion's
    ``sample_euler`` in the VE frame, FlowMatchEuler in the flow frame), with EDM's optional churn."""

    name = "euler"
    order = 1
    evals_per_step = 1
    tableau = EULER_TABLEAU


class Heun(RungeKutta):
    """Heun — EDM's second-order sampler (Karras et al. 2022, Algorithm 1/2): trapezoidal
    correction of an Euler step, first-order final step to sigma = 0, optional churn."""

    name = "heun"
    order = 2
    evals_per_step = 2
    tableau = (((1.0,),), (0.5, 0.5), (0.0, 1.0))


class Midpoint(RungeKutta):
    """Explicit midpoint — second-order Runge-Kutta (Runge 1895) of the flow ODE."""

    name = "midpoint"
    order = 2
    evals_per_step = 2
    tableau = (((0.5,),), (0.0, 1.0), (0.0, 0.5))


class RK4(RungeKutta):
    """Classical RK4 — fourth-order Runge-Kutta (Kutta 1901) of the flow ODE."""

    name = "rk4"
    order = 4
    evals_per_step = 4
    tableau = (((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0))


@hookimpl
def register_solvers(register):
    for cls in (Euler, Heun, Midpoint, RK4):
        register(cls())
