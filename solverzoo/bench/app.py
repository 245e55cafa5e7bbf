"""The Hydra app behind ``solverzoo bench``: a plain function under a thin ``@hydra.main``.

Configs ship inside the package (``solverzoo/bench/configs``); add your own with Hydra's
``--config-dir DIR`` (a folder with e.g. ``sweep/mine.yaml``) and select them by name. Every
registered backbone can be selected with ``backbone=NAME``: those without a shipped YAML (a
third-party package's) get a ``backbone/NAME`` node ``{name: NAME}`` in Hydra's ConfigStore."""
from __future__ import annotations

import sys
from importlib import resources

import hydra
from omegaconf import DictConfig, OmegaConf


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


@hydra.main(version_base=None, config_path="pkg://solverzoo.bench.configs", config_name="config")
def app(cfg: DictConfig) -> None:
    from solverzoo.bench.sweep import run_sweep

    table, report = run_sweep(OmegaConf.to_container(cfg, resolve=True))
    print(f"table: {table}")
    print(f"report: {report}")


def main(argv: list[str]) -> int:
    argv = ["fail_fast=true" if a == "--fail-fast" else a for a in argv]
    sys.argv = ["solverzoo bench", *argv]
    register_backbone_configs()
    app()
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m solverzoo.bench.app sweep=quick ...
    main(sys.argv[1:])
