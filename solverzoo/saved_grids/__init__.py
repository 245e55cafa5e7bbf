"""Saved time grids: grids optimised for one model, solver and step count (made by
``solverzoo optimise-grid``, see :mod:`solverzoo.bench.grid_optimiser`), stored as JSON and
served by the ``optimised`` grid plugin by key. The shipped ones live in this folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from solverzoo.timegrid import GridError, validate_grid

SHIPPED_DIR = Path(__file__).resolve().parent


def search_path() -> list[Path]:
    """Where saved grids are looked up, first match wins: ``$SOLVERZOO_GRIDS`` (``:``-separated),
    ``./grids``, ``~/.cache/solverzoo/grids``, then the grids shipped inside the package."""
    env = [Path(p) for p in os.environ.get("SOLVERZOO_GRIDS", "").split(os.pathsep) if p]
    return env + [Path("grids"), Path.home() / ".cache" / "solverzoo" / "grids", SHIPPED_DIR]


def _check_key(key: str) -> str:
    if not key or not all(c.isalnum() or c in "-_." for c in key) or key.startswith("."):
        raise GridError(f"optimised grid key {key!r} must be a non-empty name of letters, digits, '-', '_' and '.'")
    return key


def find(key: str) -> Path:
    _check_key(key)
    for d in search_path():
        p = d / f"{key}.json"
        if p.is_file():
            return p
    avail = sorted({p.stem for d in search_path() if d.is_dir() for p in d.glob("*.json")})
    raise GridError(f"no optimised grid {key!r} in {[str(d) for d in search_path()]}; available: {avail or 'none'}. "
                    f"Make one with `solverzoo optimise-grid --backbone NAME --solver NAME --steps N ... --key {key}`")


def load(key: str) -> dict:
    path = find(key)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("grids"), dict):
            raise ValueError("no 'grids' table")
        return data
    except (OSError, ValueError) as exc:
        raise GridError(f"optimised grid file {path} is unreadable ({exc}); delete it or make it again") from exc


def schedule_signature(schedule) -> dict:
    return {k: (round(v, 12) if isinstance(v, float) else v) for k, v in schedule.describe().items()}


def grid_for(schedule, steps: int, key: str) -> torch.Tensor:
    """The saved grid ``key`` for ``steps`` steps, checked against ``schedule``."""
    data = load(key)
    want, have = schedule_signature(schedule), data.get("schedule")
    if have is not None and have != want:
        raise GridError(f"optimised grid {key!r} was made for schedule {have}, but this model's schedule is {want}")
    times = data["grids"].get(str(steps))
    if times is None:
        raise GridError(f"optimised grid {key!r} has no {steps}-step grid (it has {sorted(map(int, data['grids']))} steps); "
                        f"make one with `solverzoo optimise-grid ... --steps {steps} --key {key}`")
    return validate_grid(torch.tensor(times, dtype=torch.float64), schedule, steps=steps, name=f"optimised:{key}")


def save(data: dict, out_dir: str | Path) -> Path:
    """Write (or merge into) ``out_dir/KEY.json`` atomically; grids for other step counts stay."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_check_key(data['key'])}.json"
    if path.is_file():
        old = json.loads(path.read_text())
        same = {k: old.get(k) for k in ("backbone", "backbone_weights", "solver", "guidance", "scale", "schedule")}
        if same != {k: data.get(k) for k in same}:
            raise GridError(f"{path} holds grids for a different setting {same}; choose another --key")
        old["grids"].update(data["grids"])
        old["runs"] = {**old.get("runs", {}), **data["runs"]}
        data = old
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path
