"""Ralston's method as a solverzoo plugin: the whole solver, in the flow frame."""
import solverzoo
from solverzoo.kit import alpha_sigma_at, frame_coords, frame_time, lincomb, table


class Ralston(solverzoo.Solver):
    """Ralston — Ralston 1962: the second-order Runge-Kutta method with minimum error bound
    (stage at 2/3 of the step, weights 1/4 and 3/4), here in the rectified-flow frame."""

    name, order, evals_per_step = "ralston", 2, 2

    def plan(self, schedule, grid):
        tab, steps = table(schedule, grid), []
        for i in range(tab.n):  # y = x / c, u: flow-frame time; dy/du = eps - x0
            c0, u0 = frame_coords("flow", tab.alpha[i], tab.sigma[i])
            c1, u1 = frame_coords("flow", tab.alpha[i + 1], tab.sigma[i + 1])
            tm = frame_time("flow", schedule, u0 + 2 / 3 * (u1 - u0))
            cm, _ = frame_coords("flow", *alpha_sigma_at(schedule, tm))
            h = u1 - u0
            steps.append((tm, cm / c0, cm * h * 2 / 3, c1 / c0, c1 * h / 4, c1 * h * 3 / 4))
        return steps

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (tm, a_m, b_m, a, b1, b2) in enumerate(plan):
            p1 = denoiser(x, grid[i])
            d1 = p1.eps - p1.x0
            p2 = denoiser(lincomb(x, a_m, [(b_m, d1)]), tm)
            x = lincomb(x, a, [(b1, d1), (b2, p2.eps - p2.x0)])
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": p1.x0})
        return x


@solverzoo.hookimpl
def register_solvers(register):
    register(Ralston())
