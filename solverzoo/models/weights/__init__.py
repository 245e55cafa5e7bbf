"""Shipped weights: safetensors files inside the package, each with its config and training
record in the file's metadata and a model card beside it. Loading never unpickles code."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from solverzoo.models.safe_load import PICKLE_SUFFIXES, UnsafeFileError, load_state_dict_safely

WEIGHTS_DIR = Path(__file__).resolve().parent


class WeightsError(FileNotFoundError):
    pass


def save(module: nn.Module, name: str, meta: dict, *, half: bool = False, directory: Path | None = None) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory or WEIGHTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() and v.ndim > 0 else v).contiguous()
             for k, v in module.state_dict().items()}
    path = directory / f"{name}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"solverzoo": json.dumps(meta)})
    tmp.chmod(0o644)  # shipped data: readable by every user of the install
    tmp.replace(path)
    return path


def read_meta(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("solverzoo", "{}"))


def resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix.lower() in PICKLE_SUFFIXES:  # refused before the file is opened: only safetensors carry the metadata
        raise WeightsError(f"{p}: refusing to load a pickle-based checkpoint (it can run code); "
                           "convert it to safetensors (safetensors.torch.save_file) and pass that file")
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise WeightsError(f"weights file {p} does not exist")
        return p
    shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if not shipped.is_file():
        have = sorted(x.stem for x in WEIGHTS_DIR.glob("*.safetensors"))
        raise WeightsError(f"no shipped weights named {name_or_path!r} (have: {', '.join(have) or 'none'}); "
                           f"train them with `solverzoo train ...` or pass a .safetensors path")
    return shipped


def load_into(module: nn.Module, name_or_path: str | Path) -> nn.Module:
    try:
        state = load_state_dict_safely(resolve(name_or_path), what="weights")  # always .safetensors here
    except UnsafeFileError as exc:
        raise WeightsError(str(exc)) from exc
    ref = module.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    module.load_state_dict(state)
    return module.eval()
