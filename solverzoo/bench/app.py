"""The Hydra app behind ``solverzoo bench``: a plain function under a thin ``@hydra.main``.

Configs ship inside the package (``solverzoo/bench/configs``); add your own with Hydra's
``--config-dir DIR`` (a folder with e.g. ``sweep/mine.yaml``) and select them by name."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path="pkg://solverzoo.bench.configs", config_name="config")
def app(cfg: DictConfig) -> None:
    from solverzoo.bench.run import run_sweep

    table, report = run_sweep(OmegaConf.to_container(cfg, resolve=True))
    print(f"table: {table}")
    print(f"report: {report}")


def main(argv: list[str]) -> int:
    argv = ["fail_fast=true" if a == "--fail-fast" else a for a in argv]
    sys.argv = ["solverzoo bench", *argv]
    app()
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m solverzoo.bench.app sweep=quick ...
    main(sys.argv[1:])
