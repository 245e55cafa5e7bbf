"""Adaptive high-precision reference solver (scipy's DOP853, Hairer, Norsett & Wanner)."""
import numpy as np
import torch
from scipy.integrate import solve_ivp

from solverzoo import Solver, hookimpl
from solverzoo.kit import frame_coords, frame_time, table


class DOP853(Solver):
    """DOP853 — Dormand-Prince 8(5,3) adaptive Runge-Kutta (scipy) on the flow-frame ODE in
    float64: the reference for accuracy checks. Only the grid's first and last times matter;
    the number of model evaluations it took is reported through the callback as ``nfe``.
    The one DOP853 implementation: ``solverzoo verify`` (:func:`solverzoo.testing.verify.reference_solve`)
    calls it too."""

    name = "dop853"
    order = 8
    adaptive = True

    def plan(self, schedule, grid, *, rtol: float = 1e-10, atol: float = 1e-10, method: str = "DOP853"):
        tab = table(schedule, grid)
        c0, u0 = frame_coords("flow", float(tab.alpha[0]), float(tab.sigma[0]))
        c1, u1 = frame_coords("flow", float(tab.alpha[-1]), float(tab.sigma[-1]))
        return {"u": (u0, u1), "c": (c0, c1), "rtol": rtol, "atol": atol, "method": method, "schedule": schedule}

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        (u0, u1), (c0, c1), sched = plan["u"], plan["c"], plan["schedule"]
        shape, dtype, device = x.shape, x.dtype, x.device
        nfe = [0]

        def rhs(u, y):
            t = frame_time("flow", sched, float(u))
            a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
            c, _ = frame_coords("flow", a, s)
            xt = torch.from_numpy(y * c).reshape(shape).to(device=device, dtype=torch.float64)
            pred = denoiser(xt, torch.tensor(t, dtype=torch.float64))
            nfe[0] += 1
            return (pred.eps - pred.x0).reshape(-1).cpu().numpy()

        y0 = (x.detach().to(torch.float64).cpu().numpy() / c0).reshape(-1)
        sol = solve_ivp(rhs, (u0, u1), y0, method=plan["method"], rtol=plan["rtol"], atol=plan["atol"])
        if not sol.success:
            raise RuntimeError(f"dop853: the reference solve failed: {sol.message}")
        out = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1]) * c1).reshape(shape).to(device=device, dtype=dtype)
        if callback is not None:
            callback({"i": len(grid) - 2, "t": grid[-1], "x": out, "x0": out, "nfe": nfe[0]})
        return out


@hookimpl
def register_solvers(register):
    register(DOP853())
