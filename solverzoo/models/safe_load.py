"""Loading what a user points at without executing code from it.

Every file or folder named in a config or an argument (weights, reference statistics, CLIP /
text-encoder / diffusers model folders) goes through here:

* :func:`check_model_folder` refuses, *before anything is loaded*, a model folder that carries
  custom code (``*.py`` files, a config with ``auto_map`` / ``trust_remote_code`` /
  ``custom_pipeline``) or pickle-only weights (``*.bin`` / ``*.pt`` / ``*.pth`` / ``*.ckpt``
  with no safetensors beside them);
* :func:`load_state_dict_safely` reads safetensors, or a ``.pth`` through
  ``torch.load(weights_only=True)`` (which refuses anything but tensors and plain containers);
* :func:`load_npz_safely` reads ``.npz`` with ``allow_pickle=False``;
* :func:`torch_fidelity_inception` builds torch-fidelity's FID Inception around such a state
  dict without letting it ``torch.load`` the path itself;
* :data:`HF_SAFE_KWARGS` is what every Hugging Face ``from_pretrained`` here passes
  (``trust_remote_code=False``; model classes also get ``use_safetensors=True``).

Nothing here unpickles: a refusal is an :class:`UnsafeFileError` whose one-line message says
what to provide instead.
"""
from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

__all__ = ["UnsafeFileError", "PICKLE_SUFFIXES", "CODE_SUFFIXES", "HF_SAFE_KWARGS", "check_model_folder",
           "is_local_folder", "load_state_dict_safely", "load_npz_safely", "pickle_refusal",
           "torch_fidelity_inception"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".pyo")
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipeline")
HF_SAFE_KWARGS = {"trust_remote_code": False}


class UnsafeFileError(ValueError):
    """A file or folder refused because loading it could run code from it."""


def pickle_refusal(path, what: str = "weights") -> str:
    """The one-line message refusing a pickle-based file."""
    return (f"{what} {str(path)!r} is a pickle-based file (loading it can run code): refused; "
            "provide a safetensors export instead (safetensors.torch.save_file(state_dict, 'x.safetensors'))")


def is_local_folder(path) -> bool:
    return os.path.isdir(str(path))


def _remote_code_key(obj, depth: int = 0) -> str | None:
    if depth > 6:
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in REMOTE_CODE_KEYS and v not in (None, False, "", {}, []):
                return k
            found = _remote_code_key(v, depth + 1)
            if found:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _remote_code_key(v, depth + 1)
            if found:
                return found
    return None


def check_model_folder(path, what: str = "model folder") -> Path:
    """Refuse (:class:`UnsafeFileError`) a model folder whose loading could run code from it:
    Python files anywhere in it, a ``*config*.json`` / ``model_index.json`` naming custom code
    (``auto_map``, ``trust_remote_code``, ``custom_pipeline``), or a folder whose weights are
    pickle-only (``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` with no ``.safetensors`` beside them).
    Nothing in the folder is loaded or imported. Returns the folder."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} is not a folder; pass a local folder holding the model")
    code, configs, pickle_only = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        names = set(filenames)
        code += [Path(dirpath, f) for f in filenames if f.endswith(CODE_SUFFIXES)]
        configs += [Path(dirpath, f) for f in filenames
                    if f.endswith(".json") and ("config" in f or f == "model_index.json")]
        pickles = [f for f in names if f.endswith(PICKLE_SUFFIXES)]
        if pickles and not any(f.endswith(".safetensors") for f in names):
            pickle_only += [Path(dirpath, f) for f in sorted(pickles)]
    if code:
        shown = ", ".join(str(p.relative_to(root)) for p in sorted(code)[:3])
        raise UnsafeFileError(f"{what} {str(path)!r} carries Python code ({shown}), which loading could run: refused; "
                              "provide a standard-architecture model folder (config.json + *.safetensors) without custom code")
    for cfg in sorted(configs):
        try:
            data = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue  # not JSON: the loader reports it; plain JSON never runs code
        key = _remote_code_key(data)
        if key:
            raise UnsafeFileError(f"{what} {str(path)!r}: {cfg.relative_to(root)} asks for custom code ({key!r}): "
                                  "refused; provide a standard-architecture model folder (config.json + *.safetensors) "
                                  "without custom code")
    if pickle_only:
        shown = ", ".join(str(p.relative_to(root)) for p in pickle_only[:3])
        raise UnsafeFileError(f"{what} {str(path)!r} has only pickle-based weights ({shown}), which loading could run code "
                              "from: refused; provide a safetensors export of the model (save_pretrained(..., "
                              "safe_serialization=True)) in the folder")
    return root


def _why(exc: BaseException) -> str:
    """The reason torch.load(weights_only=True) gave, without its advice to load unsafely."""
    import re

    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if m:
        return f"it would call {m.group(1)}"
    return f"torch.load(weights_only=True) refuses it: {type(exc).__name__}"


def _plain_state_dict(obj):
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return _plain_state_dict(obj["state_dict"])
    return None


def load_state_dict_safely(path, what: str = "weights") -> dict:
    """A ``{name: tensor}`` state dict from ``.safetensors`` (preferred) or a ``.pth`` / ``.pt``
    / ``.bin`` / ``.ckpt`` read with ``torch.load(weights_only=True, map_location="cpu")``:
    anything that is not plain tensors is refused (:class:`UnsafeFileError`) without running."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - a corrupt or non-safetensors file
            raise UnsafeFileError(f"{what} {str(path)!r} is not a valid safetensors file ({type(exc).__name__}); "
                                  "provide a file written by safetensors.torch.save_file") from exc
    if p.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise UnsafeFileError(f"{what} {str(path)!r} has an unknown format ({p.suffix or 'no suffix'}): refused; "
                              "provide a .safetensors file (or a weights-only .pth state dict)")
    import torch

    try:
        obj = torch.load(str(p), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as exc:
        raise UnsafeFileError(f"{what} {str(path)!r} holds more than tensors ({_why(exc)}), which loading could run "
                              "code from: refused; provide a safetensors export or a plain state dict of tensors") from exc
    state = _plain_state_dict(obj)
    if state is None:
        raise UnsafeFileError(f"{what} {str(path)!r} is not a state dict of tensors; provide one "
                              "(torch.save(module.state_dict(), ...) or safetensors.torch.save_file)")
    return state


def load_npz_safely(path, what: str = "statistics", keys: tuple[str, ...] = ()) -> dict:
    """The arrays of an ``.npz`` read with ``np.load(allow_pickle=False)``: object arrays (which
    would need unpickling) and pickled files are refused (:class:`UnsafeFileError`)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    advice = "save plain numeric arrays instead: np.savez(path, mu=mu, sigma=sigma)"
    try:
        z = np.load(str(p), allow_pickle=False)
    except ValueError as exc:  # a pickled file, or a .npy of objects, with allow_pickle=False
        raise UnsafeFileError(f"{what} {str(path)!r} holds pickled Python objects (np.load(allow_pickle=False) "
                              f"refuses them); {advice}") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UnsafeFileError(f"{what} {str(path)!r} is not an .npz archive; {advice}")
    try:
        out = {k: np.asarray(z[k]) for k in z.files}
    except ValueError as exc:  # an object array inside the archive
        raise UnsafeFileError(f"{what} {str(path)!r} holds pickled Python objects (np.load(allow_pickle=False) "
                              f"refuses them); {advice}") from exc
    finally:
        z.close()
    missing = [k for k in keys if k not in out]
    if missing:
        raise ValueError(f"{what} {str(path)!r} lacks {', '.join(missing)} (has {', '.join(out) or 'nothing'}); {advice}")
    return out


_FIDELITY_LOCK = threading.Lock()


def torch_fidelity_inception(cls, state: dict, **kwargs):
    """torch-fidelity's InceptionV3 (``cls``: its ``FeatureExtractorInceptionV3`` or torchmetrics'
    ``NoTrainInceptionV3`` subclass) holding ``state`` (from :func:`load_state_dict_safely`).

    Its constructor either ``torch.load``-s a weights path with ``weights_only=False`` (which runs
    pickled code) or downloads; here no path is given and its downloader is swapped, for the
    construction only, for one handing back ``state``: nothing is read from disk or network."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    if not callable(getattr(fe, "load_state_dict_from_url", None)):
        raise UnsafeFileError("this torch-fidelity version cannot be given Inception weights without torch.load-ing "
                              "a path (weights_only=False): refused; install torch-fidelity 0.3 or 0.4")
    used = []

    def hand_back(*_a, **_k):
        used.append(True)
        return state

    with _FIDELITY_LOCK:
        orig = fe.load_state_dict_from_url
        fe.load_state_dict_from_url = hand_back
        try:
            net = cls(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=None, **kwargs)
        finally:
            fe.load_state_dict_from_url = orig
    if not used:  # pragma: no cover - a torch-fidelity that fetched its weights some other way
        raise UnsafeFileError("torch-fidelity built its Inception without the weights given to it: refused; "
                              "install torch-fidelity 0.3 or 0.4")
    net.load_state_dict(state)  # strict: exactly these weights
    return net.eval()
