"""DDIM (Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021)."""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import table


class DDIM(Solver):
    """DDIM — Song et al. 2021: ``x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z``.

    ``c = eta * sigma' * sqrt(1 - exp(-2h))`` with ``h`` the log-SNR step; ``eta = 0`` is the
    deterministic DDIM ODE solver (first order, identical to Euler in the VE frame), ``eta = 1``
    is ancestral sampling with DDPM's posterior variance.
    """

    name = "ddim"
    order = 1

    def plan(self, schedule, grid, *, eta: float = 0.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"ddim: eta must lie in [0, 1], got {eta!r}")
        tab = table(schedule, grid)
        out = []
        for i in range(tab.n):
            a1, s1 = float(tab.alpha[i + 1]), float(tab.sigma[i + 1])
            c = eta * s1 * math.sqrt(max(1.0 - tab.emh(i) ** 2, 0.0))
            out.append((a1, math.sqrt(max(s1 * s1 - c * c, 0.0)), c))
        return out

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (a, e, c) in enumerate(plan):
            pred = denoiser(x, grid[i])
            x = pred.lin(a, e)
            if c > 0:
                x = x + c * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x

    def is_stochastic(self, **options):
        return options.get("eta", 0.0) > 0


@hookimpl
def register_solvers(register):
    register(DDIM())
