"""Per-model tuning: the solver, grid and options that land closest to the exact solution of *this*
model's ODE per NFE budget (:func:`tune`; see its docstring), written as a recommendation (:func:`save`,
:func:`load`, :func:`resolve`) that ``solver=tuned`` runs. Errors are per-sample RMS distances to a reference
solve of the same ODE from the same noise (:class:`solverzoo.calibrate.Problem`, or a ``reference`` callable);
only candidates whose NFE, measured on a probe and re-checked on every run, is at most the budget compete.
"""
from __future__ import annotations

import itertools
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from solverzoo.calibrate import CalibrationSet, Problem, calibration_set
from solverzoo.prediction import Prediction
from solverzoo.registry import registry
from solverzoo.sampling import sample
from solverzoo.saved_grids import schedule_signature
from solverzoo.timegrid import grid_sigma, resolve_space

FORMAT = "solverzoo-tuned/1"
DEFAULT_SOLVER = "dpmpp_2m"
# values tried for a solver option of this name, where a solver has it (values it rejects are skipped)
SOLVER_VARIANTS = {"frame": ("ve", "flow"), "lower_order_final": (True, False), "variant": ("bh1", "bh2"),
                   "coefficients": ("exact", "dpm_solver", "k_diffusion"), "base": ("res_multistep", "dpmpp_2m", "dpmpp_3m")}
ORDER_VARIANTS = {"deis": (1, 2, 3), "unipc": (1, 2, 3), "lms": (2, 3, 4), "ipndm": (2, 3, 4), "ipndm_v": (2, 3, 4),
                  "unic": (0, 2, 3)}  # the ``order`` option of these multistep solvers
GRID_VARIANTS = {"rho": (1.0, 3.0, 5.0, 7.0, 10.0), "shift": (1.0, 2.0, 3.0, 6.0)}  # on the best ``refine`` pairs
SKIP_GRIDS = ("explicit", "optimised", "gits", "oss")  # need input; the calibrated ones are made here
CALIBRATORS = ("gits", "oss")


class TuneBudgetError(RuntimeError):
    """The search would exceed (or exceeded) its evaluation or time budget."""


class RecommendationError(ValueError):
    """A recommendation file that is missing, unreadable, corrupt or for another model or budget."""


@dataclass
class Choice:
    """One candidate: a solver with options on a grid with options (``times`` explicit)."""

    solver: str
    options: dict
    grid: str
    grid_options: dict
    steps: int = 0
    nfe: int = 0
    times: list = field(default_factory=list)

    def key(self) -> str:
        return json.dumps([self.solver, self.options, self.grid, self.grid_options], sort_keys=True, default=str)

    def describe(self) -> dict:
        return {k: getattr(self, k) for k in ("solver", "options", "grid", "grid_options", "steps", "nfe")}


# -- candidates ---------------------------------------------------------------------------------
def solver_variants(name: str) -> list[dict]:
    """The option sets tried for solver ``name`` (``"auto"`` defaults replaced by explicit values)."""
    defaults = registry.get("solver", name).options()
    axes = {}
    for opt, default in defaults.items():
        values = ORDER_VARIANTS.get(name) if opt == "order" and name in ORDER_VARIANTS else SOLVER_VARIANTS.get(opt)
        if values is not None and (default in values or default == "auto"):
            axes[opt] = values
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def default_solvers() -> list[str]:
    """Every registered deterministic, fixed-step solver except ``tuned``."""
    solvers = {n: registry.get("solver", n) for n in registry.names("solver") if n != "tuned"}
    return [n for n, s in solvers.items() if not s.adaptive and not s.is_stochastic()]


def default_grids() -> list[str]:
    return [g for g in registry.names("grid") if g not in SKIP_GRIDS]


def measured_nfe(solver, options: dict, schedule, times: torch.Tensor) -> int:
    """Denoiser calls of ``solver`` on ``times``, counted on a probe (x0 = eps = x / 2) at no model cost."""
    calls = []
    probe = lambda x, t: calls.append(t) or Prediction(0.5 * x, 0.5 * x)  # noqa: E731
    probe.schedule = schedule
    with torch.no_grad():
        solver.sample(probe, torch.ones(1, 1, dtype=torch.float64), times, **options)
    return len(calls)


def _fit(choice: Choice, schedule, budget: int, interval: tuple[float, float], make_grid) -> Choice:
    """``choice`` with the most steps whose measured NFE is at most ``budget`` (ValueError if none)."""
    solver, best = registry.get("solver", choice.solver), None
    steps = max(1, budget // max(1, int(solver.evals_per_step)))
    while steps <= budget:
        times = make_grid(choice, steps)
        if abs(float(times[0]) - interval[0]) > 1e-9 or abs(float(times[-1]) - interval[1]) > 1e-9:
            raise ValueError(f"runs from t={float(times[0]):g} to {float(times[-1]):g}, not the interval {interval}")
        key, memo = (choice.solver, json.dumps(choice.options, sort_keys=True), steps, float(times[-1])), make_grid.nfe_memo
        if key not in memo:  # a fixed-step solver's NFE: its step count and where the grid ends (each run re-checks it)
            memo[key] = measured_nfe(solver, choice.options, schedule, times)
        if (nfe := memo[key]) > budget:
            break
        best = Choice(choice.solver, choice.options, choice.grid, choice.grid_options, steps, nfe, times.tolist())
        steps += 1
    if best is None:
        raise ValueError(f"needs more than {budget} evaluations even at {steps} step(s)")
    return best


# -- scoring ------------------------------------------------------------------------------------
def criterion_value(errors: np.ndarray, criterion: str) -> float:
    return float(np.median(errors) if criterion == "median" else np.mean(errors))


def paired_interval(a: np.ndarray, b: np.ndarray, criterion: str = "median", reps: int = 2000, ci: float = 0.95,
                    seed: int = 0) -> dict:
    """``criterion(a) - criterion(b)`` over paired samples with a percentile-bootstrap interval
    (the same resampled indices on both sides), and the ratio ``criterion(a) / criterion(b)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(a), (reps, len(a)))
    stat = np.median if criterion == "median" else np.mean
    boots = stat(a[idx], axis=1) - stat(b[idx], axis=1)
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    ca, cb = criterion_value(a, criterion), criterion_value(b, criterion)
    return {"delta": ca - cb, "ci_low": float(lo), "ci_high": float(hi), "ci": ci, "ratio": ca / cb if cb > 0 else math.inf}


class Scorer:
    """Per-sample endpoint errors of candidates on a calibration set against reference solves of its ODE
    over the interval set by :meth:`use`, under an evaluation budget (batched model calls) and a time budget."""

    def __init__(self, cal: CalibrationSet, *, reference="auto", max_reference_evals: int = 100_000,
                 max_evals: int | None = None, max_seconds: float | None = None):
        ref = None if callable(reference) or reference == "auto" else reference
        self.problem = Problem(cal, "ddim", reference=ref, max_reference_evals=max_reference_evals)
        self.cal, self.reference, self.start_time, self.memo = cal, reference, time.perf_counter(), {}
        self.max_evals, self.max_seconds, self.evals, self.runs = max_evals, max_seconds, 0, 0

    def use(self, interval) -> Scorer:
        """Score on the ODE from ``interval[0]`` to ``interval[1]`` (reference solves memoised per interval)."""
        self.interval = t0, t1 = float(interval[0]), float(interval[1])
        if self.interval not in self.memo:
            starts = [self.problem.start(seeds, t0) for _, seeds in self.cal.batches]
            if callable(self.reference):  # per batch: x | (x, info); info's own_error_median: the reference's own error
                outs = [self.reference(den, x.clone(), t0, t1) for (den, _), x in zip(self.cal.batches, starts)]
                outs = [o if isinstance(o, tuple) else (o, {}) for o in outs]
                own = [float(i["own_error_median"]) for _, i in outs if isinstance(i.get("own_error_median"), (int, float))]
                refs = [self.problem.view(x) for x, _ in outs]
                info = {"method": str(outs[0][1].get("method", "callable")), "own_error_median": max(own, default=None)}
            else:
                refs, info = self.problem.reference_endpoints(t0, t1), {"method": self.problem.reference_kind}
            self.memo[self.interval] = (starts, refs, info)
        self.starts, self.refs, self.reference_info = self.memo[self.interval]
        return self

    def charge(self, calls: int, what: str) -> None:
        """Count ``calls`` batched model calls; raise :class:`TuneBudgetError` past either budget."""
        spent, narrow = time.perf_counter() - self.start_time, "or narrow the search (fewer solvers/grids/NFE budgets/samples)"
        if self.max_seconds is not None and spent > self.max_seconds:
            raise TuneBudgetError(f"tuning ran past its time budget of {self.max_seconds:g} s ({spent:.1f} s, {self.runs} "
                                  f"candidate runs, at {what}); raise max_seconds (--max-seconds), {narrow}")
        if self.max_evals is not None and self.evals + calls > self.max_evals:
            raise TuneBudgetError(f"tuning would use more than its budget of {self.max_evals} model calls ({what} needs "
                                  f"{calls} more after {self.evals}); raise max_evals (--max-evals), {narrow}")
        self.evals += calls

    def errors(self, choice: Choice) -> np.ndarray:
        """Per-sample RMS error of ``choice`` (inf where not finite); checks its measured NFE."""
        self.charge(choice.nfe * len(self.cal.batches), f"{choice.solver} on {choice.grid}")
        solver, grid, out = registry.get("solver", choice.solver), torch.tensor(choice.times, dtype=torch.float64), []
        for (den, _), x, ref in zip(self.cal.batches, self.starts, self.refs):
            with torch.no_grad():
                res = sample(solver, den, x.clone(), grid, check_finite=False, **choice.options)
            if res.denoiser_calls != choice.nfe:
                raise RuntimeError(f"{choice.solver} made {res.denoiser_calls} model calls, its probe {choice.nfe}")
            out.append(((self.problem.view(res.x) - ref) ** 2).flatten(1).mean(1).sqrt().cpu().numpy())
        self.runs += 1
        e = np.concatenate(out)
        return np.where(np.isfinite(e), e, np.inf)


# -- the search ---------------------------------------------------------------------------------
class _Grids:
    """Candidate grids, memoised per (grid, options, steps): registered ones, and the calibrated
    ``gits`` / ``oss`` made on the scorer's calibration set by the library calibrators."""

    def __init__(self, scorer: Scorer, schedule, calibrators: Sequence[str], calibrator_options: dict):
        self.scorer, self.schedule, self.calibrators, self.opts, self.memo = scorer, schedule, calibrators, calibrator_options, {}
        self.nfe_memo: dict = {}

    def __call__(self, choice: Choice, steps: int) -> torch.Tensor:
        key = (choice.grid, json.dumps(choice.grid_options, sort_keys=True, default=str), steps)
        if key not in self.memo:
            if choice.grid in self.calibrators:
                from solverzoo import calibrate_dp

                fn = getattr(registry.get("grid", choice.grid), "calibrate", None) or getattr(calibrate_dp, choice.grid)
                self.scorer.charge(0, f"calibrating {choice.grid}")  # the time budget
                out = fn(self.scorer.problem, steps, t_start=self.scorer.interval[0], **self.opts.get(choice.grid, {}))
                self.memo[key] = torch.as_tensor(out["times"] if isinstance(out, dict) else out, dtype=torch.float64)
            else:
                self.memo[key] = self._registered(choice, steps)
        return self.memo[key]

    def _registered(self, choice: Choice, steps: int) -> torch.Tensor:
        """A registered grid; one that starts elsewhere than the interval is re-made to start there through
        its ``sigma_max`` option, where it has one (and it was not given)."""
        grid, t0 = registry.get("grid", choice.grid), self.scorer.interval[0]
        times = grid(self.schedule, steps, **choice.grid_options)
        if abs(float(times[0]) - t0) > 1e-9 and "sigma_max" in grid.options() and "sigma_max" not in choice.grid_options:
            space = resolve_space(self.schedule, choice.grid_options.get("space", grid.options().get("space", "auto")))
            times = grid(self.schedule, steps, **choice.grid_options, sigma_max=float(grid_sigma(self.schedule, t0, space)))
            times[0] = t0 if abs(float(times[0]) - t0) <= 1e-6 * max(1.0, abs(t0)) else times[0]
        return times


def _default_interval(schedule, default_grid: tuple[str, dict], steps: int) -> tuple[float, float]:
    g = registry.get("grid", default_grid[0])(schedule, steps, **default_grid[1])  # what `sample --steps` runs on
    return float(g[0]), float(g[-1])


def _run(scorer: Scorer, cands: list[Choice], budget: int, grids: _Grids, skipped: dict) -> dict[str, tuple]:
    """``{key: (choice, errors)}`` of every candidate that fits ``budget`` and runs."""
    fitted = []
    for c in cands:
        try:
            fitted.append(_fit(c, grids.schedule, budget, scorer.interval, grids))
        except TuneBudgetError:
            raise
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is skipped, with the reason
            skipped[f"{c.solver} {c.options} / {c.grid} {c.grid_options}: {type(exc).__name__}: {str(exc)[:120]}"] = 1
    need = sum(c.nfe for c in fitted) * len(scorer.cal.batches)  # checked before any of them runs:
    if scorer.max_evals is not None and scorer.evals + need > scorer.max_evals:
        scorer.charge(need, f"{len(fitted)} candidates at NFE {budget}")  # raises
    out = {}
    for c in fitted:
        try:
            out[c.key()] = (c, scorer.errors(c))
        except TuneBudgetError:
            raise
        except Exception as exc:  # noqa: BLE001
            skipped[f"{c.solver} {c.options} / {c.grid} {c.grid_options}: {type(exc).__name__}: {str(exc)[:120]}"] = 1
    return out


def _entry(scored: dict, default: Choice, criterion: str, budget: int) -> dict:
    ranked = sorted(scored.values(), key=lambda ce: (criterion_value(ce[1], criterion), ce[0].key()))
    if not ranked or not np.isfinite(criterion_value(ranked[0][1], criterion)):
        raise RuntimeError(f"no candidate ran with finite errors at NFE {budget}")
    win, e_win = ranked[0]
    entry = {**win.describe(), "times": win.times, "error": criterion_value(e_win, criterion), "candidates": len(ranked)}
    if len(ranked) > 1:
        run, e_run = ranked[1]
        entry["runner_up"] = {**run.describe(), "error": criterion_value(e_run, criterion),
                              "vs_winner": paired_interval(e_run, e_win, criterion)}
    d = scored.get(default.key())
    if d is not None:
        entry["default"] = {**d[0].describe(), "error": criterion_value(d[1], criterion),
                            "vs_winner": paired_interval(d[1], e_win, criterion)}
    return entry


def tune(model, nfes: Sequence[int], *, shape: Sequence[int] | None = None, n: int = 32, seeds: Sequence[int] | None = None,
         cond: dict | None = None, exact: bool = False, solvers: Sequence[str] | None = None,
         grids: Sequence[str] | None = None, default_grid: tuple[str, dict] = ("karras", {}), calibrators="auto",
         calibrator_options: dict | None = None, refine: int = 6, criterion: str = "median", reference="auto",
         max_evals: int | None = 200_000, max_seconds: float | None = 600.0, identity: dict | None = None,
         guidance: dict | None = None) -> dict:
    """Search solver x grid x options per NFE budget for ``model``; returns the recommendation dict.

    ``model``: a Model (give ``shape``; ``n`` / ``seeds``, ``cond``), a bound denoiser or a CalibrationSet.
    ``nfes``: budgets in denoiser calls per sample (``model_evals`` counts a guided call's branches).
    ``solvers`` / ``grids`` restrict the search (default: every deterministic fixed-step solver, with each
    ``"auto"`` option tried at its explicit values, and every grid needing no input). ``default_grid``: the
    model's default grid, which fixes each budget's ODE interval and the baseline (``dpmpp_2m`` on it).
    ``calibrators``: ``"auto"`` (``gits`` / ``oss`` where registered), names or ``()``; ``calibrator_options``
    per calibrator. ``refine``: best pairs whose grid ``rho`` / ``shift`` are varied. ``criterion``: median or
    mean per-sample RMS error. ``reference``: ``"auto"`` / ``"dop853"`` / ``"heun"`` or ``f(den, x, t0, t1)``.
    ``max_evals`` (batched model calls of candidate runs), ``max_seconds``: budgets, :class:`TuneBudgetError`.
    """
    if criterion not in ("median", "mean"):
        raise ValueError(f"criterion must be 'median' or 'mean' (of the per-sample RMS errors), got {criterion!r}")
    budgets = sorted({int(b) for b in nfes})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"NFE budgets must be positive integers, got {list(nfes)}")
    if isinstance(model, CalibrationSet):
        cal = model
    else:
        if shape is None:
            raise ValueError("give shape= (one sample's state shape) to tune a model")
        cal = calibration_set(model, shape, n=n, seeds=seeds, cond=cond, exact=exact)
    t_begin, schedule, epc = time.perf_counter(), cal.schedule, int(getattr(cal.batches[0][0], "evals_per_call", 1))
    scorer = Scorer(cal, reference=reference, max_evals=max_evals, max_seconds=max_seconds)
    cal_names = [c for c in CALIBRATORS if c in registry.names("grid")] if calibrators == "auto" else list(calibrators)
    grid_list = list(dict.fromkeys((list(grids) if grids else default_grids()) + cal_names))
    solver_names = [registry.get("solver", s).name for s in solvers] if solvers else default_solvers()
    [registry.get("grid", g) for g in grid_list]  # unknown names fail here, with close matches
    grid_fn = _Grids(scorer, schedule, cal_names, dict(calibrator_options or {}))
    base = [Choice(s, o, g, {}) for s in solver_names for o in solver_variants(s) for g in grid_list]
    default = Choice(DEFAULT_SOLVER, {}, default_grid[0], dict(default_grid[1]))
    skipped, per_nfe = {}, {}
    for budget in budgets:
        scorer.use(_default_interval(schedule, default_grid, budget))
        scored = _run(scorer, base + [default], budget, grid_fn, skipped)
        scored.update(_run(scorer, _refinements(scored, criterion, refine), budget, grid_fn, skipped))
        per_nfe[str(budget)] = entry = _entry(scored, default, criterion, budget)
        entry.update(model_evals=entry["nfe"] * epc, interval=list(scorer.interval), reference=scorer.reference_info)
    return {"format": FORMAT, "model": dict(identity or {}), "schedule": schedule_signature(schedule),
            "guidance": dict(guidance or {"name": None, "scale": None}),
            "calibration": {"n": cal.n, "seeds": [s for _, ss in cal.batches for s in ss][:3] + ["..."], "space": cal.space,
                            "criterion": criterion,
                            "default": {"solver": DEFAULT_SOLVER, "grid": default_grid[0], "grid_options": default_grid[1]}},
            "nfe": per_nfe, "search": {"runs": scorer.runs, "model_calls": scorer.evals,
                                       "wall_s": round(time.perf_counter() - t_begin, 3), "skipped": sorted(skipped)},
            "versions": versions()}


def _refinements(scored: dict, criterion: str, refine: int) -> list[Choice]:
    """The grid-option variants of the best ``refine`` solver-grid pairs."""
    ranked = sorted(scored.values(), key=lambda ce: criterion_value(ce[1], criterion))[:refine]
    out = []
    for c, _ in (ce for ce in ranked if ce[0].grid not in CALIBRATORS and not ce[0].grid_options):
        defaults = registry.get("grid", c.grid).options()
        axes = {k: v for k, v in GRID_VARIANTS.items() if k in defaults}
        opts = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        out += [Choice(c.solver, c.options, c.grid, o) for o in opts if any(o[k] != defaults[k] for k in o)]
    return out


def versions() -> dict:
    import scipy

    from solverzoo import __version__ as sz_version
    return {"solverzoo": sz_version, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


# -- the recommendation file --------------------------------------------------------------------
def save(rec: dict, path: str | Path) -> Path:
    """Write a recommendation (JSON) atomically; returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n")
    return tmp.replace(path)


_HOW = "make one with `solverzoo tune --backbone NAME --nfe 5 10 20 --out FILE` (or solverzoo.tune.tune and save)"
_FIELDS = ("solver", "options", "grid", "grid_options", "steps", "nfe", "times")


def load(path: str | Path) -> dict:
    """Read and check a recommendation file; :class:`RecommendationError` says what is wrong with it."""
    p, what = Path(str(path)).expanduser(), f"recommendation file {str(path)!r}"
    if not str(path) or not p.is_file():
        raise RecommendationError(f"{what} does not exist (solver 'tuned' needs option file=PATH); {_HOW}")
    try:
        rec = json.loads(p.read_text())
    except (OSError, UnicodeError, json.JSONDecodeError) as exc:
        raise RecommendationError(f"{what} is not readable JSON ({type(exc).__name__}: {exc}): corrupt; {_HOW}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        got = rec.get("format") if isinstance(rec, dict) else type(rec).__name__
        raise RecommendationError(f"{what} is not a solverzoo recommendation (format {got!r}, not {FORMAT!r}); {_HOW}")
    entries, bad = rec.get("nfe"), []
    for k, e in entries.items() if isinstance(entries, dict) and entries else [("", None)]:
        miss = [f for f in _FIELDS if not isinstance(e, dict) or f not in e]
        if miss or not k.isdigit() or not isinstance(e["times"], list) or len(e["times"]) != int(e["steps"]) + 1:
            bad.append(f"entry nfe[{k!r}]" + (f" lacks {miss}" if miss else " is malformed"))
    if bad or not isinstance(rec.get("schedule"), dict):
        raise RecommendationError(f"{what} is corrupt ({', '.join(bad) or 'no schedule'}); make it again: {_HOW}")
    return rec


def resolve(rec_or_path, nfe: int, schedule=None) -> Choice:
    """The recommended :class:`Choice` for an NFE budget (``schedule``: checked against the tuned one).

    Raises:
        RecommendationError: an unusable file, no entry for ``nfe``, or another schedule."""
    rec = rec_or_path if isinstance(rec_or_path, dict) else load(rec_or_path)
    if str(int(nfe)) not in rec["nfe"]:
        raise RecommendationError(f"the recommendation has no entry for NFE {nfe}; it was tuned for NFE "
                                  f"{sorted(int(k) for k in rec['nfe'])}: use one of those (solver 'tuned' reads the step "
                                  "count as the NFE budget, or pass nfe=), or tune again with this NFE")
    if schedule is not None and schedule_signature(schedule) != rec["schedule"]:
        raise RecommendationError(f"the recommendation was tuned for schedule {rec['schedule']}, but this model's is "
                                  f"{schedule_signature(schedule)}: tune this model (`solverzoo tune`)")
    e = rec["nfe"][str(int(nfe))]
    return Choice(e["solver"], dict(e["options"]), e["grid"], dict(e["grid_options"]), int(e["steps"]), int(e["nfe"]),
                  [float(t) for t in e["times"]])
