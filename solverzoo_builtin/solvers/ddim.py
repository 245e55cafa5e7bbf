"""DDIM (Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021).

The algorithm lives in :mod:`solverzoo_builtin.solvers.euler_ancestral`: Euler ancestral and
DDIM are one step. This module registers it under DDIM's name, options and defaults.
"""
from solverzoo import hookimpl
from solverzoo_builtin.solvers.euler_ancestral import EulerAncestral


class DDIM(EulerAncestral):
    """DDIM — Song et al. 2021: ``x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z``.

    ``c = eta * sigma' * sqrt(1 - exp(-2h))`` with ``h`` the log-SNR step; ``eta = 0`` is the
    deterministic DDIM ODE solver (first order, identical to Euler in the VE frame), ``eta = 1``
    is ancestral sampling with DDPM's posterior variance.

    An alias of :class:`~solverzoo_builtin.solvers.euler_ancestral.EulerAncestral` (same plan,
    same loop) with DDIM's option set and defaults. The mapping of options:

    * ``ddim(eta=e)`` is ``euler_ancestral(eta=e, s_noise=1)``, bit for bit; DDIM's ``eta`` is
      k-diffusion's ``eta`` (``c = alpha' * sigma_up``).
    * Defaults differ: ``ddim`` has ``eta = 0`` (an ODE solver), ``euler_ancestral`` has
      ``eta = 1`` (so ``euler_ancestral()`` is ``ddim(eta=1)``).
    * ``ddim`` has no ``s_noise``: it is fixed at 1 (``euler_ancestral``'s ``s_noise != 1`` scales
      the noise without rebalancing the deterministic part, which DDIM never does).

    Options:
        eta: stochasticity in [0, 1] (default 0).
    """

    name = "ddim"
    stochastic = False  # the default eta = 0 is deterministic; see is_stochastic

    def plan(self, schedule, grid, *, eta: float = 0.0):
        return super().plan(schedule, grid, eta=eta, s_noise=1.0)


@hookimpl
def register_solvers(register):
    register(DDIM())
