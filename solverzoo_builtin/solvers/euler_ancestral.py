"""Euler ancestral = DDIM (Song, Meng & Ermon, ICLR 2021; k-diffusion's ``sample_euler_ancestral``).

One implementation under two registered names: ``euler_ancestral`` (this class) and ``ddim``
(:class:`solverzoo_builtin.solvers.ddim.DDIM`, the same step with DDIM's option set and defaults).
"""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import table


class EulerAncestral(Solver):
    """Euler ancestral — k-diffusion (Crowson), which is DDIM (Song et al. 2021) with eta = 1.

    The step: ``x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + s_noise * c z`` with
    ``c = eta * sigma' * sqrt(1 - exp(-2h))`` and ``h`` the log-SNR step. In k-diffusion's
    notation on VE sigmas it is an Euler step down to ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``
    followed by fresh noise of std ``s_noise * sigma_up``, with
    ``sigma_up = eta * sigma' * sqrt(1 - (sigma'/sigma)^2)`` (so ``c = alpha' * sigma_up``).
    ``eta = 0`` is the deterministic DDIM ODE solver (first order, Euler in the VE frame);
    ``eta = 1`` is ancestral sampling with DDPM's posterior variance.

    One algorithm, two registered names (``ddim`` is :class:`~solverzoo_builtin.solvers.ddim.DDIM`,
    a subclass that changes only the name, the option set and the defaults):

    * ``ddim(eta=e)`` is ``euler_ancestral(eta=e, s_noise=1)``, bit for bit (same plan, same loop).
    * ``ddim()`` (eta 0 by default) is ``euler_ancestral(eta=0)``: deterministic DDIM.
    * ``euler_ancestral()`` (eta 1, s_noise 1 by default) is ``ddim(eta=1)``.
    * ``euler_ancestral(s_noise=s)`` with ``s != 1`` has no ``ddim`` counterpart: ``s_noise``
      scales only the injected noise without rebalancing ``sigma_down`` (k-diffusion's
      convention); ``ddim`` has no ``s_noise`` option.

    Options:
        eta: stochasticity in [0, 1] (default 1; 0 for ``ddim``).
        s_noise: scale of the injected noise (default 1).
    """

    name = "euler_ancestral"
    order = 1
    stochastic = True
    renoise = True  # the step reads x0 and eps through pred.lin only, so CFG++ (cfg_pp) renoises with eps_uncond

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"{self.name}: eta must lie in [0, 1], got {eta!r}")
        tab = table(schedule, grid)
        alpha, sigma, sqrt = tab.alpha, tab.sigma, math.sqrt
        out = []
        for i in range(tab.n):
            a0, s0, a1, s1 = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
            emh = (s1 / s0) * (a0 / a1)  # tab.emh(i), inlined
            c = eta * s1 * sqrt(max(1.0 - emh ** 2, 0.0))  # alpha' * sigma_up (VE)
            down = sqrt(max(s1 * s1 - c * c, 0.0))  # alpha' * sigma_down (VE)
            out.append((a1, down, c * s_noise))  # c * 1.0 == c exactly: ddim's plan
        return out

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (a, down, c) in enumerate(plan):
            pred = denoiser(x, grid[i])
            x = pred.lin(a, down)  # alpha' * (x0 + sigma_down * eps): the Euler step in the VE frame
            if c > 0:  # a plan constant (Python float), not a tensor
                x = x + c * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}  # this name's defaults (ddim has no s_noise)
        return opts["eta"] > 0 and opts.get("s_noise", 1.0) > 0


@hookimpl
def register_solvers(register):
    register(EulerAncestral())
