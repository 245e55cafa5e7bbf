"""The Hydra app behind ``solverzoo bench``: a plain function under a thin ``@hydra.main``.

Configs ship inside the package (``solverzoo/bench/configs``); add your own with Hydra's
``--config-dir DIR`` (a folder with e.g. ``sweep/mine.yaml``) and select them by name. Every
registered backbone can be selected with ``backbone=NAME``: those without a shipped YAML (a
third-party package's) get a ``backbone/NAME`` node ``{name: NAME}`` in Hydra's ConfigStore.

Exit codes (also those of ``solverzoo bench``): 0 every cell ran; 2 a user error (bad override
or config, unknown name, unusable device or results_dir, results_dir locked by another
process), said in one line before anything expensive runs; 3 the sweep ran but cells failed
(or a metric you asked for could not be computed), or the table / report could not be built:
what could be written is written, and the last lines say how many failed and why
(``keep_going=true`` / ``--keep-going`` exits 0 instead); 1 a bug (one line; the traceback
with ``--debug``)."""
from __future__ import annotations

import sys
from importlib import resources

import hydra
from omegaconf import DictConfig, OmegaConf

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
_CODES: list[int] = []  # one per job this process ran (multirun: several)
DEBUG = [False]


def register_backbone_configs() -> list[str]:
    """Store ``backbone/NAME`` = ``{name: NAME}`` for every registered backbone that ships no
    ``configs/backbone/NAME.yaml``; returns the names stored. Call before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    from solverzoo.registry import registry

    shipped = {p.name[:-len(".yaml")] for p in (resources.files("solverzoo.bench.configs") / "backbone").iterdir()
               if p.name.endswith(".yaml")}
    stored = []
    for name in registry.names("backbone"):
        if name not in shipped:
            ConfigStore.instance().store(group="backbone", name=name, node={"name": name})
            stored.append(name)
    return stored


def user_errors() -> tuple:
    """Exceptions a user can cause (one line, exit 2)."""
    from omegaconf.errors import OmegaConfBaseException

    from solverzoo.bench.lock import ResultsLocked
    from solverzoo.bench.records import ResultsError
    from solverzoo.bench.validate import ConfigError
    from solverzoo.models.weights import WeightsError
    from solverzoo.registry import PluginError, UnknownComponentError

    return (ConfigError, ResultsLocked, UnknownComponentError, PluginError, WeightsError, OmegaConfBaseException,
            ResultsError)


@hydra.main(version_base=None, config_path="pkg://solverzoo.bench.configs", config_name="config")
def app(cfg: DictConfig) -> None:
    from solverzoo.bench.records import ResultsError
    from solverzoo.bench.sweep import run_sweep

    code = EXIT_OK
    try:
        c = OmegaConf.to_container(cfg, resolve=True)
        table, report, failures = run_sweep(c)
        print(f"table: {table}")
        print(f"report: {report}")
        if failures:
            keep = bool(c.get("keep_going"))
            for line in failures:
                print(f"solverzoo: {line}")
            verdict = "keep_going=true: exit 0" if keep else "exit 3 (pass --keep-going or keep_going=true to exit 0)"
            print(f"solverzoo: {verdict}; "
                  "failed cells rerun on the next sweep into this results_dir", flush=True)
            code = EXIT_OK if keep else EXIT_FAILED
    except ResultsError as exc:
        if DEBUG[0]:
            raise
        print(f"solverzoo: error: {exc}", file=sys.stderr)
        code = EXIT_FAILED if "records were written" in str(exc) else EXIT_USAGE
    except user_errors() as exc:
        if DEBUG[0]:
            raise
        print(f"solverzoo: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a bug, or a cell failing under fail_fast
        if DEBUG[0]:
            raise
        first = (str(exc).splitlines() or [""])[0]
        if cfg.get("fail_fast"):
            print(f"solverzoo: error: a cell failed and fail_fast=true: {type(exc).__name__}: {first} "
                  "(rerun with --debug for the traceback)", file=sys.stderr)
            code = EXIT_FAILED
        else:
            print(f"solverzoo: internal error: {type(exc).__name__}: {first} (a bug: please report it with the output "
                  "of the same command run with --debug)", file=sys.stderr)
            code = EXIT_BUG
    _CODES.append(code)
    if code and _in_child_process():  # a launcher's worker process: its exit code cannot reach us, its failure can
        raise SystemExit(f"solverzoo bench job failed (exit {code}); see its messages above")


_MAIN_PID = [None]


def _in_child_process() -> bool:
    import os

    return _MAIN_PID[0] is not None and os.getpid() != _MAIN_PID[0]


def bench_argv(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` with the CLI's own flags turned into overrides, and whether --debug was given."""
    debug = "--debug" in argv
    out = []
    for a in argv:
        if a == "--debug":
            continue
        out.append({"--fail-fast": "fail_fast=true", "--keep-going": "keep_going=true"}.get(a, a))
    return out, debug


def main(argv: list[str], debug: bool = False) -> int:
    argv, dbg = bench_argv(argv)
    DEBUG[0] = debug or dbg
    sys.argv = ["solverzoo bench", *argv]
    register_backbone_configs()
    del _CODES[:]
    import os

    _MAIN_PID[0] = os.getpid()
    try:
        app()
    except SystemExit as exc:
        if exc.code in (0, None):
            return max(_CODES, default=EXIT_OK)
        if _CODES:
            return max(_CODES + [EXIT_BUG])
        # Hydra stopped: a command line or config it could not compose (2), or under -m a job that
        # failed in a launcher's worker process (3: its own messages say why)
        return EXIT_FAILED if any(a in ("-m", "--multirun") for a in argv) else EXIT_USAGE
    return max(_CODES, default=EXIT_OK)


if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m solverzoo.bench.app sweep=quick ...
    sys.exit(main(sys.argv[1:]))
