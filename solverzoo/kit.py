"""The solver-author kit: everything a solver plugin needs, in one public module.

A solver is a :class:`Solver` subclass with a host-side ``plan`` (float64 coefficients from
the schedule and the explicit grid) and a device-side ``loop`` (tensor arithmetic and
denoiser calls only). This module re-exports that base class and gives the helpers the
built-in solvers are written with:

* the shortest route, :class:`RungeKutta`: an explicit Runge-Kutta method defined by its
  Butcher tableau (frames, EDM churn, final step and the fused Euler step come with it)::

      class Ralston(RungeKutta):
          \"\"\"Ralston — second-order Runge-Kutta with minimum error bound (Ralston 1962).\"\"\"
          name, order = "ralston", 2
          tableau = (((2 / 3,),), (1 / 4, 3 / 4), (0.0, 2 / 3))  # (A, b, c)

* schedule tables on the grid (:class:`Table`, :func:`table`, :func:`alpha_sigma_at`) and
  log-SNR helpers (:func:`expm1_neg`), order selection for multistep methods
  (:func:`multistep_orders`) and host-decided linear combinations (:func:`lincomb`);
* integration frames (:data:`FRAMES`, :func:`resolve_frame`, :func:`frame_coords`,
  :func:`frame_time`);
* injected randomness (:data:`Generators`, :func:`randn_like`).

Frames. Every path ``x = alpha x0 + sigma eps`` becomes a straight line in two frames:
``ve``: ``y = x / alpha`` against ``s = sigma / alpha`` (k-diffusion / EDM; ``dy/ds = eps``), and
``flow``: ``y = x / (alpha + sigma)`` against ``u = sigma / (alpha + sigma)`` (rectified flow;
``dy/du = eps - x0``). The flow frame stays finite where ``alpha = 0`` (the start of a
rectified-flow or zero-terminal-SNR schedule); ``auto`` picks it there and ``ve`` elsewhere.

Stability. The names in ``__all__`` are the public solver-author API. Before 1.0 they may
still change, but only in a minor release (0.x -> 0.x+1), never in a patch release, and each
change is listed in the release notes with the replacement; a removed name keeps working with a
``DeprecationWarning`` for at least one minor release. Names not in ``__all__`` (and the
fields of :class:`RKStep` / :class:`RKPlan`, which describe an internal plan) may change at any
time. From 1.0 on, ``__all__`` follows semantic versioning. Check a solver against the
contract with ``solverzoo conformance NAME`` (or :mod:`solverzoo.testing`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from solverzoo.noise import Generators, randn_like
from solverzoo.schedules import NoiseSchedule
from solverzoo.solver import Callback, Solver

__all__ = [
    "Solver", "Callback", "Generators", "randn_like",
    "Table", "table", "alpha_sigma_at", "expm1_neg", "multistep_orders", "lincomb",
    "FRAMES", "resolve_frame", "frame_coords", "frame_time",
    "RungeKutta", "RKPlan", "RKStep", "EULER_TABLEAU", "TableauError", "check_tableau",
]

FRAMES = ("auto", "ve", "flow")
"""The integration frames :func:`resolve_frame` accepts (see the module docstring)."""


@dataclass(frozen=True)
class Table:
    """alpha, sigma and lambda of the schedule at every grid time, as Python floats (float64)."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    lam: list[float]

    @property
    def n(self) -> int:
        """Number of steps (grid length minus one)."""
        return len(self.t) - 1

    def h(self, i: int) -> float:
        """Log-SNR step ``lambda_{i+1} - lambda_i`` (inf for a step to sigma = 0 or from alpha = 0)."""
        return float(self.lam[i + 1] - self.lam[i])

    def emh(self, i: int) -> float:
        """``exp(-h_i)`` computed as a ratio, finite (0) where h is infinite."""
        return float((self.sigma[i + 1] / self.sigma[i]) * (self.alpha[i] / self.alpha[i + 1]))

    def to_zero(self, i: int) -> bool:
        """True when step ``i`` ends at sigma = 0 (clean data)."""
        return self.sigma[i + 1] == 0.0


def table(schedule: NoiseSchedule, grid: Tensor) -> Table:
    """Tabulate the schedule on the grid in float64 on the host.

    Args:
        schedule: the noise schedule (``alpha_sigma(t)``).
        grid: the explicit time grid.

    Returns:
        A :class:`Table` with ``t``, ``alpha``, ``sigma`` and ``lam`` (log-SNR, ``inf`` where
        sigma = 0, ``-inf`` where alpha = 0) as Python floats.
    """
    t = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    a, s = schedule._alpha_sigma_host(t)  # alpha_sigma on the grid tensor, cheaper where a schedule can
    with np.errstate(divide="ignore"):
        lam = np.log(a.numpy()) - np.log(s.numpy())
    return Table(t.tolist(), a.tolist(), s.tolist(), lam.tolist())


def alpha_sigma_at(schedule: NoiseSchedule, t: float) -> tuple[float, float]:
    """``(alpha, sigma)`` of ``schedule`` at one time ``t``, as Python floats (host, for plans)."""
    a, s = schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
    return float(a), float(s)


def expm1_neg(h: float) -> float:
    """``exp(-h) - 1``, exact for small h, -1 for h = inf."""
    return -1.0 if math.isinf(h) else math.expm1(-h)


def multistep_orders(tab: Table, order: int, lower_order_final: bool = True, final_window: int = 15) -> list[int]:
    """Order of each step of a multistep method.

    Warm up (1, 2, ...), drop to first order for a step to sigma = 0 (lambda = inf), and with
    ``lower_order_final`` lower the last steps of grids shorter than ``final_window``
    (diffusers' convention). A step whose history reaches an infinite log-SNR (alpha = 0) uses
    only the finite part of it.

    Args:
        tab: the schedule table on the grid (:func:`table`).
        order: the method's full order.
        lower_order_final: lower the order of the last steps of short grids.
        final_window: grids with fewer steps than this get the lowered final steps.

    Returns:
        One order per step.
    """
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
    """``a * x + sum(c * d)``, skipping zero coefficients (decided on the host, no tensor branch).

    Args:
        x: the state.
        a: its coefficient (a Python float; 1.0 skips the multiplication).
        terms: ``(coefficient, tensor)`` pairs; a tensor may be None when its coefficient is 0.

    Returns:
        The combination, a new tensor unless ``a == 1`` and every coefficient is 0.
    """
    out = x if a == 1.0 else x * a
    for c, d in terms:
        if c != 0.0:
            out = out.add(d, alpha=c)
    return out


# -- frames -------------------------------------------------------------------------------------
def resolve_frame(frame: str, schedule: NoiseSchedule, alpha_start: float) -> str:
    """The frame to integrate in: ``frame`` itself, or for ``auto`` ``flow`` on a rectified-flow
    schedule or where the grid starts at alpha = 0, ``ve`` elsewhere.

    Raises:
        ValueError: an unknown frame, or ``ve`` from alpha = 0.
    """
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    if frame == "auto":
        return "flow" if (schedule.name == "flow" or alpha_start == 0.0) else "ve"
    if frame == "ve" and alpha_start == 0.0:
        raise ValueError("frame='ve' cannot start where alpha = 0 (sigma/alpha is infinite); use frame='flow' or 'auto'")
    return frame


def frame_coords(frame: str, alpha: float, sigma: float) -> tuple[float, float]:
    """``(c, s)`` with ``y = x / c`` and frame time ``s`` in ``frame`` at ``(alpha, sigma)``
    (Python floats)."""
    alpha, sigma = float(alpha), float(sigma)
    if frame == "ve":
        return alpha, sigma / alpha
    return alpha + sigma, sigma / (alpha + sigma)


def frame_time(frame: str, schedule: NoiseSchedule, s: float) -> float:
    """Schedule time at frame time ``s`` (``t_zero`` at s = 0, ``t_max`` at infinite noise)."""
    sve = s if frame == "ve" else (s / (1.0 - s) if s < 1.0 else math.inf)
    if sve == 0.0:
        return schedule.t_zero
    if math.isinf(sve):
        return schedule.t_max
    return float(schedule.t_of_sigma_ve(torch.tensor(sve, dtype=torch.float64)))


def _frame_times(frame: str, schedule: NoiseSchedule, ss: list[float]) -> list[float]:
    """:func:`frame_time` at each frame time of ``ss``, bit for bit, with one batched inverse."""
    out, todo, where = [], [], []
    for s in ss:
        sve = s if frame == "ve" else (s / (1.0 - s) if s < 1.0 else math.inf)
        if sve == 0.0:
            out.append(schedule.t_zero)
        elif math.isinf(sve):
            out.append(schedule.t_max)
        else:
            where.append(len(out))
            out.append(None)
            todo.append(sve)
    for k, t in zip(where, schedule._t_of_sigma_ve_points(todo)):
        out[k] = t
    return out


# -- explicit Runge-Kutta in a frame ----------------------------------------------------------
@dataclass(frozen=True)
class RKStep:
    """One planned step of :class:`RungeKutta` (internal layout, not covered by the stability promise)."""

    churn: tuple[float, float] | None  # (x scale, noise std) of EDM's noise injection
    stages: tuple[tuple[float, float, tuple[float, ...]], ...]  # (t, x coef, coefs of earlier derivatives)
    out: tuple[float, tuple[float, ...]]  # (x coef, coefs of the stage derivatives)

    def __init__(self, churn, stages, out):  # the frozen dataclass's __init__ without its per-field setattr cost
        self.__dict__.update(churn=churn, stages=stages, out=out)


@dataclass(frozen=True)
class RKPlan:
    """The plan of :class:`RungeKutta`: the frame and one :class:`RKStep` per grid step."""

    frame: str
    steps: tuple[RKStep, ...]


EULER_TABLEAU = ((), (1.0,), (0.0,))
"""The forward-Euler tableau ``(A, b, c)``; also the final step to sigma = 0 by default."""


class TableauError(ValueError):
    """A Butcher tableau that is malformed or inconsistent."""


def check_tableau(tableau: tuple, where: str = "tableau") -> None:
    """Check an explicit Butcher tableau ``(A, b, c)``.

    ``A`` holds the strictly lower rows, one tuple per stage after the first (row ``k`` has
    ``k`` entries), ``b`` the weights (one per stage, summing to 1) and ``c`` the nodes (one per
    stage, ``c[0] = 0``, each the sum of its row of ``A``).

    Args:
        tableau: ``(A, b, c)``.
        where: how to name the tableau in messages.

    Raises:
        TableauError: saying which condition fails.
    """
    try:
        A, b, c = tableau
    except (TypeError, ValueError):
        raise TableauError(f"{where} must be a tuple (A, b, c), got {tableau!r}") from None
    s = len(b)
    if s < 1 or len(c) != s or len(A) != s - 1:
        raise TableauError(f"{where}: with {s} stage(s) b needs {s} weights, c {s} nodes and A {s - 1} rows; "
                           f"got len(b)={len(b)}, len(c)={len(c)}, len(A)={len(A)}")
    if c[0] != 0.0:
        raise TableauError(f"{where}: the first node c[0] must be 0 (an explicit method), got {c[0]}")
    for k, row in enumerate(A, start=1):
        if len(row) != k:
            raise TableauError(f"{where}: row {k - 1} of A (stage {k}) needs {k} entries, got {len(row)}: {row!r}")
        if abs(sum(row) - c[k]) > 1e-12:
            raise TableauError(f"{where}: row {k - 1} of A sums to {sum(row)} but its node c[{k}] is {c[k]}; "
                               "each node must equal its row sum")
    if abs(sum(b) - 1.0) > 1e-12:
        raise TableauError(f"{where}: the weights b sum to {sum(b)}, not 1 (the method would not be consistent)")


class RungeKutta(Solver):
    """Explicit Runge-Kutta in the ve or flow frame, with EDM's optional churn.

    The shortest route to a solver: subclass, set ``name``, ``order`` and
    ``tableau = (A, b, c)`` (``A`` the strictly lower rows, one tuple per stage after the
    first; ``b`` the weights; ``c`` the nodes). ``evals_per_step`` defaults to the number of
    stages. The tableau is checked when the class is defined (:func:`check_tableau`).

    Options (keyword arguments of ``sample``): ``frame`` (``auto``, ``ve``, ``flow``),
    ``final_step`` (``euler``: a first-order step to sigma = 0, EDM's choice; ``full``),
    ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` (EDM's stochastic churn; ``s_churn = 0``
    is the deterministic ODE solver).
    """

    tableau: tuple = EULER_TABLEAU
    renoise = True  # each step continues from pred.renoised(x) of its first stage (CFG++ works)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "tableau" not in cls.__dict__:
            return
        check_tableau(cls.tableau, f"{cls.__name__}.tableau")
        stages = len(cls.tableau[1])
        if "evals_per_step" not in cls.__dict__:
            cls.evals_per_step = stages
        elif cls.evals_per_step != stages:
            raise TableauError(f"{cls.__name__}: evals_per_step = {cls.evals_per_step} but the tableau has {stages} "
                               "stage(s); drop evals_per_step (it defaults to the number of stages) or fix it")

    def plan(self, schedule, grid, *, frame: str = "auto", final_step: str = "euler", s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> RKPlan:
        """Per-step stage times and coefficients in the chosen frame (see the class docstring)."""
        if final_step not in ("euler", "full"):
            raise ValueError("final_step must be 'euler' (first-order step to sigma = 0, EDM's choice) or 'full'")
        if s_churn < 0:
            raise ValueError(f"s_churn must be >= 0, got {s_churn}")
        tab = table(schedule, grid)
        frame = resolve_frame(frame, schedule, float(tab.alpha[0]))
        n, ve = tab.n, frame == "ve"
        T, alpha, sigma = tab.t, tab.alpha, tab.sigma
        t_hat, a0s, s0s, churns = T[:n], alpha[:n], sigma[:n], [None] * n
        if s_churn > 0:  # EDM Algorithm 2: raise the noise level, exactly along the forward process
            g_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
            up = []
            for i in range(n):
                a0, s0 = alpha[i], sigma[i]
                sve = s0 / a0 if a0 > 0 else math.inf
                if s_tmin <= sve <= s_tmax and a0 > 0 and g_max > 0:
                    up.append((i, sve * (1.0 + g_max)))
            if up:
                t_hat, a0s, s0s = list(t_hat), list(a0s), list(s0s)
                ths = [min(th, schedule.t_max) for th in _frame_times("ve", schedule, [v for _, v in up])]
                ahs, shs = schedule._alpha_sigma_points(ths)
                for (i, _), th, ah, sh in zip(up, ths, ahs, shs):
                    ratio = ah / alpha[i]
                    churns[i] = (ratio, s_noise * math.sqrt(max(sh * sh - (ratio * sigma[i]) ** 2, 0.0)))
                    t_hat[i], a0s[i], s0s[i] = th, ah, sh
        # frame coordinates (c, u) at every grid point and at the step starts (after churn)
        if ve:
            cs, us = alpha, [s / a for a, s in zip(alpha, sigma)]
            c0s, u0s = a0s, [s / a for a, s in zip(a0s, s0s)]
        else:
            cs = [a + s for a, s in zip(alpha, sigma)]
            us = [s / c for s, c in zip(sigma, cs)]
            c0s = [a + s for a, s in zip(a0s, s0s)]
            u0s = [s / c for s, c in zip(s0s, c0s)]
        euler_final = final_step == "euler"
        tableaus = [EULER_TABLEAU if (euler_final and sigma[i + 1] == 0.0) else self.tableau for i in range(n)]
        # the interior stage times of every step, inverted in one batch
        stage_s = [u0s[i] + c[k] * (us[i + 1] - u0s[i]) for i, (_, b, c) in enumerate(tableaus) for k in range(1, len(b))]
        if stage_s:
            stage_t = _frame_times(frame, schedule, stage_s)
            sa, ss = schedule._alpha_sigma_points(stage_t)
            stage_c = sa if ve else [a + s for a, s in zip(sa, ss)]
        pos = 0
        steps = []
        for i, (A, b, c) in enumerate(tableaus):
            c0, c1 = c0s[i], cs[i + 1]
            H = us[i + 1] - u0s[i]
            stages = [(t_hat[i], 1.0, ())]
            for k in range(1, len(b)):
                ck = stage_c[pos]
                stages.append((stage_t[pos], ck / c0, tuple(ck * H * a for a in A[k - 1])))
                pos += 1
            steps.append(RKStep(churns[i], tuple(stages), (c1 / c0, tuple(c1 * H * w for w in b))))
        return RKPlan(frame, tuple(steps))

    def loop(self, denoiser, x, grid, plan: RKPlan, *, generator: Generators = None, callback: Callback | None = None):
        """The stages of every step as linear combinations of frame derivatives (``eps`` in ve,
        ``eps - x0`` in flow)."""
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
                    x = pred.renoised(x)  # x itself, except under guidance that renoises (cfg_pp)
                ds.append(pred.eps - pred.x0 if flow else pred.eps)
            x = lincomb(x, step.out[0], list(zip(step.out[1], ds)))
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": x0})
        return x

    def is_stochastic(self, **options) -> bool:
        """True when churn is on (``s_churn > 0``)."""
        return options.get("s_churn", 0.0) > 0
