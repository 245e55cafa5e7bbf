"""The batched host paths of plans (``NoiseSchedule._alpha_sigma_host`` / ``_alpha_sigma_points`` /
``_t_of_sigma_ve_points``, the vectorised ``RungeKutta.plan``) return exactly, bit for bit, what the
scalar reference formulas return."""
import math

import numpy as np
import pytest
import torch

import solverzoo as sz
from solverzoo.kit import EULER_TABLEAU, Table, alpha_sigma_at, frame_coords, frame_time, resolve_frame, table
from solverzoo.schedules import NoiseSchedule

SCHEDULES = [("ddpm", {}), ("ddpm", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
             ("ddpm", {"rescale_zero_terminal_snr": True}), ("vp", {}), ("edm", {}), ("flow", {"shift": 3.0}), ("flow", {})]
GRIDS = [("leading", {}), ("trailing", {}), ("karras", {}), ("logsnr", {}), ("flow_shift", {})]


def _reference_table(schedule, grid) -> Table:
    t = torch.as_tensor(grid, dtype=torch.float64).cpu()
    a, s = schedule.alpha_sigma(t)
    with np.errstate(divide="ignore"):
        lam = np.log(a.numpy()) - np.log(s.numpy())
    return Table(t.tolist(), a.tolist(), s.tolist(), lam.tolist())


def _reference_rk_plan(solver, schedule, grid, *, frame="auto", final_step="euler", s_churn=0.0, s_tmin=0.0,
                       s_tmax=math.inf, s_noise=1.0):
    """The scalar RungeKutta.plan: one 0-d schedule call per churn and per stage."""
    tab = table(schedule, grid)
    frame = resolve_frame(frame, schedule, float(tab.alpha[0]))
    steps = []
    for i in range(tab.n):
        a0, s0 = float(tab.alpha[i]), float(tab.sigma[i])
        churn, t_hat = None, float(tab.t[i])
        sve = s0 / a0 if a0 > 0 else math.inf
        gamma = min(s_churn / tab.n, math.sqrt(2.0) - 1.0) if (s_churn > 0 and s_tmin <= sve <= s_tmax and a0 > 0) else 0.0
        if gamma > 0:
            t_hat = min(frame_time("ve", schedule, sve * (1.0 + gamma)), schedule.t_max)
            ah, sh = alpha_sigma_at(schedule, t_hat)
            ratio = ah / a0
            churn = (ratio, s_noise * math.sqrt(max(sh * sh - (ratio * s0) ** 2, 0.0)))
            a0, s0 = ah, sh
        A, b, c = EULER_TABLEAU if (final_step == "euler" and tab.to_zero(i)) else solver.tableau
        c0, u0 = frame_coords(frame, a0, s0)
        c1, u1 = frame_coords(frame, float(tab.alpha[i + 1]), float(tab.sigma[i + 1]))
        H = u1 - u0
        stages = [(t_hat, 1.0, ())]
        for k in range(1, len(b)):
            tk = frame_time(frame, schedule, u0 + c[k] * H)
            ck, _ = frame_coords(frame, *alpha_sigma_at(schedule, tk))
            stages.append((tk, ck / c0, tuple(ck * H * a for a in A[k - 1])))
        steps.append((churn, tuple(stages), (c1 / c0, tuple(c1 * H * w for w in b))))
    return frame, steps


@pytest.mark.parametrize("sname,skw", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_table_and_points_match_scalar_reference(sname, skw, steps):
    sched = sz.get_schedule(sname, **skw)
    for gname, gkw in GRIDS:
        grid = sz.get_grid(gname)(sched, steps, **gkw)
        fast, ref = table(sched, grid), _reference_table(sched, grid)
        assert (fast.t, fast.alpha, fast.sigma) == (ref.t, ref.alpha, ref.sigma)
        assert repr(fast.lam) == repr(ref.lam)
        ts = [float(v) for v in torch.linspace(sched.t_zero, sched.t_max, 97, dtype=torch.float64)] + fast.t
        assert sched._alpha_sigma_points(ts) == NoiseSchedule._alpha_sigma_points(sched, ts)
        sv = [v for v in (10.0 ** np.linspace(-4, 3, 113)).tolist()] + [s / a for a, s in zip(fast.alpha, fast.sigma)
                                                                         if a > 0 and s > 0]
        assert sched._t_of_sigma_ve_points(sv) == NoiseSchedule._t_of_sigma_ve_points(sched, sv)


@pytest.mark.parametrize("sname,skw", SCHEDULES)
@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4"])
@pytest.mark.parametrize("options", [{}, {"frame": "flow", "final_step": "full"}, {"s_churn": 40.0},
                                     {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}])
def test_rk_plan_matches_scalar_reference(sname, skw, solver, options):
    sched = sz.get_schedule(sname, **skw)
    s = sz.get_solver(solver)
    for gname, gkw in GRIDS[:3]:
        grid = sz.get_grid(gname)(sched, 13, **gkw)
        plan = s.plan(sched, grid, **options)
        frame, ref = _reference_rk_plan(s, sched, grid, **options)
        assert plan.frame == frame
        assert repr([(st.churn, st.stages, st.out) for st in plan.steps]) == repr(ref)
