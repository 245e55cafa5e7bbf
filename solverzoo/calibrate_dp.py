"""Dynamic-programming grid calibrators: GITS and OSS, for any model.

Both choose ``steps`` intervals out of a fine grid (``fine_steps`` points from ``t_start`` to the
schedule's ``t_min``, spaced like Karras rho = 7 in VE sigma as in GITS, then ``t_zero``) by
comparing with a teacher trajectory: the reference solve of :class:`~solverzoo.calibrate.Problem`
from fine point to fine point (so never a model evaluation at sigma = 0; the last teacher point is
the explicit final jump). Steps are first-order exponential-integrator (DDIM) steps in the
schedule's own alpha / sigma, i.e. the Euler step of the EDM frame that GITS uses, or, for OSS
with ``student="dpmpp_2m"``, DPM-Solver++(2M) steps with the history of the path.

* :func:`gits` — Chen et al. (2024), "On the Trajectory Regularity of ODE-based Diffusion
  Sampling" (Geometry-Inspired Time Scheduling): cost ``C[i, j]`` = error of one step from the
  *teacher* state at i to j against the teacher at j (local truncation error); the grid minimises
  ``C[i0, i1] + coeff (C[i1, i2] + coeff (...))`` over paths of ``steps`` steps (their recursion,
  ``coeff`` 1.1 by default as in their code; 1 is a plain sum).
* :func:`oss` — Pei et al. (2025), "Optimal Stepsize for Diffusion Sampling": the DP carries the
  *student's* own state: ``z[k, j]`` is the best state reachable at fine point j in k steps, from
  the ``i`` whose step lands closest to the teacher at j; the grid is the path to ``(steps, t_zero)``.
  This costs ``steps x fine_steps`` model evaluations per batch.

Errors are the calibration set's criterion (mean or median over samples of the RMS error, on the
latents or the decoded states).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from solverzoo.calibrate import Problem
from solverzoo.timegrid import VE_SIGMA_CAP, GridError, grid_sigma, resolve_space, times_of_sigmas

STUDENTS = ("ddim", "dpmpp_2m")


def fine_grid(schedule, t_start: float, fine_steps: int, rho: float = 7.0) -> np.ndarray:
    """``fine_steps + 1`` times from ``t_start`` to ``t_min``, Karras-spaced in sigma (the flow sigma
    on flow paths, VE sigma elsewhere: :func:`~solverzoo.timegrid.resolve_space`), then ``t_zero``."""
    if fine_steps < 2:
        raise GridError(f"fine_steps must be at least 2, got {fine_steps}")
    space = resolve_space(schedule, "auto")
    hi = min(float(grid_sigma(schedule, t_start, space)), VE_SIGMA_CAP)
    lo = float(grid_sigma(schedule, schedule.t_min, space))
    ramp = torch.linspace(0, 1, fine_steps + 1, dtype=torch.float64)
    sig = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    t = times_of_sigmas(schedule, sig, space)
    t[0], t[-1] = t_start, schedule.t_min
    return np.concatenate([t.numpy(), [schedule.t_zero]])


def teacher(problem: Problem, fine: np.ndarray) -> list[list[Tensor]]:
    """Per batch, the teacher states at every fine time (reference solves segment by segment)."""
    out = []
    for den, seeds in problem.cal.batches:
        x = problem.start(seeds, float(fine[0])).double()
        states = [x]
        with torch.no_grad():
            for a, b in zip(fine[:-2], fine[1:-1]):
                x = problem.solve_to(den, x, float(a), float(b)).double()
                states.append(x)
            states.append(den(x, torch.tensor(float(fine[-2]), dtype=torch.float64)).x0.double())  # the final jump
        out.append(states)
    return out


def _coefs(schedule, t: float) -> tuple[float, float, float]:
    a, s = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    lam = math.inf if s == 0 else -math.inf if a == 0 else math.log(a) - math.log(s)
    return a, s, lam


def _step(schedule, x: Tensor, x0: Tensor, t_i: float, t_j: float) -> Tensor:
    """First-order exponential-integrator step from (x, t_i) to t_j with data prediction ``x0``."""
    a_i, s_i, _ = _coefs(schedule, t_i)
    a_j, s_j, _ = _coefs(schedule, t_j)
    return (s_j / s_i) * x + (a_j - a_i * s_j / s_i) * x0  # = a_j x0 + s_j eps_hat (DDIM); a_j x0 at sigma = 0


def _errors(problem: Problem, y: Tensor, ref: Tensor) -> np.ndarray:
    return ((problem.view(y) - problem.view(ref)) ** 2).flatten(1).mean(1).sqrt().cpu().numpy()


def _score(problem: Problem, per_batch: list[np.ndarray]) -> float:
    return problem.score(np.concatenate(per_batch))


def _dp_path(cost: np.ndarray, steps: int, coeff: float) -> list[int]:
    """GITS's recursion: ``V[i, 1] = C[i, N]``, ``V[i, k] = min_{i<m<N} C[i, m] + coeff V[m, k-1]``."""
    N = cost.shape[0] - 1
    V = np.full((N + 1, steps + 1), np.inf)
    arg = np.zeros((N + 1, steps + 1), dtype=int)
    V[:N, 1] = cost[:N, N]
    for k in range(2, steps + 1):
        for i in range(N):
            cand = cost[i, i + 1:N] + coeff * V[i + 1:N, k - 1]
            if cand.size and np.isfinite(cand).any():
                m = int(np.argmin(cand))
                V[i, k], arg[i, k] = cand[m], i + 1 + m
    if not np.isfinite(V[0, steps]):
        raise GridError(f"no {steps}-step path through the fine grid; raise fine_steps above {N}")
    path, i = [0], 0
    for k in range(steps, 1, -1):
        i = int(arg[i, k])
        path.append(i)
    return path + [N]


def gits(problem: Problem, steps: int, *, t_start: float | None = None, fine_steps: int = 60, coeff: float = 1.1) -> dict:
    """GITS grid (Chen et al., 2024) of ``steps`` steps for the problem's model; see the module doc.

    Returns ``{"times", "fine", "path", "cost"}`` (times: float64 array of ``steps + 1``)."""
    sched = problem.schedule
    t_start = float(sched.t_max) if t_start is None else float(t_start)
    fine = fine_grid(sched, t_start, max(fine_steps, steps))
    N = len(fine) - 1
    traj = teacher(problem, fine)
    cost = np.full((N + 1, N + 1), np.inf)
    for i in range(N):
        preds = []
        for (den, _), states in zip(problem.cal.batches, traj):
            with torch.no_grad():
                preds.append(den(states[i].float(), torch.tensor(float(fine[i]), dtype=torch.float64)).x0.double())
        for j in range(i + 1, N + 1):
            errs = [_errors(problem, _step(sched, st[i], p, fine[i], fine[j]), st[j]) for st, p in zip(traj, preds)]
            cost[i, j] = _score(problem, errs)
    path = _dp_path(cost, steps, coeff)
    return {"times": fine[path].copy(), "fine": fine, "path": path, "cost": cost}


def _student_step(sched, student: str, x: Tensor, x0: Tensor, t_i: float, t_j: float, prev) -> Tensor:
    """One student step; ``prev`` is ``(x0_prev, t_prev)`` of the path (DPM-Solver++(2M)) or None."""
    if student == "ddim" or prev is None:
        return _step(sched, x, x0, t_i, t_j)
    _, s_j, lam_j = _coefs(sched, t_j)
    if s_j == 0:  # first order into sigma = 0, as the zoo's dpmpp_2m
        return _step(sched, x, x0, t_i, t_j)
    lam_i, lam_p = _coefs(sched, t_i)[2], _coefs(sched, prev[1])[2]
    r = (lam_i - lam_p) / (lam_j - lam_i)
    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev[0]
    return _step(sched, x, d, t_i, t_j)


def oss(problem: Problem, steps: int, *, t_start: float | None = None, fine_steps: int = 40,
        student: str = "ddim") -> dict:
    """OSS grid (Pei et al., 2025) of ``steps`` steps for the problem's model; see the module doc.

    Returns ``{"times", "fine", "path", "evals"}``."""
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    sched = problem.schedule
    t_start = float(sched.t_max) if t_start is None else float(t_start)
    fine = fine_grid(sched, t_start, max(fine_steps, steps))
    N = len(fine) - 1
    traj = teacher(problem, fine)
    # node (k, j): per batch the student's state, its x0 history entry and the parent index
    nodes = {(0, 0): ([st[0] for st in traj], None, None)}
    evals = 0
    for k in range(1, steps + 1):
        lo_j, hi_j = k, (N - (steps - k))
        best: dict[int, tuple[float, list, int, list]] = {}
        for i in sorted(j for (kk, j) in nodes if kk == k - 1):
            states, prev, _ = nodes[(k - 1, i)]
            with torch.no_grad():
                preds = [den(z.float(), torch.tensor(float(fine[i]), dtype=torch.float64)).x0.double()
                         for (den, _), z in zip(problem.cal.batches, states)]
            evals += 1
            for j in range(max(i + 1, lo_j), hi_j + 1) if k < steps else (N,):
                if j <= i:
                    continue
                cand = [_student_step(sched, student, z, p, fine[i], fine[j], None if prev is None else (pp, prev[1]))
                        for z, p, pp in zip(states, preds, prev[0] if prev else [None] * len(states))]
                score = _score(problem, [_errors(problem, c, st[j]) for c, st in zip(cand, traj)])
                if j not in best or score < best[j][0]:
                    best[j] = (score, cand, i, preds)
        for j, (_, cand, i, preds) in best.items():
            nodes[(k, j)] = (cand, (preds, float(fine[i])), i)
    if (steps, N) not in nodes:
        raise GridError(f"no {steps}-step path through the fine grid; raise fine_steps above {N}")
    path, k, j = [N], steps, N
    while k > 0:
        j = nodes[(k, j)][2]
        k -= 1
        path.append(j)
    path = path[::-1]
    return {"times": fine[path].copy(), "fine": fine, "path": path, "evals": evals}
