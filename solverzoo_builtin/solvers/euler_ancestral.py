"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``; Karras et al. 2022 notation)."""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import table


class EulerAncestral(Solver):
    """Euler ancestral — k-diffusion (Crowson): an Euler step down to ``sigma_down`` followed by
    fresh noise of std ``sigma_up`` (VE sigmas), with
    ``sigma_up = eta * sigma' * sqrt(1 - (sigma'/sigma)^2)`` and ``s_noise`` scaling the noise.
    With ``eta = s_noise = 1`` it coincides with DDIM at eta = 1."""

    name = "euler_ancestral"
    order = 1
    stochastic = True

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"euler_ancestral: eta must lie in [0, 1], got {eta!r}")
        tab = table(schedule, grid)
        out = []
        for i in range(tab.n):
            a1, s1 = float(tab.alpha[i + 1]), float(tab.sigma[i + 1])
            up = eta * s1 * math.sqrt(max(1.0 - tab.emh(i) ** 2, 0.0))  # alpha' * sigma_up (VE)
            down = math.sqrt(max(s1 * s1 - up * up, 0.0))  # alpha' * sigma_down (VE)
            out.append((a1, down, up * s_noise))
        return out

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (a, down, up) in enumerate(plan):
            pred = denoiser(x, grid[i])
            x = pred.lin(a, down)  # alpha' * (x0 + sigma_down * eps): the Euler step in the VE frame
            if up > 0:
                x = x + up * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x

    def is_stochastic(self, **options):
        return options.get("eta", 1.0) > 0 and options.get("s_noise", 1.0) > 0


@hookimpl
def register_solvers(register):
    register(EulerAncestral())
