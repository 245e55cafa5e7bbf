"""SA-Solver (Xue et al., "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models",
NeurIPS 2023, arXiv:2309.05019): a stochastic Adams predictor-corrector on the data prediction, in
log-SNR ``lambda``, with a noise control ``tau(t)``.

The SDE family of the paper, in the ``(alpha, sigma)`` frame of any schedule, has the exact solution
over a step ``lambda_s -> lambda_t`` (``h = lambda_t - lambda_s``)::

    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s
          + (1 + tau^2) sigma_t e^{-tau^2 lambda_t} int_{lambda_s}^{lambda_t} e^{(1 + tau^2) l} x0(l) dl
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) z,

and SA-Solver replaces ``x0(l)`` by the Lagrange interpolant of the data predictions at the last
``p`` grid points (predictor, explicit) or at the new point and the last ``q - 1`` ones (corrector,
implicit in form but evaluated at the predicted state: "PEC"). The weight of each prediction is
``(1 + tau^2) alpha_t h int_{-1}^{0} e^{(1 + tau^2) h v} L_j(v) dv`` (``v = (l - lambda_t) / h``),
integrated in closed form. The corrector adds the predictor's own noise draw again (the same
Brownian increment), as the paper and both peers do. With ``tau = 0`` (``eta = 0``) the method is the
deterministic multistep solver of the probability-flow ODE, of order ``min(p + 1, q)`` (``p`` without
corrector). On a flow model (``alpha = 1 - t``, ``sigma = t``) the noise ``sigma_t sqrt(1 - e^{-2 tau^2 h})``
keeps exactly the forward marginal's noise level; a step from ``alpha = 0`` is first order (exact there).

Sources for the algorithmic choices (read, not copied): diffusers 0.42's ``SASolverScheduler`` (tau
decided at the step's start time, corrector order ``min(q, step + 1)``, lowered final orders) and
ComfyUI's ``sample_sa_solver`` (option names, ``s_noise``, the PECE variant, ``simple_order_2``).
"""
import math

import numpy as np

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import lincomb, table

MAX_ORDER = 6


def _exp_moments(a: float, m_max: int) -> list[float]:
    """``J_m = int_{-1}^{0} e^{a v} v^m dv`` for ``m = 0..m_max`` (``a > 0``): a power series for small
    ``a`` (no cancellation), the integration-by-parts recursion otherwise."""
    if a < 1.0:
        out = []
        for m in range(m_max + 1):
            total, term, k = 0.0, 1.0, 0  # term = a^k / k!
            while True:
                add = term * (-1) ** (k + m) / (k + m + 1)
                total += add
                k += 1
                term *= a / k
                if abs(term) < 1e-18 * max(abs(total), 1e-300) or k > 60:
                    break
            out.append(total)
        return out
    ema = math.exp(-a)
    out = [-math.expm1(-a) / a]
    for m in range(1, m_max + 1):
        out.append(-((-1) ** m) * ema / a - m / a * out[-1])
    return out


def _weights(tab, nodes: list[int], start: int, end: int, tau: float, simple2: bool, corrector: bool):
    """``(x coef, weights of the data predictions at grid indices nodes)`` of one SA step from grid
    point ``start`` to ``end`` (``nodes`` newest first)."""
    a1, s0, s1 = tab.alpha[end], tab.sigma[start], tab.sigma[end]
    tau2 = tau * tau
    tm = 1.0 + tau2
    emh = tab.emh(start)  # exp(-h): 0 for a step to sigma = 0 or from alpha = 0
    x_coef = (s1 / s0) * emh ** tau2 if s1 > 0 else 0.0
    c0 = a1 * -math.expm1(tm * math.log(emh)) if emh > 0 else a1  # alpha_t (1 - e^{-(1 + tau^2) h})
    if len(nodes) == 1:
        return x_coef, (c0,)
    h = tab.h(start)
    if simple2 and len(nodes) == 2:  # SA-Solver paper, appendix D (diffusers always uses these)
        if corrector:
            b_new = a1 * 0.5 * tm * h
            return x_coef, (b_new, c0 - b_new)
        b_old = a1 * 0.5 * tm * h * h / (tab.lam[nodes[1]] - tab.lam[start])
        return x_coef, (c0 - b_old, b_old)
    vs = [(tab.lam[k] - tab.lam[end]) / h for k in nodes]
    moments = _exp_moments(tm * h, len(nodes) - 1)
    out = []
    for j, vj in enumerate(vs):
        others = [v for i, v in enumerate(vs) if i != j]
        poly = np.poly(others)[::-1] / np.prod([vj - v for v in others])  # increasing powers of v
        out.append(float(tm * a1 * h * sum(c * mom for c, mom in zip(poly, moments))))
    return x_coef, tuple(out)


def _noise_std(tab, k: int, tau: float, s_noise: float) -> float:
    """``s_noise * sigma' sqrt(1 - e^{-2 tau^2 h})``, the std of step ``k``'s fresh noise (0 at sigma' = 0)."""
    if tau == 0.0 or s_noise == 0.0 or tab.to_zero(k):
        return 0.0
    emh = tab.emh(k)
    frac = 1.0 if emh == 0.0 else -math.expm1(2.0 * tau * tau * math.log(emh))
    return s_noise * tab.sigma[k + 1] * math.sqrt(max(frac, 0.0))


def _finite_order(tab, newest: int, order: int) -> int:
    """Lower ``order`` until every interpolation node ``newest, newest - 1, ...`` has a finite log-SNR."""
    while order > 1 and not all(math.isfinite(tab.lam[newest - k]) for k in range(order)):
        order -= 1
    return order


def _tau_of(schedule, eta: float, window: tuple[float, float]):
    lo, hi = window
    span = schedule.t_max - schedule.t_min
    return lambda t: eta if lo <= (t - schedule.t_min) / span <= hi else 0.0


def _check(name, predictor_order, corrector_order, eta, s_noise, tau_window):
    if predictor_order not in range(1, MAX_ORDER + 1):
        raise ValueError(f"{name}: predictor_order must be an integer in 1..{MAX_ORDER}, got {predictor_order!r}")
    if corrector_order not in range(0, MAX_ORDER + 1):
        raise ValueError(f"{name}: corrector_order must be an integer in 0..{MAX_ORDER} (0: no corrector), "
                         f"got {corrector_order!r}")
    if not eta >= 0 or not s_noise >= 0:
        raise ValueError(f"{name}: eta (the value of tau) and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")
    try:
        lo, hi = (float(v) for v in tau_window)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: tau_window must be a pair (start, end) of fractions of the schedule's time axis, "
                         f"got {tau_window!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{name}: tau_window must satisfy 0 <= start <= end <= 1, got {tau_window!r}")


class SASolver(Solver):
    """SA-Solver — Xue et al. 2023 (NeurIPS): stochastic Adams predictor (order ``predictor_order``)
    and corrector (order ``corrector_order``) on the data prediction with noise control ``tau``,
    PEC mode (one evaluation per step; ComfyUI's ``sa_solver``, diffusers' ``SASolverScheduler``).

    Options: ``predictor_order`` (1-6, default 3) and ``corrector_order`` (0-6, default 4; 0: no
    corrector), ComfyUI's defaults (diffusers' are 2 and 2); ``eta``: the value of ``tau`` inside
    ``tau_window`` (0 outside; ``eta = 0``: the deterministic ODE solver of order
    ``min(predictor_order + 1, corrector_order)``); ``tau_window``: where noise is on, as fractions
    ``(t - t_min) / (t_max - t_min)`` of the schedule's time axis at the step's start (default
    ``(0.2, 0.8)``: the paper's and diffusers' ``200 <= t <= 800`` of 1000 training steps, ComfyUI's
    20-80 %); ``s_noise`` scales the injected noise; ``simple_order_2``: the paper's simplified
    order-2 weights (appendix D; diffusers always uses them, ComfyUI's default is off);
    ``lower_order_final``: lower the orders of the last steps of grids under 15 steps (diffusers
    lowers them on every grid, which caps its order at 2 on long grids). A step to sigma = 0 is the
    denoising step ``x' = alpha' x0`` (without a wasted corrector in PEC mode).
    """

    name = "sa_solver"
    order = 4
    stochastic = True
    needs = ("x0",)
    pece = False
    # with eta = 0: 3.54 on 16-256 NFE, 3.77 on 48-768 for the declared 4 (predictor 3, corrector 4)
    verify_nfes = (48, 96, 192, 384, 768)

    def plan(self, schedule, grid, *, predictor_order: int = 3, corrector_order: int = 4, eta: float = 1.0,
             tau_window: tuple = (0.2, 0.8), s_noise: float = 1.0, simple_order_2: bool = False,
             lower_order_final: bool = True):
        _check(self.name, predictor_order, corrector_order, eta, s_noise, tau_window)
        tab = table(schedule, grid)
        n, tau_of = tab.n, _tau_of(schedule, float(eta), tuple(tau_window))
        taus = [tau_of(t) for t in tab.t[:n]]
        low = lower_order_final and n < 15
        steps, prev_std = [], 0.0
        for k in range(n):
            corr = None
            to_zero = tab.to_zero(k)
            if k > 0 and corrector_order > 0 and not (to_zero and not self.pece):
                q = min(corrector_order, k + 1, n - k + 2 if low else k + 1)
                q = _finite_order(tab, k, q)
                a, w = _weights(tab, [k - i for i in range(q)], k - 1, k, taus[k - 1], simple_order_2, True)
                corr = (a, w, prev_std > 0)
            p = 1 if to_zero else min(predictor_order, k + 1, n - k if low else k + 1)
            p = _finite_order(tab, k, p)
            a, w = _weights(tab, [k - i for i in range(p)], k, k + 1, taus[k], simple_order_2, False)
            std = _noise_std(tab, k, taus[k], s_noise)
            steps.append((tab.t[k], corr, (a, w), std))
            prev_std = std
        return tuple(steps), max(predictor_order, corrector_order)

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        steps, keep = plan
        hist, xc, xp, noise = [], x, x, None
        for k, (t, corr, (ap, bp), std) in enumerate(steps):
            d = denoiser(xp, t).x0
            hist = [d] + hist[:keep - 1]
            if corr is None:
                xc = xp
            else:
                ac, bc, noisy = corr
                xc = lincomb(xc, ac, list(zip(bc, hist)))
                if noisy:
                    xc = xc + noise  # the predictor's own draw: the same Brownian increment
                if self.pece:
                    d = denoiser(xc, t).x0
                    hist[0] = d
            xp = lincomb(xc, ap, list(zip(bp, hist)))
            if std > 0:
                noise = std * randn_like(xp, generator)
                xp = xp + noise
            if callback is not None:
                callback({"i": k, "t": grid[k + 1], "x": xp, "x0": d})
        return xp

    def declared_order(self, **options):
        opts = {**self.options(), **options}
        p, q = opts["predictor_order"], opts["corrector_order"]
        return p if q == 0 else min(p + 1, q)

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["eta"] > 0 and opts["s_noise"] > 0


class SASolverPECE(SASolver):
    """SA-Solver PECE — Xue et al. 2023 (NeurIPS): :class:`SASolver` with the model evaluated again at
    the corrected state (predict, evaluate, correct, evaluate; ComfyUI's ``sa_solver_pece``), two
    evaluations per step after the first. Options as ``sa_solver``.
    """

    name = "sa_solver_pece"
    evals_per_step = 2
    pece = True
    # with eta = 0: 4.17 on 16-256 NFE but 3.37-3.64 on the ladders up to 1024 (pre-asymptotic wiggle);
    # 3.72 on 128-2048 for the declared 4
    verify_nfes = (128, 256, 512, 1024, 2048)


@hookimpl
def register_solvers(register):
    register(SASolver())
    register(SASolverPECE())
