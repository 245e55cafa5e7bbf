"""Helpers for writing solvers: float64 schedule tables on the grid, integration frames,
order selection for multistep methods, and one shared explicit Runge-Kutta mechanism.

Frames. Every path ``x = alpha x0 + sigma eps`` becomes a straight line in two frames:
``ve``: ``y = x / alpha`` against ``s = sigma / alpha`` (k-diffusion / EDM; ``dy/ds = eps``), and
``flow``: ``y = x / (alpha + sigma)`` against ``u = sigma / (alpha + sigma)`` (rectified flow;
``dy/du = eps - x0``). The flow frame stays finite where ``alpha = 0`` (the start of a
rectified-flow or zero-terminal-SNR schedule); ``auto`` picks it there and ``ve`` elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from solverzoo.noise import Generators, randn_like
from solverzoo.schedules import NoiseSchedule
from solverzoo.solver import Callback, Solver

FRAMES = ("auto", "ve", "flow")


@dataclass(frozen=True)
class Table:
    """alpha, sigma and lambda of the schedule at every grid time, as Python floats (float64)."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    lam: list[float]

    @property
    def n(self) -> int:
        return len(self.t) - 1

    def h(self, i: int) -> float:
        """Log-SNR step ``lambda_{i+1} - lambda_i`` (inf for a step to sigma = 0 or from alpha = 0)."""
        return float(self.lam[i + 1] - self.lam[i])

    def emh(self, i: int) -> float:
        """``exp(-h_i)`` computed as a ratio, finite (0) where h is infinite."""
        return float((self.sigma[i + 1] / self.sigma[i]) * (self.alpha[i] / self.alpha[i + 1]))

    def to_zero(self, i: int) -> bool:
        return self.sigma[i + 1] == 0.0


def table(schedule: NoiseSchedule, grid: Tensor) -> Table:
    t = torch.as_tensor(grid, dtype=torch.float64).cpu()
    a, s = schedule.alpha_sigma(t)
    with np.errstate(divide="ignore"):
        lam = np.log(a.numpy()) - np.log(s.numpy())
    return Table(t.tolist(), a.tolist(), s.tolist(), lam.tolist())


def alpha_sigma_at(schedule: NoiseSchedule, t: float) -> tuple[float, float]:
    """``(alpha, sigma)`` at one time, as Python floats (host, for plans)."""
    a, s = schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
    return float(a), float(s)


def expm1_neg(h: float) -> float:
    """``exp(-h) - 1``, exact for small h, -1 for h = inf."""
    return -1.0 if math.isinf(h) else math.expm1(-h)


def multistep_orders(tab: Table, order: int, lower_order_final: bool = True, final_window: int = 15) -> list[int]:
    """Order of each step of a multistep method: warm up (1, 2, ...), drop to first order for a
    step to sigma = 0 (lambda = inf), and with ``lower_order_final`` lower the last steps of
    grids shorter than ``final_window`` (diffusers' convention). A step whose history reaches
    an infinite log-SNR (alpha = 0) uses only the finite part of it."""
    n = tab.n
    orders = []
    for i in range(n):
        p = min(order, i + 1)
        if tab.to_zero(i):
            p = 1
        if lower_order_final and n < final_window:
            p = min(p, n - i)
        while p > 1 and not math.isfinite(tab.lam[i - p + 1]):
            p -= 1
        orders.append(p)
    return orders


def lincomb(x: Tensor, a: float, terms: Sequence[tuple[float, Tensor]]) -> Tensor:
    """``a * x + sum(c * d)`` skipping zero coefficients (decided on the host)."""
    out = x if a == 1.0 else x * a
    for c, d in terms:
        if c != 0.0:
            out = out.add(d, alpha=c)
    return out


# -- frames -------------------------------------------------------------------------------------
def resolve_frame(frame: str, schedule: NoiseSchedule, alpha_start: float) -> str:
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    if frame == "auto":
        return "flow" if (schedule.name == "flow" or alpha_start == 0.0) else "ve"
    if frame == "ve" and alpha_start == 0.0:
        raise ValueError("frame='ve' cannot start where alpha = 0 (sigma/alpha is infinite); use frame='flow' or 'auto'")
    return frame


def frame_coords(frame: str, alpha: float, sigma: float) -> tuple[float, float]:
    """``(c, s)`` with ``y = x / c`` and frame time ``s`` (Python floats)."""
    alpha, sigma = float(alpha), float(sigma)
    if frame == "ve":
        return alpha, sigma / alpha
    return alpha + sigma, sigma / (alpha + sigma)


def frame_time(frame: str, schedule: NoiseSchedule, s: float) -> float:
    """Schedule time at frame time ``s``."""
    sve = s if frame == "ve" else (s / (1.0 - s) if s < 1.0 else math.inf)
    if sve == 0.0:
        return schedule.t_zero
    if math.isinf(sve):
        return schedule.t_max
    return float(schedule.t_of_sigma_ve(torch.tensor(sve, dtype=torch.float64)))


# -- explicit Runge-Kutta in a frame ----------------------------------------------------------
@dataclass(frozen=True)
class RKStep:
    churn: tuple[float, float] | None  # (x scale, noise std) of EDM's noise injection
    stages: tuple[tuple[float, float, tuple[float, ...]], ...]  # (t, x coef, coefs of earlier derivatives)
    out: tuple[float, tuple[float, ...]]  # (x coef, coefs of the stage derivatives)


@dataclass(frozen=True)
class RKPlan:
    frame: str
    steps: tuple[RKStep, ...]


EULER_TABLEAU = ((), (1.0,), (0.0,))


class RungeKutta(Solver):
    """Explicit Runge-Kutta in the ve or flow frame, with EDM's optional churn.

    Subclasses set ``tableau = (A, b, c)``: ``A`` the strictly lower rows (one tuple per stage
    after the first), ``b`` the weights and ``c`` the nodes.
    """

    tableau: tuple = EULER_TABLEAU

    def plan(self, schedule, grid, *, frame: str = "auto", final_step: str = "euler", s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> RKPlan:
        if final_step not in ("euler", "full"):
            raise ValueError("final_step must be 'euler' (first-order step to sigma = 0, EDM's choice) or 'full'")
        if s_churn < 0:
            raise ValueError(f"s_churn must be >= 0, got {s_churn}")
        tab = table(schedule, grid)
        frame = resolve_frame(frame, schedule, float(tab.alpha[0]))
        steps = []
        for i in range(tab.n):
            a0, s0 = float(tab.alpha[i]), float(tab.sigma[i])
            churn, t_hat = None, float(tab.t[i])
            sve = s0 / a0 if a0 > 0 else math.inf
            gamma = min(s_churn / tab.n, math.sqrt(2.0) - 1.0) if (s_churn > 0 and s_tmin <= sve <= s_tmax and a0 > 0) else 0.0
            if gamma > 0:  # EDM Algorithm 2: raise the noise level, exactly along the forward process
                t_hat = min(frame_time("ve", schedule, sve * (1.0 + gamma)), schedule.t_max)
                ah, sh = alpha_sigma_at(schedule, t_hat)
                ratio = ah / a0
                churn = (ratio, s_noise * math.sqrt(max(sh * sh - (ratio * s0) ** 2, 0.0)))
                a0, s0 = ah, sh
            A, b, c = EULER_TABLEAU if (final_step == "euler" and tab.to_zero(i)) else self.tableau
            c0, u0 = frame_coords(frame, a0, s0)
            c1, u1 = frame_coords(frame, float(tab.alpha[i + 1]), float(tab.sigma[i + 1]))
            H = u1 - u0
            stages = [(t_hat, 1.0, ())]
            for k in range(1, len(b)):
                tk = frame_time(frame, schedule, u0 + c[k] * H)
                ck, _ = frame_coords(frame, *alpha_sigma_at(schedule, tk))
                stages.append((tk, ck / c0, tuple(ck * H * a for a in A[k - 1])))
            steps.append(RKStep(churn, tuple(stages), (c1 / c0, tuple(c1 * H * w for w in b))))
        return RKPlan(frame, tuple(steps))

    def loop(self, denoiser, x, grid, plan: RKPlan, *, generator: Generators = None, callback: Callback | None = None):
        flow = plan.frame == "flow"
        for i, step in enumerate(plan.steps):
            if step.churn is not None:
                x = x * step.churn[0] + step.churn[1] * randn_like(x, generator)
            if len(step.stages) == 1:  # one stage (Euler): fold the step into a single axpby of (x, out)
                pred = denoiser(x, step.stages[0][0])
                b = step.out[1][0]
                x = pred.lin(-b if flow else 0.0, b, step.out[0], x)
                if callback is not None:
                    callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
                continue
            ds = []
            for t_k, xc, coefs in step.stages:
                pred = denoiser(lincomb(x, xc, list(zip(coefs, ds))), t_k)
                if not ds:
                    x0 = pred.x0
                ds.append(pred.eps - pred.x0 if flow else pred.eps)
            x = lincomb(x, step.out[0], list(zip(step.out[1], ds)))
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": x0})
        return x

    def is_stochastic(self, **options) -> bool:
        return options.get("s_churn", 0.0) > 0
