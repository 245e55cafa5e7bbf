"""Ralston's method as a solverzoo plugin: a Butcher tableau is the whole solver."""
import solverzoo
from solverzoo.kit import RungeKutta


class Ralston(RungeKutta):
    """Ralston — Ralston 1962: the second-order Runge-Kutta method with minimum error bound
    (stage at 2/3 of the step, weights 1/4 and 3/4)."""

    name, order = "ralston", 2
    tableau = (((2 / 3,),), (1 / 4, 3 / 4), (0.0, 2 / 3))  # (A, b, c)


@solverzoo.hookimpl
def register_solvers(register):
    register(Ralston())
