"""DDPM ancestral sampling (Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020)."""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import table


class DDPM(Solver):
    """DDPM ancestral sampler — Ho et al. 2020: sample the posterior ``q(x_t' | x_t, x0_hat)``.

    With ``a = alpha_t / alpha_t'`` and ``b2 = sigma_t^2 - a^2 sigma_t'^2`` (the forward
    transition's variance, DDPM's beta for adjacent steps), the mean is
    ``(a sigma_t'^2 x_t + alpha_t' b2 x0) / sigma_t^2``. ``variance='small'`` uses the
    posterior variance ``b2 sigma_t'^2 / sigma_t^2`` (beta-tilde), ``'large'`` uses ``b2``
    (beta). The last step to clean data adds no noise.
    """

    name = "ddpm"
    order = 1
    stochastic = True

    def plan(self, schedule, grid, *, variance: str = "small"):
        if variance not in ("small", "large"):
            raise ValueError(f"ddpm: variance must be 'small' (posterior, beta-tilde) or 'large' (beta), got {variance!r}")
        tab = table(schedule, grid)
        out = []
        for i in range(tab.n):
            a0, s0, a1, s1 = (float(v) for v in (tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]))
            a = a0 / a1
            b2 = max(s0 * s0 - a * a * s1 * s1, 0.0)
            var = 0.0 if tab.to_zero(i) else (b2 * s1 * s1 / (s0 * s0) if variance == "small" else b2)
            out.append((a * s1 * s1 / (s0 * s0), a1 * b2 / (s0 * s0), math.sqrt(var)))
        return out

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (cx, c0, std) in enumerate(plan):
            pred = denoiser(x, grid[i])
            x = pred.lin(c0, 0.0, cx, x)
            if std > 0:
                x = x + std * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x


@hookimpl
def register_solvers(register):
    register(DDPM())
