"""DPM-Solver (Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling
in Around 10 Steps", NeurIPS 2022): the singlestep noise-prediction solvers DPM-Solver-1/2/3 as
k-diffusion's ``sample_dpm_fast`` (fixed steps) and ``sample_dpm_adaptive`` (DPM-Solver-12/23
with a PID step-size controller) use them.

Steps are exponential integrators in the log-SNR ``lambda`` written with the schedule's alpha and
sigma, so they run on every schedule and parametrisation; stages sit at ``lambda + r h``.
"""
import math

import torch

from solverzoo import Solver, hookimpl
from solverzoo.kit import alpha_sigma_at, frame_time, lincomb, table

_R = {2: (0.5,), 3: (1 / 3, 2 / 3)}


def _lam_point(schedule, lam: float):
    t = frame_time("ve", schedule, math.exp(-lam))
    a, s = alpha_sigma_at(schedule, t)
    return t, a, s, math.log(a) - math.log(s)


def _singlestep(schedule, t0, a0, s0, a1, s1, p: int, r1: float | None = None):
    """DPM-Solver-p from (a0, s0) to (a1, s1) as ``(t0, stages, out)``: each stage ``(t, x coef,
    eps coefs)`` and ``out = (x coef, eps coefs)``, all eps coefficients on ``eps_0, eps_1, ...``."""
    lam0 = math.log(a0) - math.log(s0)
    h = math.log(a1) - math.log(s1) - lam0
    rs = (r1,) if (p == 2 and r1 is not None) else _R[p]
    pts = [_lam_point(schedule, lam0 + r * h) for r in rs]
    em = math.expm1(h)
    if p == 2:
        (ts, a_s, s_s, ls), = pts
        r = (ls - lam0) / h
        stage = (ts, a_s / a0, (-s_s * math.expm1(ls - lam0),))
        c = s1 / (2 * r) * em
        return t0, (stage,), (a1 / a0, (-s1 * em + c, -c))
    (t_1, a_1, s_1, l_1), (t_2, a_2, s_2, l_2) = pts
    q1, q2 = (l_1 - lam0) / h, (l_2 - lam0) / h
    b2 = s_2 * (q2 / q1) * (math.expm1(l_2 - lam0) / (l_2 - lam0) - 1)
    stage1 = (t_1, a_1 / a0, (-s_1 * math.expm1(l_1 - lam0),))
    stage2 = (t_2, a_2 / a0, (-s_2 * math.expm1(l_2 - lam0) + b2, -b2))
    b = s1 / q2 * (em / h - 1)
    return t0, (stage1, stage2), (a1 / a0, (-s1 * em + b, 0.0, -b))


def _fast_orders(n: int, nfe: int) -> list[int]:
    """k-diffusion's order pattern for an evaluation budget ``nfe`` on ``floor(nfe / 3) + 1`` steps."""
    if nfe // 3 + 1 != n:
        raise ValueError(f"dpm_fast: nfe={nfe} needs a grid of nfe // 3 + 1 = {nfe // 3 + 1} steps (k-diffusion's "
                         f"recipe), got {n}; build the grid with that many steps (log-SNR uniform in the paper) or "
                         f"leave nfe at 0")
    return [3] * (n - 2) + [2, 1] if nfe % 3 == 0 else [3] * (n - 1) + [nfe % 3]


class DPMFast(Solver):
    """DPM-Solver-fast — Lu et al. 2022, k-diffusion's ``sample_dpm_fast``: singlestep
    DPM-Solver-3 on every grid step (DPM-Solver-1 for a step to sigma = 0 or from alpha = 0).

    Options: ``order`` (1, 2 or 3, the order of every step), ``nfe`` (0: off; else k-diffusion's
    recipe for that budget: ``nfe // 3 + 1`` steps, the last ones of order 2 and 1 or
    ``nfe % 3``; the grid must have that many steps, log-SNR uniform as in the paper).
    """

    name = "dpm_fast"
    order = 3
    evals_per_step = 3
    # On 15-255 NFE (5-85 steps) the fit still sees the pre-asymptotic drop of the first steps (3.58);
    # from 48 to 768 NFE it measures 3.18 (3.15 on 63-1023).
    verify_nfes = (48, 96, 192, 384, 768)

    def plan(self, schedule, grid, *, order: int = 3, nfe: int = 0):
        if order not in (1, 2, 3):
            raise ValueError(f"dpm_fast: order must be 1, 2 or 3, got {order!r}")
        tab = table(schedule, grid)
        orders = _fast_orders(tab.n, int(nfe)) if nfe else [order] * tab.n
        steps = []
        for i, p in enumerate(orders):
            a0, s0, a1, s1 = tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]
            if p == 1 or s1 == 0.0 or a0 == 0.0:
                steps.append((tab.t[i], None, (a1, s1)))  # DPM-Solver-1 = DDIM: x' = alpha' x0 + sigma' eps
            else:
                steps.append(_singlestep(schedule, tab.t[i], a0, s0, a1, s1, p))
        return steps

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (t0, stages, out) in enumerate(plan):
            pred = denoiser(x, t0)
            if stages is None:
                x = pred.lin(*out)
            else:
                eps = [pred.eps]
                for t, cx, ce in stages:
                    eps.append(denoiser(lincomb(x, cx, list(zip(ce, eps))), t).eps)
                x = lincomb(x, out[0], list(zip(out[1], eps)))
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x

    def declared_order(self, **options):
        return options.get("order", 3)


class _PID:
    """PID step-size controller on the log-SNR step (k-diffusion's ``PIDStepSizeController``,
    after Söderlind 2003), with the arctan limiter."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.errs: list[float] = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b[0] * self.errs[1] ** self.b[1] * self.errs[2] ** self.b[2]
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


class _VEProblem:
    """One sample's PF-ODE in the VE frame with log-SNR time: ``y = x / alpha``, ``eps(y, lambda)``."""

    def __init__(self, denoiser, schedule):
        self.den, self.schedule, self.nfe = denoiser, schedule, 0

    def eps(self, y, lam):
        t = frame_time("ve", self.schedule, math.exp(-lam))
        a, s = alpha_sigma_at(self.schedule, t)
        self.nfe += 1
        return self.den(y * a, t).eps  # d y / d S = eps in the VE frame

    def step(self, y, lam, h, eps0, p, r1, cache):
        """DPM-Solver-p (VE form: sigma = exp(-lambda)) from lambda to lambda + h; ``cache`` keeps
        stage evaluations by their r (DPM-Solver-2 with r1 = 1/3 shares DPM-Solver-3's first stage)."""
        sig = lambda lam_: math.exp(-lam_)  # noqa: E731
        s1 = sig(lam + h)
        if p == 1:
            return y - s1 * math.expm1(h) * eps0

        def stage(r, y_r):
            if r not in cache:
                cache[r] = self.eps(y_r, lam + r * h)
            return cache[r]

        if p == 2:
            e1 = stage(r1, y - sig(lam + r1 * h) * math.expm1(r1 * h) * eps0)
            return y - s1 * math.expm1(h) * eps0 - s1 / (2 * r1) * math.expm1(h) * (e1 - eps0)
        r1, r2 = 1 / 3, 2 / 3
        e1 = stage(r1, y - sig(lam + r1 * h) * math.expm1(r1 * h) * eps0)
        u2 = (y - sig(lam + r2 * h) * math.expm1(r2 * h) * eps0
              - sig(lam + r2 * h) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - eps0))
        e2 = stage(r2, u2)
        return y - s1 * math.expm1(h) * eps0 - s1 / r2 * (math.expm1(h) / h - 1) * (e2 - eps0)


class DPMAdaptive(Solver):
    """DPM-Solver-12 / 23 adaptive — Lu et al. 2022 (Algorithm 4), k-diffusion's
    ``sample_dpm_adaptive``: an embedded pair of DPM-Solver steps (orders 1+2 or 2+3) with a PID
    step-size controller on the log-SNR step.

    Only the grid's first and last times matter (``adaptive``): it integrates from ``grid[0]`` to
    the last grid time with sigma > 0 and takes a step to sigma = 0 (or from alpha = 0) as an
    explicit first-order step. Each sample is integrated with its own step sizes (k-diffusion
    shares one error norm over the whole batch), so a sample does not depend on the batch it is
    in; the denoiser is called on one sample at a time. The callback gets, once at the end,
    ``nfe`` (the largest per-sample count of model evaluations), ``nfe_per_sample``,
    ``n_accept`` and ``n_reject``; ``SampleResult.nfe`` counts every single-sample call.

    Options (k-diffusion's): ``order`` (2 or 3), ``rtol``, ``atol`` (on the VE-frame state
    ``x / alpha``), ``h_init``, ``pcoeff``, ``icoeff``, ``dcoeff``, ``accept_safety``.
    """

    name = "dpm_adaptive"
    order = 3
    evals_per_step = 3
    adaptive = True

    def plan(self, schedule, grid, *, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
             pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81):
        if order not in (2, 3):
            raise ValueError(f"dpm_adaptive: order must be 2 or 3 (DPM-Solver-12 or -23), got {order!r}")
        if not (rtol > 0 or atol > 0):
            raise ValueError("dpm_adaptive: rtol or atol must be > 0")
        tab = table(schedule, grid)
        n = tab.n
        start = 1 if tab.alpha[0] == 0.0 else 0
        end = n - 1 if tab.to_zero(n - 1) else n
        pre = (tab.t[0], (tab.alpha[1], tab.sigma[1])) if start else None
        post = (tab.t[n - 1], (tab.alpha[n], tab.sigma[n])) if end < n else None
        span = (tab.lam[start], tab.lam[end], tab.alpha[start], tab.alpha[end]) if end > start else None
        return {"schedule": schedule, "pre": pre, "span": span, "post": post, "order": order,
                "ctl": (h_init, pcoeff, icoeff, dcoeff, accept_safety), "tol": (rtol, atol)}

    def _solve_one(self, prob, y, plan):
        lam, lam_end, _, _ = plan["span"]
        order, (rtol, atol) = plan["order"], plan["tol"]
        h_init, p, i, d, safety = plan["ctl"]
        pid = _PID(abs(h_init), p, i, d, order, safety)
        y_prev, info = y, {"n_accept": 0, "n_reject": 0}
        while lam < lam_end - 1e-5:
            h = min(lam_end, lam + pid.h) - lam
            cache = {}
            eps0 = prob.eps(y, lam)
            if order == 2:
                low, high = (prob.step(y, lam, h, eps0, q, 0.5, cache) for q in (1, 2))
            else:
                low, high = (prob.step(y, lam, h, eps0, q, 1 / 3, cache) for q in (2, 3))
            delta = torch.clamp(rtol * torch.maximum(low.abs(), y_prev.abs()), min=atol)
            error = float(torch.linalg.norm((low - high) / delta)) / low.numel() ** 0.5
            if pid.propose(error):
                y_prev, y, lam = low, high, lam + h
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
        return y, info

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        sched, infos = plan["schedule"], []
        if plan["pre"] is not None:
            x = denoiser(x, plan["pre"][0]).lin(*plan["pre"][1])
        nfes = [1 if plan["pre"] is not None else 0] * x.shape[0]
        if plan["span"] is not None:
            _, _, a0, a1 = plan["span"]
            rows = []
            for b in range(x.shape[0]):
                prob = _VEProblem(denoiser, sched)
                y, info = self._solve_one(prob, x[b:b + 1] / a0, plan)
                rows.append(y * a1)
                nfes[b] += prob.nfe
                infos.append(info)
            x = torch.cat(rows)
        x0 = x
        if plan["post"] is not None:
            pred = denoiser(x, plan["post"][0])
            x, x0 = pred.lin(*plan["post"][1]), pred.x0
            nfes = [k + 1 for k in nfes]
        if callback is not None:
            callback({"i": len(grid) - 2, "t": grid[-1], "x": x, "x0": x0, "nfe": max(nfes), "nfe_per_sample": nfes,
                      "n_accept": sum(f["n_accept"] for f in infos), "n_reject": sum(f["n_reject"] for f in infos)})
        return x


@hookimpl
def register_solvers(register):
    register(DPMFast())
    register(DPMAdaptive())
