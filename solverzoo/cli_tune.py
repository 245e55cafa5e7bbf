"""``solverzoo tune``: per-model tuning of a registered backbone (:func:`solverzoo.tune.tune`), with the
converged solve of :mod:`solverzoo.bench.converged` as the reference on models that are not exact, an
optional check on held-out seeds, and the recommendation written for ``solver=tuned``."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from solverzoo.cli_common import UsageError

HOLDOUT_SEED_SET = 0  # held-out check: the harness's seed set 0 (never a calibration seed) ...
HOLDOUT_PROMPT_SEED = 12_345  # ... with its own prompt draw (the world's prompts(seed, n))


def add_parser(sub) -> None:
    tp = sub.add_parser("tune", help="find the best solver, grid and options per NFE for one backbone and write a "
                        "recommendation that `--solver tuned -o file=PATH` runs")
    tp.add_argument("--backbone", required=True)
    tp.add_argument("--nfe", type=int, nargs="+", required=True, help="NFE budgets (denoiser calls per sample), e.g. 5 10 20")
    tp.add_argument("--guidance", default="none", help="guidance the recommendation is for (none, cfg, ...)")
    tp.add_argument("--scale", type=float, default=1.0)
    tp.add_argument("--n", type=int, default=32, help="calibration samples (calibration seeds and prompts)")
    tp.add_argument("--solvers", nargs="+", default=None, help="restrict the search (default: every deterministic "
                    "fixed-step solver)")
    tp.add_argument("--grids", nargs="+", default=None, help="restrict the search (default: every grid needing no input)")
    tp.add_argument("--no-calibrated", action="store_true", help="skip the calibrated grids (gits, oss)")
    tp.add_argument("--criterion", default="median", choices=["median", "mean"])
    tp.add_argument("--space", default="latent", choices=["latent", "decoded"])
    tp.add_argument("--reference-steps", type=int, default=64, help="models that are not exact: the reference is "
                    "dpmpp_3m at this many steps and twice as many (step doubling estimates its own error)")
    tp.add_argument("--holdout", type=int, default=32, help="score winner and default on this many held-out seeds (0: no)")
    tp.add_argument("--max-evals", type=int, default=200_000, help="budget of batched model calls for the search")
    tp.add_argument("--max-seconds", type=float, default=1800.0, help="time budget of the search")
    tp.add_argument("--out", default=None, help="recommendation file (default tuned-BACKBONE-GUIDANCE.json)")
    tp.add_argument("--device", default="cpu")
    tp.set_defaults(fn=cmd_tune)


def _check(args) -> None:
    from solverzoo.registry import registry

    registry.get("backbone", args.backbone)
    if any(b < 1 for b in args.nfe):
        raise UsageError(f"--nfe {args.nfe}: NFE budgets must be positive integers")
    if args.n < 1 or args.holdout < 0 or args.reference_steps < 2:
        raise UsageError("--n must be at least 1, --holdout at least 0 and --reference-steps at least 2")
    if not (math.isfinite(args.scale) and args.scale >= 0):
        raise UsageError(f"--scale {args.scale:g} must be a finite number >= 0")
    if args.guidance != "none":
        registry.get("guidance", args.guidance)(scale=args.scale)
    for s in args.solvers or []:
        registry.get("solver", s)
    for g in args.grids or []:
        registry.get("grid", g)
    out = Path(args.out or f"tuned-{args.backbone}-{args.guidance}.json").expanduser()
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'tuned.json'}")
    args.out = str(out)


def backbone_set(bb, *, n: int, guidance: str, scale: float, space: str, device: str, seeds=None, prompts=None):
    """A calibration set of a backbone: calibration seeds and prompts by default, or the ones given."""
    from solverzoo.calibrate import CalibrationSet, from_backbone
    from solverzoo.guidance import GuidedDenoiser
    from solverzoo.registry import registry

    g = None if guidance in (None, "none") else guidance
    if seeds is None:
        return from_backbone(bb, n=n, guidance=g, scale=scale, space=space, device=device)
    conds = {k: {kk: vv.to(device) for kk, vv in c.items()} for k, c in bb.conds(list(prompts)).items()}
    den = bb.model.denoiser(conds["cond"]) if g is None else \
        GuidedDenoiser(bb.model, registry.get("guidance", g)(scale=scale), conds)
    return CalibrationSet([(den, list(seeds))], tuple(bb.latent_shape), bb.decode if space == "decoded" else None, space,
                          bool(bb.require_world().exact), device)


def converged_reference(steps: int):
    """Models that are not exact: the step-doubled dpmpp_3m solve of :func:`solverzoo.bench.converged.solve`
    (float32, log-SNR steps where finite, its order measured), reporting its own error."""
    import torch

    from solverzoo.bench.converged import solve

    def reference(den, x, t0, t1):
        lam = den.schedule.lam(torch.tensor([t0, t1], dtype=torch.float64))
        spacing = "logsnr" if bool(torch.isfinite(lam).all()) else "linspace"
        return solve(den, x, t0, t1, method="dpmpp_3m", steps=steps, spacing=spacing, dtype=torch.float32, observed_order=True)

    return reference


def holdout(rec: dict, bb, args, reference) -> dict:
    """Per NFE: the winner and the default on held-out seeds and prompts, paired (median errors, interval)."""
    from solverzoo import seeds as seed_policy
    from solverzoo.registry import registry
    from solverzoo.tune import DEFAULT_SOLVER, Choice, Scorer, criterion_value, measured_nfe, paired_interval, resolve

    n = args.holdout
    cal = backbone_set(bb, n=n, guidance=args.guidance, scale=args.scale, space=args.space, device=args.device,
                       seeds=seed_policy.sample_seeds(HOLDOUT_SEED_SET, range(n)),
                       prompts=bb.require_world().prompts(HOLDOUT_PROMPT_SEED, n))
    scorer, out = Scorer(cal, reference=reference), {}
    for k, e in rec["nfe"].items():
        scorer.use(e["interval"])
        win, d = resolve(rec, int(k)), e.get("default") or {"solver": DEFAULT_SOLVER, "options": {}}
        times = registry.get("grid", bb.default_grid)(bb.model.schedule, int(k), **bb.default_grid_options)
        nfe = measured_nfe(registry.get("solver", d["solver"]), d["options"], bb.model.schedule, times)
        default = Choice(d["solver"], dict(d["options"]), bb.default_grid, dict(bb.default_grid_options), int(k), nfe,
                         times.tolist())
        e_win, e_def = scorer.errors(win), scorer.errors(default)
        out[k] = {"winner": criterion_value(e_win, args.criterion), "default": criterion_value(e_def, args.criterion),
                  "default_vs_winner": paired_interval(e_def, e_win, args.criterion)}
    return {"n": n, "seed_set": HOLDOUT_SEED_SET, "prompt_seed": HOLDOUT_PROMPT_SEED, "nfe": out}


def cmd_tune(args: argparse.Namespace) -> int:
    _check(args)  # before the backbone loads
    from solverzoo.backbone import load_backbone
    from solverzoo.tune import TuneBudgetError, save, tune

    bb = load_backbone(args.backbone, args.device)
    exact = bool(bb.require_world().exact)
    reference = "dop853" if exact else converged_reference(args.reference_steps)
    cal = backbone_set(bb, n=args.n, guidance=args.guidance, scale=args.scale, space=args.space, device=args.device)
    ident = {"backbone": bb.name, "weights_id": bb.weights_id, "prediction": bb.model.prediction,
             "default_grid": bb.default_grid, "default_grid_options": dict(bb.default_grid_options)}
    guided = args.guidance != "none"
    try:
        rec = tune(cal, args.nfe, solvers=args.solvers, grids=args.grids, calibrators=() if args.no_calibrated else "auto",
                   default_grid=(bb.default_grid, dict(bb.default_grid_options)), criterion=args.criterion,
                   reference=reference, max_evals=args.max_evals, max_seconds=args.max_seconds, identity=ident,
                   guidance={"name": args.guidance if guided else None, "scale": args.scale if guided else None})
        if args.holdout:
            rec["holdout"] = holdout(rec, bb, args, reference)
    except TuneBudgetError as exc:
        raise UsageError(str(exc)) from None
    path = save(rec, args.out)
    _print(rec, path)
    return 0


def _print(rec: dict, path) -> None:
    print(f"{'NFE':>4}  {'winner':<52} {'error':>10} {'default':>10} {'ratio':>6}  {'held-out win/default':>22}")
    for k, e in sorted(rec["nfe"].items(), key=lambda kv: int(kv[0])):
        what = f"{e['solver']} {e['options'] or ''} on {e['grid']} {e['grid_options'] or ''} ({e['steps']} steps)"
        d = e.get("default", {})
        h = rec.get("holdout", {}).get("nfe", {}).get(k)
        held = f"{h['winner']:.2e}/{h['default']:.2e}" if h else "-"
        ratio = d.get("error", math.nan) / e["error"] if e["error"] > 0 else math.inf
        print(f"{k:>4}  {what[:52]:<52} {e['error']:>10.3e} {d.get('error', math.nan):>10.3e} {ratio:>6.2f}  {held:>22}")
    for k, e in sorted(rec["nfe"].items(), key=lambda kv: int(kv[0])):
        ref = e["reference"]
        own = ref.get("own_error_median")
        print(f"NFE {k}: t from {e['interval'][0]:g} to {e['interval'][1]:g}, reference {ref.get('method')}"
              + (f" (own error about {own:.1e})" if own is not None else "")
              + ("; WARNING: not well below the winner's error, raise --reference-steps" if own and own > e["error"] / 3 else ""))
    print(f"searched {rec['search']['runs']} runs in {rec['search']['wall_s']:.1f} s; wrote {path}; sample with "
          f"`--solver tuned -o file={path}` (the step count is the NFE budget: {', '.join(sorted(rec['nfe'], key=int))})")
