"""Optimised time grids: choose where a solver's steps fall for one model, solver and NFE.

:func:`optimise_grid` minimises, on a calibration set (its own seeds and prompts, never the
benchmark's), the mean endpoint error of ``solver`` on ``steps`` steps against a reference
solve of the same (guided) probability-flow ODE from the same noise: DOP853 for analytic
backbones, a many-step run of a second-order solver otherwise. This is the criterion of
"Align Your Steps" (Sabour et al., 2024) and GITS (Chen et al., 2024) in its plainest form:
the discrepancy to a fine reference trajectory at the end point, optimised directly for the
solver that will use the grid.

The grid's interior points are ``t_i = t_start - u_i (t_start - t_end)`` with
``u = cumsum(softmax(theta))``, so every candidate is strictly decreasing with the start and
end of the base grid; ``theta`` starts at the best built-in grid (its exact image) and is
refined with Powell's derivative-free method. The result is saved as JSON (times in float64,
the objective before and after, the calibration set and versions) and served by the
``optimised`` grid plugin by key: ``grid: {name: optimised, key: gmm-dpmpp_2m-none}``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from solverzoo.saved_grids import save, schedule_signature
from solverzoo.seeds import CALIBRATION_SEED, calibration_seeds
from solverzoo.timegrid import GridError

BUILTIN_CANDIDATES = ("karras", "logsnr", "flow_shift", "linspace", "trailing", "leading")


# -- the optimiser ----------------------------------------------------------------------------
def _times(theta: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    w = np.exp(theta - theta.max())
    u = np.concatenate([[0.0], np.cumsum(w / w.sum())])
    t = t_start - u * (t_start - t_end)
    t[-1] = t_end  # exactly, not up to rounding
    return t


def _theta(times: np.ndarray) -> np.ndarray:
    inc = -np.diff(times) / (times[0] - times[-1])
    return np.log(inc)


class Calibration:
    """The calibration problem: denoiser batches, their starting noise and reference endpoints."""

    def __init__(self, bb, solver: str, *, guidance: str | None, scale: float, n: int, batch: int = 256,
                 reference_steps: int = 200, device: str = "cpu", space: str = "latent"):
        if space not in ("latent", "decoded"):
            raise ValueError(f"space must be 'latent' (the solver's state) or 'decoded' (the backbone's images), got {space!r}")
        self.space = space
        from solverzoo.guidance import GuidedDenoiser
        from solverzoo.registry import registry
        from solverzoo.sampling import sample

        self.bb, self.solver, self.sample = bb, registry.get("solver", solver), sample
        if self.solver.is_stochastic() or self.solver.adaptive:
            raise ValueError(f"grid optimisation needs a deterministic fixed-step solver; {solver!r} is "
                             f"{'stochastic' if self.solver.is_stochastic() else 'adaptive'}")
        self.schedule, self.device = bb.model.schedule, device
        self.exact = bb.require_world().exact  # an exact model: DOP853 solves are ground truth
        prompts = bb.world.calibration_prompts(n)
        noise_seeds = calibration_seeds(n)
        self.batches = []  # (denoiser, noise seeds) per batch; the noise is drawn where a grid starts
        for i in range(0, n, batch):
            p = prompts[i:i + batch]
            conds = {k: {kk: vv.to(device) for kk, vv in c.items()} for k, c in bb.conds(p).items()}
            den = bb.model.denoiser(conds["cond"]) if guidance in (None, "none") else \
                GuidedDenoiser(bb.model, registry.get("guidance", guidance)(scale=scale), conds)
            self.batches.append((den, noise_seeds[i:i + len(p)]))
        self.reference_kind = "dop853 (rtol 1e-10)" if self.exact else f"heun, {reference_steps} steps on the base grid"
        self.reference_steps = reference_steps
        self.evals = 0
        self._memo: dict[tuple[float, float], list] = {}

    def references(self, t_start: float, t_end: float, base_grid, base_opts: dict) -> None:
        """Reference endpoints of every calibration sample for a grid from ``t_start`` to ``t_end``
        (memoised per start / end pair: the same references serve every grid and step count)."""
        from solverzoo.registry import registry

        key = (float(t_start), float(t_end))
        if key in self._memo:
            self.refs = self._memo[key]
            return
        self.refs = self._memo[key] = []
        for den, noise_seeds in self.batches:
            x0 = self._start(noise_seeds, t_start)
            with torch.no_grad():
                if self.exact:
                    ref = self.sample("dop853", den, x0.double(), torch.tensor([t_start, t_end], dtype=torch.float64)).x
                else:  # the base family's spacing, stretched onto [t_start, t_end]
                    fine = registry.get("grid", base_grid)(self.schedule, self.reference_steps, **base_opts)
                    u = (fine[0] - fine) / (fine[0] - fine[-1])
                    ref = self.sample("heun", den, x0, t_start - u * (t_start - t_end)).x
            self.refs.append(self._view(ref).double())

    def _view(self, z):
        """Where the discrepancy is measured: the solver's state, or the decoded images."""
        if self.space == "decoded":
            with torch.no_grad():
                return self.bb.decode(z)
        return z

    def _start(self, noise_seeds: list[int], t_start: float) -> torch.Tensor:
        """The calibration samples' starting noise at ``t_start`` (the same draw for every grid)."""
        from solverzoo.noise import generators
        from solverzoo.sampling import initial_noise

        shape = (len(noise_seeds),) + tuple(self.bb.latent_shape)
        return initial_noise(self.schedule, t_start, shape, generators(noise_seeds), device=self.device)

    def errors(self, times: np.ndarray) -> np.ndarray:
        """Per-sample RMS endpoint error of the solver on ``times`` (inf for an invalid grid)."""
        grid = torch.from_numpy(np.asarray(times, dtype=np.float64))
        if not (np.all(np.diff(times) < 0) and np.all(np.isfinite(times))):
            return np.full(sum(len(s) for _, s in self.batches), np.inf)
        out = []
        for (den, noise_seeds), ref in zip(self.batches, self.refs):
            with torch.no_grad():
                y = self.sample(self.solver, den, self._start(noise_seeds, float(times[0])), grid, check_finite=False).x
            self.evals += 1
            e = ((self._view(y).double() - ref) ** 2).flatten(1).mean(1).sqrt()
            out.append(e.cpu().numpy())
        e = np.concatenate(out)
        return np.where(np.isfinite(e), e, np.inf)


def optimise_grid(backbone: str, solver: str, steps: Sequence[int], *, guidance: str | None = None, scale: float = 1.0,
                  base_grid: str = "auto", n: int = 256, max_evals: int = 300, key: str | None = None,
                  out_dir: str | Path | None = None, device: str = "cpu", space: str = "latent",
                  log=print) -> tuple[Path, dict]:
    """Optimise grids for ``solver`` on ``backbone`` at each step count; save them under ``key``."""
    from scipy.optimize import minimize

    from solverzoo import __version__
    from solverzoo.backbone import load_backbone
    from solverzoo.registry import registry

    bb = load_backbone(backbone, device)
    guidance = None if guidance in (None, "none") else guidance
    key = key or f"{backbone}-{solver}-{guidance or 'none'}{'' if guidance is None else f'{scale:g}'}"
    cal = Calibration(bb, solver, guidance=guidance, scale=scale, n=n, device=device, space=space)
    data = {"key": key, "backbone": backbone, "backbone_weights": bb.weights_id, "solver": solver,
            "guidance": guidance or "none", "scale": float(scale) if guidance else 1.0,
            "schedule": schedule_signature(bb.model.schedule), "grids": {}, "runs": {},
            "criterion": f"mean over the calibration set of the RMS endpoint error vs the reference solve ({space} space)",
            "calibration": {"n": n, "noise_seeds": f"{CALIBRATION_SEED} + i", "prompts": "world draw, seed "
                            f"{CALIBRATION_SEED}", "reference": cal.reference_kind}}
    for k in steps:
        t0 = time.perf_counter()
        default = (bb.default_grid, dict(bb.default_grid_options))
        if base_grid == "auto":
            cands = [(g, {}) for g in BUILTIN_CANDIDATES] + [default]
        else:
            cands = [default] if base_grid == "default" else [(base_grid, {})]
        scored = []
        for g, opts in cands:
            try:
                times = registry.get("grid", g)(bb.model.schedule, int(k), **opts).numpy()
            except (GridError, ValueError):
                continue
            ref_key = (float(times[0]), float(times[-1]))
            cal.references(*ref_key, *default)
            e = cal.errors(times)
            scored.append((float(e.mean()), float(np.median(e)), g, opts, times, ref_key))
        scored.sort(key=lambda s: s[0])
        best_mean, best_median, g, opts, times, ref_key = scored[0]
        cal.references(*ref_key, *default)
        t_start, t_end = float(times[0]), float(times[-1])
        obj = lambda th: float(cal.errors(_times(th, t_start, t_end)).mean())  # noqa: E731
        res = minimize(obj, _theta(times), method="Powell", options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-6})
        new = _times(res.x, t_start, t_end)
        e_new = cal.errors(new)
        if not e_new.mean() < best_mean:  # never worse than the base on the calibration set
            new, e_new = times, cal.errors(times)
        data["grids"][str(int(k))] = [float(v) for v in new]
        data["runs"][str(int(k))] = {
            "base_grid": g, "base_grid_options": opts, "base_times": [float(v) for v in times],
            "builtin_scores": {s[2] + (f"({', '.join(f'{a}={b}' for a, b in sorted(s[3].items()))})" if s[3] else ""):
                               {"mean_error": s[0], "median_error": s[1]} for s in scored},
            "mean_error_before": best_mean, "mean_error_after": float(e_new.mean()),
            "median_error_before": best_median, "median_error_after": float(np.median(e_new)),
            "objective_evals": int(res.nfev), "seconds": round(time.perf_counter() - t0, 1)}
        r = data["runs"][str(int(k))]
        log(f"{key} {k} steps: base {g} mean error {best_mean:.4g} -> {r['mean_error_after']:.4g} "
            f"(median {best_median:.4g} -> {r['median_error_after']:.4g}) in {r['objective_evals']} evaluations, "
            f"{r['seconds']} s")
    data["versions"] = {"solverzoo": __version__, "torch": torch.__version__}
    data["command"] = (f"solverzoo optimise-grid --backbone {backbone} --solver {solver} --steps {' '.join(map(str, steps))} "
                       f"--guidance {guidance or 'none'} --scale {scale:g} --n {n} --max-evals {max_evals} "
                       f"--space {space} --key {key}")
    path = save(data, out_dir or (Path.home() / ".cache" / "solverzoo" / "grids"))
    return path, data
