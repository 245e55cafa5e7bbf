"""Restart sampling (Xu, Deng, Chen, Tian, Liu, Jaakkola & Tarokh, "Restart Sampling for Improving
Generative Processes", NeurIPS 2023, arXiv:2306.14878): ``restart``.

Source: the paper's Algorithm 1 and its reference code (Newbeeer/diffusion_restart_sampling, on
EDM's Heun sampler); neither k-diffusion, diffusers nor ComfyUI ships it. The main pass is EDM's
Heun ODE solver on the user's grid. When it reaches the low end ``t_min`` of the restart interval
it jumps back to the high end ``t_max`` by the *forward* process and re-solves the ODE from
``t_max`` to ``t_min``, ``repeats`` times, then goes on. The forward jump is exact on every path:
``x <- (alpha_max / alpha_min) x + sqrt(sigma_max^2 - (alpha_max / alpha_min)^2 sigma_min^2) z``
(the paper's ``x + sqrt(t_max^2 - t_min^2) z`` on VE, and the right noise on VP and flow paths).

The solver never builds a grid: the interval ``[s_min, s_max]`` (in VE sigma ``sigma / alpha``, the
paper's units) is snapped to the nearest grid points, and each re-solve runs Heun over that slice
of the grid (``2 (k - j)`` evaluations for grid points ``j < k``). A grid with no two distinct points
near the interval restarts nothing (it is then exactly ``heun``).
"""
import math

from solverzoo import hookimpl, randn_like
from solverzoo.kit import RKPlan, RungeKutta, table
from solverzoo_builtin.solvers.runge_kutta import Heun

_HEUN = Heun()


def _nearest(log_s: list[float], target: float, indices) -> int | None:
    """Index (among ``indices``) of the grid point whose log VE sigma is nearest ``log(target)``."""
    best = [(abs(log_s[i] - math.log(target)), i) for i in indices if math.isfinite(log_s[i])]
    return min(best)[1] if best else None


def restart_interval(tab, s_min: float, s_max: float) -> tuple[int, int] | None:
    """Grid indices ``(j, k)``, ``j < k``, nearest ``s_max`` and ``s_min``, or None."""
    log_s = [math.log(s / a) if a > 0 and s > 0 else (math.inf if a == 0 else -math.inf)
             for a, s in zip(tab.alpha, tab.sigma)]
    k = _nearest(log_s, s_min, range(1, tab.n + 1))
    if k is None:
        return None
    j = _nearest(log_s, s_max, range(0, k))
    return None if j is None or tab.sigma[k] == 0.0 else (j, k)


class Restart(RungeKutta):
    """Restart — Xu et al. 2023 (NeurIPS, arXiv:2306.14878): Heun ODE steps plus forward-noise
    restarts over one interval, which contract accumulated errors (Algorithm 1 of the paper).

    Options:
        s_min, s_max: the restart interval in VE sigma ``sigma / alpha`` (default 0.1 and 2.0; the
            paper tunes it per model), snapped to the nearest grid points.
        repeats: how many times the interval is re-solved (the paper's K; default 2; 0 is ``heun``).
        s_noise: scale of the restart noise (default 1).
        frame: ``auto``, ``ve`` or ``flow``: the frame of the Heun steps (see :mod:`solverzoo.kit`).
    """

    name = "restart"
    order = 2
    evals_per_step = 2
    stochastic = True
    tableau = Heun.tableau

    def plan(self, schedule, grid, *, s_min: float = 0.1, s_max: float = 2.0, repeats: int = 2,
             s_noise: float = 1.0, frame: str = "auto"):
        if not 0 < s_min < s_max:
            raise ValueError(f"restart: need 0 < s_min < s_max (VE sigmas), got s_min={s_min!r}, s_max={s_max!r}")
        if int(repeats) != repeats or repeats < 0:
            raise ValueError(f"restart: repeats must be an integer >= 0, got {repeats!r}")
        if s_noise < 0:
            raise ValueError(f"restart: s_noise must be >= 0, got {s_noise!r}")
        main = _HEUN.plan(schedule, grid, frame=frame)
        tab = table(schedule, grid)
        span = restart_interval(tab, s_min, s_max) if repeats > 0 else None
        if span is None:
            return main, None
        j, k = span
        ratio = tab.alpha[j] / tab.alpha[k]
        std = s_noise * math.sqrt(max(tab.sigma[j] ** 2 - (ratio * tab.sigma[k]) ** 2, 0.0))
        sub = RKPlan(main.frame, main.steps[j:k])  # the same Heun steps over grid[j..k] (none ends at sigma = 0)
        return main, (j, k, int(repeats), ratio, std, sub)

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        """Heun's main pass; after the step that lands on ``grid[k]``, ``repeats`` restarts."""
        main, restart = plan
        if restart is None:
            return RungeKutta.loop(self, denoiser, x, grid, main, generator=generator, callback=callback)
        j, k, repeats, ratio, std, sub = restart
        head = RKPlan(main.frame, main.steps[:k])
        x = RungeKutta.loop(self, denoiser, x, grid[:k + 1], head, generator=generator, callback=callback)
        for _ in range(repeats):
            x = x * ratio + std * randn_like(x, generator)
            x = RungeKutta.loop(self, denoiser, x, grid[j:k + 1], sub, generator=generator, callback=None)
        if k == len(main.steps):
            return x
        tail = RKPlan(main.frame, main.steps[k:])

        def shifted(info):  # the tail's step indices continue the main pass's
            callback({**info, "i": info["i"] + k})

        return RungeKutta.loop(self, denoiser, x, grid[k:], tail, generator=generator,
                               callback=shifted if callback is not None else None)

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["repeats"] > 0 and opts["s_noise"] > 0


@hookimpl
def register_solvers(register):
    register(Restart())
