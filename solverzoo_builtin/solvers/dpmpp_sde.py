"""Stochastic DPM-Solver++ samplers from k-diffusion (Crowson), after Lu et al., "DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models" (2022): ``dpmpp_2s_ancestral``,
``dpmpp_sde``, ``dpmpp_3m_sde`` and ``dpmpp_2m_sde_heun``.

Every step is written in x-space with the schedule's ``alpha`` and ``sigma`` (k-diffusion's VE
formulas multiplied through by ``alpha'``), so the injected noise is ``alpha' * sigma_up`` and the
samplers are correct on any schedule: VP, VE and rectified flow (``alpha = 1 - t``, ``sigma = t``),
where the state after an exact step carries exactly the forward marginal's noise. A step that
starts where ``alpha = 0`` (pure noise of a flow model) is a first-order ancestral step, exact
there. Fresh noise comes from the ``generator`` (:func:`solverzoo.randn_like`), one draw per noise
injection in k-diffusion's order.
"""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import table
from solverzoo_builtin.solvers.dpm2 import _check_eta, ancestral_split, ve_point
from solverzoo_builtin.solvers.dpmpp import COEFFICIENTS, _DPMpp


def _first_order(t0: float, a1: float, down: float, up: float):
    """The ancestral first-order step ``x' = alpha' x0 + down * eps`` plus noise of std ``up``."""
    return ("first", t0, a1, down, up)


class _Ancestral2(Solver):
    """Two-stage ancestral samplers: the plan holds per step either a first-order step or
    ``("two", t0, stage, step)`` with the stage's ``(t_s, x coef, x0 coef, noise std)`` and the
    step's ``(x coef, x0 coef of D0, x0 coef of D_s, noise std)``."""

    order = 2
    evals_per_step = 2
    stochastic = True

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, step in enumerate(plan):
            if step[0] == "first":
                _, t0, a1, down, up = step
                pred = denoiser(x, t0)
                x0 = pred.x0
                x = pred.lin(a1, down)
                if up > 0:
                    x = x + up * randn_like(x, generator)
            else:
                _, t0, (ts, sx, sd, su), (cx, c0, cs, up) = step
                x0 = denoiser(x, t0).x0
                x2 = x * sx + sd * x0
                if su > 0:
                    x2 = x2 + su * randn_like(x, generator)
                d2 = denoiser(x2, ts).x0
                x = x * cx + (c0 * x0 + cs * d2 if c0 != 0.0 else cs * d2)
                if up > 0:
                    x = x + up * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": x0})
        return x

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["eta"] > 0 and opts["s_noise"] > 0


class DPMpp2SAncestral(_Ancestral2):
    """DPM-Solver++(2S) ancestral (k-diffusion's ``sample_dpmpp_2s_ancestral``) — Lu et al. 2022's
    second-order singlestep data-prediction step (midpoint in log-SNR) down to ``sigma_down``,
    then fresh noise ``s_noise * alpha' * sigma_up`` (k-diffusion's ancestral split).

    Options: ``eta`` in [0, 1] (0: deterministic DPM-Solver++(2S)), ``s_noise``.
    """

    name = "dpmpp_2s_ancestral"

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0):
        _check_eta(self.name, eta, s_noise)
        tab = table(schedule, grid)
        steps = []
        for i in range(tab.n):
            t0, a0, s0, a1, s1 = tab.t[i], tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]
            down, up = ancestral_split(a1, s1, tab.emh(i), eta)
            up = up * s_noise if s1 > 0 else 0.0
            if down == 0.0 or a0 == 0.0:
                steps.append(_first_order(t0, a1, down, up))
                continue
            S0, Sd = s0 / a0, down / a1
            ts, a_s, s_s = ve_point(schedule, math.sqrt(S0 * Sd))  # lambda midpoint of the step to sigma_down
            q_s = (s_s / a_s) / S0  # exp(-h/2) at the point actually evaluated
            stage = (ts, s_s / s0, a_s * (1.0 - q_s), 0.0)
            steps.append(("two", t0, stage, (down / s0, 0.0, a1 * (1.0 - Sd / S0), up)))
        return steps


class DPMppSDE(_Ancestral2):
    """DPM-Solver++ SDE (k-diffusion's ``sample_dpmpp_sde``) — Lu et al. 2022's second-order
    singlestep method made stochastic: an ancestral first-order stage to log-SNR fraction ``r``
    of the step, then the step to ``sigma_down`` with ``(1 - 1/(2r)) D0 + 1/(2r) D_s`` and fresh
    noise (``eta = 0``: deterministic DPM-Solver++(2S) with stage ``r``).

    Noise: k-diffusion draws its two noises per step from a Brownian tree in VE sigma
    (``BrownianTreeNoiseSampler``), so they are correlated; here each is an independent
    standard normal from the ``generator`` (what k-diffusion does when given any other
    ``noise_sampler``; k-diffusion's own default ``noise_sampler`` for the ancestral samplers).
    The peer-parity test feeds k-diffusion the same draws.

    Options: ``eta`` in [0, 1], ``s_noise``, ``r`` in (0, 1) (the stage's log-SNR fraction).
    """

    name = "dpmpp_sde"

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
        _check_eta(self.name, eta, s_noise)
        if not 0.0 < r < 1.0:
            raise ValueError(f"dpmpp_sde: r (the stage's fraction of the log-SNR step) must lie in (0, 1), got {r!r}")
        tab = table(schedule, grid)
        fac = 1.0 / (2.0 * r)
        steps = []
        for i in range(tab.n):
            t0, a0, s0, a1, s1 = tab.t[i], tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]
            down, up = ancestral_split(a1, s1, tab.emh(i), eta)
            if s1 == 0.0 or a0 == 0.0:
                steps.append(_first_order(t0, a1, down, up * s_noise))
                continue
            S0 = s0 / a0
            ts, a_s, s_s = ve_point(schedule, S0 * tab.emh(i) ** r)
            down_s, up_s = ancestral_split(a_s, s_s, (s_s / a_s) / S0, eta)
            stage = (ts, down_s / s0, a_s * (1.0 - (down_s / a_s) / S0), up_s * s_noise)
            c = a1 * (1.0 - (down / a1) / S0)
            steps.append(("two", t0, stage, (down / s0, (1.0 - fac) * c, fac * c, up * s_noise)))
        return steps


class DPMpp3MSDE(_DPMpp):
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``) — Lu et al. 2022's third-order
    multistep data-prediction method on the SDE: ``exp(-h)`` becomes ``exp(-(1 + eta) h)`` in the
    phi functions and fresh noise of std ``s_noise * sigma' * sqrt(1 - exp(-2 eta h))`` is added.

    ``coefficients="k_diffusion"`` (default) is k-diffusion / ComfyUI (``h phi_3`` weight on the
    second difference, Heun-form warm-up step); ``"exact"`` uses the Taylor-exact ``2 h phi_3``
    and ``"dpm_solver"`` the midpoint warm-up (see ``dpmpp_3m``). ``lower_order_final`` (lower
    orders on the last steps of grids under 15 steps) is on by default: without it, k-diffusion's
    behaviour, 7 uneven steps (``leading`` spacing) land far from the data; pass
    ``lower_order_final=False`` for k-diffusion's exact sequence. On flow models the noise is
    ``sigma' = t'`` times the factor.
    """

    name = "dpmpp_3m_sde"
    order = 3
    max_order = 3
    stochastic = True
    needs = ("x0",)

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, coefficients: str = "k_diffusion",
             lower_order_final: bool = True):
        if not eta >= 0 or s_noise < 0:
            raise ValueError(f"dpmpp_3m_sde: eta and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"dpmpp_3m_sde: coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
        return self._plan(schedule, grid, lower_order_final, float(eta), 2.0 if coefficients == "exact" else 1.0,
                          "heun" if coefficients == "k_diffusion" else "midpoint", s_noise)

    def declared_order(self, **options):
        return 3 if options.get("coefficients") == "exact" else 2

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["eta"] > 0 and opts["s_noise"] > 0


class DPMpp2MSDEHeun(_DPMpp):
    """DPM-Solver++(2M) SDE, Heun form (k-diffusion's ``sample_dpmpp_2m_sde(solver_type="heun")``,
    ComfyUI's ``dpmpp_2m_sde_heun``) — Lu et al. 2022: the second-order correction is
    ``h phi_2((1 + eta) h) (D0 - D1) / r`` instead of the midpoint form of ``dpmpp_2m_sde``.
    ``lower_order_final`` is off by default, as in k-diffusion.
    """

    name = "dpmpp_2m_sde_heun"
    order = 2
    max_order = 2
    stochastic = True
    needs = ("x0",)

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, lower_order_final: bool = False):
        if not eta >= 0 or s_noise < 0:
            raise ValueError(f"dpmpp_2m_sde_heun: eta and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")
        return self._plan(schedule, grid, lower_order_final, float(eta), form="heun", s_noise=s_noise)

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["eta"] > 0 and opts["s_noise"] > 0


@hookimpl
def register_solvers(register):
    for cls in (DPMpp2SAncestral, DPMppSDE, DPMpp3MSDE, DPMpp2MSDEHeun):
        register(cls())
