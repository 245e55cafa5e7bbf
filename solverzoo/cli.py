"""The ``solverzoo`` command line: ``plugins``, ``verify``, ``conformance``, ``sample``, ``bench``, ``report``,
``optimise-grid``, ``tune``, ``train``."""
from __future__ import annotations

import argparse
import json
import sys

from solverzoo.bench.records import ResultsError
from solverzoo.cli_common import UsageError, warn
from solverzoo.cli_components import cmd_conformance, cmd_plugins, cmd_verify
from solverzoo.cli_sample import cmd_sample
from solverzoo.cli_tune import add_parser as add_tune_parser
from solverzoo.models.weights import WeightsError
from solverzoo.registry import PluginError, UnknownComponentError


def _training_configs() -> list[str]:
    """The training recipes: every Hydra config shipped in ``solverzoo/models/configs``."""
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files("solverzoo.models.configs").iterdir() if p.name.endswith(".yaml"))


def cmd_train(args) -> int:
    from solverzoo.models.train import run

    record = run(args.artifact, args.overrides)
    print(json.dumps(record, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="solverzoo", description="A plugin-based zoo of diffusion solvers with a benchmark harness.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks (for bug reports)")
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plugins", help="list every registered component and failed plugin")
    pl.add_argument("--json", action="store_true", help="print a JSON list, one object per component")
    pl.add_argument("--markdown", action="store_true", help="print the README's zoo table (built-in solvers, grids, guidance)")
    pl.add_argument("--readme", metavar="PATH", help="write the zoo table into PATH between its zoo-table markers")
    pl.set_defaults(fn=cmd_plugins)
    v = sub.add_parser("verify", help="measure a solver's accuracy and order on the analytic Gaussian-mixture testbed")
    v.add_argument("solver", nargs="?")
    v.add_argument("--all", action="store_true", help="verify every registered solver")
    v.add_argument("--out", help="with --all: write index.md and results.json to this directory")
    v.add_argument("--json", action="store_true")
    v.add_argument("--schedule", default="vp", help="schedule family (default: vp)")
    v.add_argument("--schedule-option", action="append", metavar="NAME=VALUE", help="schedule option, repeatable")
    v.add_argument("--grid", default="logsnr", help="time grid (default: logsnr)")
    v.add_argument("--prediction", default="epsilon", choices=["epsilon", "x0", "v", "velocity"])
    v.add_argument("--nfes", help="comma-separated NFE ladder (default: 16,32,64,128,256)")
    v.add_argument("--n", type=int, default=128, help="samples (default: 128)")
    v.add_argument("--dim", type=int, default=4)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--option", "-o", action="append", metavar="NAME=VALUE", help="solver option, repeatable")
    v.set_defaults(fn=cmd_verify)
    cf = sub.add_parser("conformance", help="run the packaged conformance checks on solvers or grids (exit 1 on a failure)")
    cf.add_argument("names", nargs="+", metavar="NAME", help="registered solver or grid names")
    cf.set_defaults(fn=cmd_conformance)
    sp = sub.add_parser("sample", help="sample an image grid from a backbone")
    sp.add_argument("--backbone", default="shapes-flow", help="registered backbone (see `solverzoo plugins`)")
    sp.add_argument("--prompt", required=True)
    sp.add_argument("--negative-prompt", default=None)
    sp.add_argument("--solver", default="dpmpp_2m")
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--grid", default=None, help="time grid (default: the backbone's)")
    sp.add_argument("--guidance", default="cfg", help="guidance method, or 'none'")
    sp.add_argument("--scale", type=float, default=4.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--n", type=int, default=16, help="samples (default 16); sample i is bit-identical whatever --n "
                    "(same machine, torch build and thread count)")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--option", "-o", action="append", metavar="NAME=VALUE", help="solver option, repeatable")
    sp.add_argument("--grid-option", action="append", metavar="NAME=VALUE",
                    help="grid option, repeatable (e.g. key=... for --grid optimised)")
    sp.add_argument("--cache", default=None, help="a registered cache (teacache, first_block, taylorseer)")
    sp.add_argument("--cache-option", action="append", metavar="NAME=VALUE",
                    help="cache option, repeatable (e.g. threshold=0.05)")
    sp.add_argument("--out", default="grid.png")
    sp.set_defaults(fn=cmd_sample)
    sub.add_parser("bench", help="run a benchmark sweep (Hydra app: solverzoo bench [overrides] [-m] [--fail-fast] "
                   "[--keep-going]); exit 0 ok, 2 bad input or results_dir in use, 3 cells failed")
    rp = sub.add_parser("report", help="write a report (index.md + PNG figures) from a results directory")
    rp.add_argument("results", help="a results_dir written by `solverzoo bench`")
    rp.add_argument("--out", default=None, help="output folder (default: RESULTS/report)")
    rp.set_defaults(fn=cmd_report)
    og = sub.add_parser("optimise-grid",
                        help="optimise a time grid for one backbone, solver and step count(s) and save it by key")
    og.add_argument("--backbone", required=True)
    og.add_argument("--solver", required=True, help="a deterministic fixed-step solver, e.g. dpmpp_2m")
    og.add_argument("--steps", type=int, nargs="+", required=True)
    og.add_argument("--guidance", default="none", help="guidance the grid is for (none, cfg, ...)")
    og.add_argument("--scale", type=float, default=1.0)
    og.add_argument("--base-grid", default="auto",
                    help="starting grid: auto (best built-in on the calibration set), default, or a name")
    og.add_argument("--n", type=int, default=256, help="calibration samples (own seeds and prompts, never the harness's)")
    og.add_argument("--max-evals", type=int, default=300, help="objective evaluations per step count")
    og.add_argument("--key", default=None, help="name to save under (default BACKBONE-SOLVER-GUIDANCE)")
    og.add_argument("--out", default=None, help="folder to save into (default ~/.cache/solverzoo/grids; ./grids and "
                    "$SOLVERZOO_GRIDS are searched too)")
    og.add_argument("--space", default="latent", choices=["latent", "decoded"],
                    help="measure the endpoint error on the solver's state or on the decoded images")
    og.add_argument("--device", default="cpu")
    og.set_defaults(fn=cmd_optimise_grid)
    add_tune_parser(sub)
    tr = sub.add_parser("train", help="train a shipped artifact from its Hydra config (solverzoo/models/configs)")
    tr.add_argument("artifact", choices=_training_configs(), help="a recipe: a config in solverzoo/models/configs")
    tr.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. steps=100 batch=32")
    tr.set_defaults(fn=cmd_train)
    return p


def cmd_optimise_grid(args) -> int:
    from solverzoo.bench.grid_optimiser import optimise_grid

    path, data = optimise_grid(args.backbone, args.solver, args.steps, guidance=args.guidance, scale=args.scale,
                               base_grid=args.base_grid, n=args.n, max_evals=args.max_evals, key=args.key,
                               out_dir=args.out, device=args.device, space=args.space)
    print(f"saved {path}; use it as grid=optimised with key={data['key']} "
          f"(sweeps: grids: [{{name: optimised, key: {data['key']}}}])")
    return 0


def cmd_report(args) -> int:
    import os
    from pathlib import Path

    from solverzoo.bench.lock import ResultsLock
    from solverzoo.bench.records import read_only, stale_reason
    from solverzoo.bench.report import report_main
    from solverzoo.bench.validate import ConfigError, check_output_dir

    results = Path(args.results)
    if not results.is_dir() or not (results / "records").is_dir():
        raise ResultsError(f"{args.results} is not a solverzoo results directory (no records/ folder inside); "
                           "pass the results_dir a `solverzoo bench` run printed")
    out = Path(args.out) if args.out else results / "report"
    try:
        check_output_dir(str(out), "--out")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    inside = os.path.realpath(out).startswith(os.path.realpath(results) + os.sep)
    _warn_missing_arrays(results)
    if inside:  # writes the table and report into the results dir: one writer at a time
        with ResultsLock(results):
            path = report_main(args.results, str(out))
    else:  # --out elsewhere: the results directory is only read
        why = stale_reason(results)
        if why:
            warn(f"{results} is marked stale ({why}); this report is built from its valid records only")
        with read_only():
            path = report_main(args.results, str(out))
    print(f"report: {path}")
    return 0


def _warn_missing_arrays(results) -> None:
    """Say which paired comparisons a report cannot make because per-sample arrays are gone."""
    import math

    from solverzoo.bench.records import read_records

    feats = results / "features"
    gone = [r for r in read_records(results) if r["status"] == "ok" and any(
        isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("fid", "prompt_accuracy"))
        and not (feats / f"{r['config_hash']}.safetensors").is_file()]
    if gone:
        warn(f"{len(gone)} cell(s) have no per-sample arrays in {feats} (deleted?): their paired comparisons "
              "(ΔFID, Δprompt accuracy) show n/a; rerun the same `solverzoo bench` command to regenerate them")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + error."""

    def error(self, message):
        print(f"solverzoo: error: {self.prog.split(' ', 1)[-1] if ' ' in self.prog else self.prog}: {message} "
              f"(see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _user_errors() -> tuple:
    from solverzoo.bench.lock import ResultsLocked
    from solverzoo.bench.validate import ConfigError
    from solverzoo.timegrid import GridError

    return (UnknownComponentError, PluginError, WeightsError, ResultsError, ResultsLocked, ConfigError, UsageError,
            GridError, ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError,
            IsADirectoryError, UnicodeError)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success; 1 a bug (one line; the traceback with --debug); 2 a user error (one
    line, before any expensive work); 3 a sweep with failed cells (see solverzoo.bench.app)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
    if argv[:1] == ["bench"]:  # the Hydra app takes its own command line
        return _bench(argv[1:], debug)
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = argv[1:]
    try:
        return args.fn(args)
    except _user_errors() as exc:
        if debug:
            raise
        msg = str(exc).replace("\n", " ") or type(exc).__name__
        print(f"solverzoo: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("solverzoo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback behind --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(f"solverzoo: internal error: {type(exc).__name__}: {first} (a bug: please report it with the output of "
              "the same command run with --debug)", file=sys.stderr)
        return 1


def _bench(argv: list[str], debug: bool) -> int:
    """``solverzoo bench``: compose and validate the config here first (one line, exit 2, before
    Hydra creates its run folder inside results_dir and before the backbone loads), take the
    results directory's lock, then run the Hydra app."""
    from solverzoo.bench import app

    argv, dbg = app.bench_argv(argv)
    debug = debug or dbg
    plain = all(not a.startswith("-") for a in argv) and not any(a.lstrip("+~").startswith("hydra") for a in argv)
    if not plain:  # -m, --config-dir, --cfg, hydra.* overrides: Hydra composes; each job validates itself
        return app.main(argv, debug)
    try:
        cfg = _compose(argv)
        from solverzoo.bench.lock import ResultsLock
        from solverzoo.bench.validate import validate_config

        validate_config(cfg)
        lock = ResultsLock(cfg["results_dir"]).acquire()
    except app.user_errors() as exc:
        if debug:
            raise
        print(f"solverzoo: error: {str(exc).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    try:
        return app.main(argv, debug)
    finally:
        lock.release()


def _compose(argv: list[str]) -> dict:
    """The resolved config Hydra would compose for ``argv`` (overrides only)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from solverzoo.bench.app import register_backbone_configs
    from solverzoo.bench.validate import ConfigError

    register_backbone_configs()
    try:
        with initialize_config_module(config_module="solverzoo.bench.configs", version_base=None):
            cfg = compose(config_name="config", overrides=argv)
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - Hydra / OmegaConf: a command line it cannot compose
        lines = [x.strip() for x in str(exc).split("Config search path")[0].splitlines() if x.strip()]
        raise ConfigError(" ".join(lines) or type(exc).__name__) from None


if __name__ == "__main__":
    sys.exit(main())
