"""DPM-Solver-2 steps in the k-diffusion style (Crowson's ``sample_dpm_2`` / ``sample_dpm_2_ancestral``,
after Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps", NeurIPS 2022, and Karras et al., "Elucidating the Design Space of Diffusion-Based
Generative Models", NeurIPS 2022, Algorithm 2).

Both solvers work in the VE frame ``y = x / alpha`` against ``S = sigma / alpha`` (k-diffusion's
sigma), where the probability-flow ODE is ``dy/dS = eps``; the plan turns every VE point into
schedule time, so they run on any schedule and parametrisation. Also home of the small helpers the
other k-diffusion-style solvers share (:func:`ve_point`, :func:`ancestral_split`).
"""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import alpha_sigma_at, frame_time, table


def ve_point(schedule, sve: float) -> tuple[float, float, float]:
    """``(t, alpha, sigma)`` of the schedule where the VE sigma ``sigma / alpha`` equals ``sve``
    (clamped to the schedule's time range)."""
    t = min(frame_time("ve", schedule, sve), schedule.t_max)
    a, s = alpha_sigma_at(schedule, t)
    return t, a, s


def ancestral_split(a1: float, s1: float, q: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ``get_ancestral_step`` in x-space: ``(alpha' sigma_down, alpha' sigma_up)``.

    With VE sigmas ``S -> S'`` (``q = S' / S = exp(-h)``, 0 from alpha = 0) k-diffusion takes
    ``sigma_up = min(S', eta S' sqrt(1 - q^2))`` and ``sigma_down = sqrt(S'^2 - sigma_up^2)``;
    multiplied by ``alpha'`` these are the deterministic and the fresh-noise parts of the
    state's noise at the step's end (so the result stays finite on every schedule, flow included).
    """
    up = min(s1, eta * s1 * math.sqrt(max(1.0 - q * q, 0.0)))
    return math.sqrt(max(s1 * s1 - up * up, 0.0)), up


def _check_eta(name: str, eta: float, s_noise: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"{name}: eta must lie in [0, 1] (0: deterministic, 1: ancestral), got {eta!r}")
    if s_noise < 0:
        raise ValueError(f"{name}: s_noise must be >= 0, got {s_noise!r}")


def _dpm2_stage(schedule, t0: float, a0: float, s0: float, a1: float, s_end_ve: float):
    """The DPM-Solver-2 step of k-diffusion from VE sigma ``S0 = s0 / a0`` to ``s_end_ve``: an
    Euler half-step to the geometric mean, then the full step with the midpoint derivative.

    Returns ``(t0, t_mid, (x coef, eps coef) of the stage, (x coef, eps coef) of the step)``.
    """
    S0 = s0 / a0
    t_mid, a_mid, s_mid = ve_point(schedule, math.exp(0.5 * (math.log(S0) + math.log(s_end_ve))))
    S_mid = s_mid / a_mid  # the VE sigma where the model is actually evaluated
    return ("dpm2", t0, t_mid, (a_mid / a0, a_mid * (S_mid - S0)), (a1 / a0, a1 * (s_end_ve - S0)))


def _run_step(denoiser, x, step):
    """One planned step without its noise: ``("euler", t0, a, b)`` is ``a x0 + b eps`` (the
    first-order step, exact identity of DDIM), ``("dpm2", ...)`` the two-stage step."""
    if step[0] == "euler":
        pred = denoiser(x, step[1])
        return pred.lin(step[2], step[3]), pred.x0
    _, t0, t_mid, (cx2, ce2), (cx, ce) = step
    pred = denoiser(x, t0)
    x2 = pred.lin(0.0, ce2, cx2, x)
    return denoiser(x2, t_mid).lin(0.0, ce, cx, x), pred.x0


class DPM2(Solver):
    """DPM-Solver-2 (k-diffusion's ``sample_dpm_2``) — Lu et al. 2022's second-order solver with
    the midpoint at the geometric mean of the VE sigmas, plus EDM's optional churn (Karras et al.
    2022, Algorithm 2). A step to sigma = 0 (or from alpha = 0) is a first-order step.

    Options: ``s_churn``, ``s_tmin``, ``s_tmax`` (VE sigmas), ``s_noise`` (EDM's churn; 0 churn is
    the deterministic ODE solver).
    """

    name = "dpm_2"
    order = 2
    evals_per_step = 2

    def plan(self, schedule, grid, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
             s_noise: float = 1.0):
        if s_churn < 0:
            raise ValueError(f"dpm_2: s_churn must be >= 0, got {s_churn!r}")
        tab = table(schedule, grid)
        n, steps = tab.n, []
        for i in range(n):
            t0, a0, s0, a1, s1 = tab.t[i], tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]
            churn = None
            S0 = s0 / a0 if a0 > 0 else math.inf
            gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= S0 <= s_tmax and a0 > 0 else 0.0
            if gamma > 0:  # raise the noise to S_hat = S0 (1 + gamma) exactly along the forward process
                th, ah, sh = ve_point(schedule, S0 * (1.0 + gamma))
                std = s_noise * ah * math.sqrt(max((sh / ah) ** 2 - S0 * S0, 0.0))
                churn, (t0, a0, s0) = (ah / a0, std), (th, ah, sh)
            if s1 == 0.0 or a0 == 0.0:
                steps.append((churn, ("euler", t0, a1, s1)))
            else:
                steps.append((churn, _dpm2_stage(schedule, t0, a0, s0, a1, s1 / a1)))
        return steps

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (churn, step) in enumerate(plan):
            if churn is not None:
                x = x * churn[0] + churn[1] * randn_like(x, generator)
            x, x0 = _run_step(denoiser, x, step)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": x0})
        return x

    def is_stochastic(self, **options):
        return options.get("s_churn", 0.0) > 0 and options.get("s_noise", 1.0) > 0


class DPM2Ancestral(Solver):
    """DPM-Solver-2 ancestral (k-diffusion's ``sample_dpm_2_ancestral``) — Lu et al. 2022's
    second-order step down to ``sigma_down``, then fresh noise of std ``s_noise * sigma_up``
    (k-diffusion's ancestral split, :func:`ancestral_split`).

    The noise is ``alpha' * sigma_up`` in x-space, so the step is the right ancestral step on any
    schedule: on rectified flow (``alpha = 1 - t``, ``sigma = t``) the state after a step has
    exactly the forward marginal's noise ``t'`` when the model is exact. Options: ``eta`` in
    [0, 1] (0: the deterministic ``dpm_2``), ``s_noise``.
    """

    name = "dpm_2_ancestral"
    order = 2
    evals_per_step = 2
    stochastic = True

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0):
        _check_eta(self.name, eta, s_noise)
        tab = table(schedule, grid)
        steps = []
        for i in range(tab.n):
            t0, a0, s0, a1, s1 = tab.t[i], tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]
            down, up = ancestral_split(a1, s1, tab.emh(i), eta)
            if down == 0.0 or a0 == 0.0:
                step = ("euler", t0, a1, down)
            else:
                step = _dpm2_stage(schedule, t0, a0, s0, a1, down / a1)
            steps.append((step, up * s_noise))
        return steps

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (step, std) in enumerate(plan):
            x, x0 = _run_step(denoiser, x, step)
            if std > 0:
                x = x + std * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": x0})
        return x

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["eta"] > 0 and opts["s_noise"] > 0


@hookimpl
def register_solvers(register):
    register(DPM2())
    register(DPM2Ancestral())
