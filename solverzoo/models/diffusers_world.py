"""The :class:`~solverzoo.backbone.World` of a user's diffusers pipeline (``backbone=diffusers``).

What the harness evaluates such a model with, all optional except the prompts:

* prompts: a text file (one per line, ``#`` comments and blank lines ignored), else the shipped
  prompt set ``solverzoo/models/prompts/solverzoo-general-v1.txt`` (96 prompts written for
  solverzoo, Apache-2.0); class-conditional pipelines (DiT) draw class names, unconditional ones
  the empty prompt;
* reference data for FID / KID: a folder of images (loaded at the decoded sample size) or an
  ``.npz`` of Inception statistics ``mu``, ``sigma`` (and optionally ``n``);
* the FID Inception-v3 (:mod:`solverzoo.models.inception`) from a local weights file: the world's
  features (``metrics.feature=domain``);
* a local Hugging Face CLIP folder for ``clip_score``.

A metric that cannot apply is named in :attr:`World.not_applicable` with the reason, which the
harness records. The converged-solve metrics need none of this and always apply.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from solverzoo.backbone import Features, World
from solverzoo.models.weights import WeightsError

DEFAULT_PROMPTS = "solverzoo-general-v1.txt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DiffusersBackboneError(WeightsError):
    """A ``backbone=diffusers`` setting that cannot be used as given (the message says what to do).

    A :class:`~solverzoo.models.weights.WeightsError` (a :class:`FileNotFoundError`): the user's
    input, like missing weights, so ``solverzoo bench`` exits 2 with the one-line message."""


def _fail(msg: str) -> DiffusersBackboneError:
    return DiffusersBackboneError(msg)


def read_prompts(path: str | None) -> tuple[list[str], str]:
    """``(prompts, source)`` from a text file (one prompt per line), or the shipped set when ``path`` is None."""
    if path is None:
        text = (resources.files("solverzoo.models.prompts") / DEFAULT_PROMPTS).read_text(encoding="utf-8")
        source = f"shipped:{DEFAULT_PROMPTS}"
    else:
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise _fail(f"backbone.prompts={path!r} is not a file; give a text file with one prompt per line "
                        "(or leave it unset for the shipped prompt set)")
        text, source = p.read_text(encoding="utf-8"), str(p)
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise _fail(f"backbone.prompts={path!r} holds no prompts (one per line; lines starting with # are comments)")
    return prompts, source


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def reference_identity(path: str | None) -> str | None:
    """A short hash naming a reference: a folder's sorted image names, sizes and mtimes, or an .npz's bytes."""
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    h = hashlib.sha256()
    if p.is_dir():
        for f in _folder_files(p):
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def check_reference(path: str | None) -> str | None:
    """``"folder"``, ``"npz"`` or None; a clear error for anything else."""
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if not _folder_files(p):
            raise _fail(f"backbone.reference={path!r} is a folder without images ({', '.join(IMAGE_SUFFIXES)}); "
                        "give a folder of real images or an .npz of Inception statistics (mu, sigma)")
        return "folder"
    if p.is_file() and p.suffix == ".npz":
        return "npz"
    raise _fail(f"backbone.reference={path!r} is neither a folder of images nor an .npz file of statistics (mu, sigma)")


def prompt_draw(pool: Sequence, seed: int, n: int) -> list:
    """``n`` prompts from ``pool``: seeded permutations of the whole pool, one after another, so
    every prompt is used once before any repeats and the first k of a draw do not depend on ``n``."""
    rng = np.random.default_rng(int(seed))
    out: list = []
    while len(out) < n:
        out.extend(pool[i] for i in rng.permutation(len(pool)))
    return out[:n]


class DiffusersWorld(World):
    """The world of a diffusers pipeline, as its options describe it.

    Args:
        name: the world's name (stored in reference identities and reports).
        prompts: the prompt pool (text, class names, or ``[""]`` for an unconditional model).
        prompt_source: where the pool came from (stored in :meth:`identity`).
        sample_shape: one decoded sample's shape ``(C, H, W)``: reference images are loaded at it.
        reference: a folder of images or an ``.npz`` of Inception statistics, or None.
        inception_weights: the FID Inception-v3 weights file, or None (no FID / KID).
        inception_resize: ``"tf1"`` (torch-fidelity, the original FID) or ``"antialias"`` (torchmetrics).
        clip: a local Hugging Face CLIP folder for ``clip_score``, or None.
        conditioning: ``"text"``, ``"labels"`` or ``"none"`` (unconditional: prompts and CLIP do not apply).
        device: where the Inception network runs.
    """

    def __init__(self, name: str, prompts: Sequence, prompt_source: str, *, sample_shape: tuple[int, ...],
                 reference: str | None = None, inception_weights: str | None = None, inception_resize: str = "tf1",
                 clip: str | None = None, conditioning: str = "text", device: str = "cpu"):
        self.name = name
        self.pool = list(prompts)
        self.prompt_source = prompt_source
        self.sample_shape = tuple(sample_shape)
        self.reference_path = None if reference is None else str(Path(str(reference)).expanduser())
        self.reference_kind = check_reference(self.reference_path)
        if inception_weights is not None and not Path(str(inception_weights)).expanduser().is_file():
            from solverzoo.models.inception import how_to_get_weights

            raise _fail(f"backbone.inception_weights={inception_weights!r} is not a file; "
                        f"{how_to_get_weights('backbone.inception_weights')}")
        self.inception_weights = None if inception_weights is None else str(Path(str(inception_weights)).expanduser())
        self.inception_resize = inception_resize
        self.clip_model = None if clip is None else str(Path(str(clip)).expanduser())
        if clip is not None and not Path(self.clip_model).is_dir():
            raise _fail(f"backbone.clip={clip!r} is not a folder; give a local Hugging Face CLIP folder "
                        "(config.json + model.safetensors + tokenizer and preprocessor files)")
        self.conditioning = conditioning
        self.device = device
        self._features: Features | None = None
        self.not_applicable = self._not_applicable()

    def _not_applicable(self) -> dict[str, str]:
        from solverzoo.models.inception import how_to_get_weights

        na = {}
        if self.inception_weights is None:
            na["fid"] = ("FID / KID and fd_converged need Inception features: "
                         + how_to_get_weights("backbone.inception_weights"))
        elif self.reference_path is None:
            na["fid"] = ("FID / KID need real reference data: set backbone.reference=DIR (a folder of images) or "
                         "backbone.reference=FILE.npz (Inception statistics mu, sigma)")
        if self.conditioning == "none":
            na["clip_score"] = "clip_score does not apply to an unconditional pipeline (no prompts)"
        elif self.conditioning == "labels" and self.clip_model is None:
            na["clip_score"] = "clip_score skipped: a class-conditional pipeline with no CLIP given (backbone.clip=DIR)"
        return na

    def identity(self) -> dict:
        """Everything of the world that changes a cell's numbers (hashed into the backbone's weights id)."""
        from solverzoo.models.inception import file_sha

        return {"name": self.name, "prompts": hashlib.sha256(json.dumps(self.pool).encode()).hexdigest()[:12],
                "prompt_source": self.prompt_source, "reference": reference_identity(self.reference_path),
                "inception": None if self.inception_weights is None else file_sha(self.inception_weights),
                "inception_resize": self.inception_resize, "clip": self.clip_model}

    def prompts(self, seed: int, n: int) -> list:
        return prompt_draw(self.pool, seed, n)

    def example_prompt(self):
        return self.pool[0]

    def reference(self, seed: int, n: int) -> Tensor | None:
        """The folder's images (a seeded subset of ``n`` where it holds more), in [-1, 1] at the
        decoded sample size; None without a folder (an ``.npz`` gives :meth:`reference_statistics`)."""
        if self.reference_kind != "folder":
            return None
        from PIL import Image

        files = _folder_files(Path(self.reference_path))
        if len(files) > n:
            keep = np.sort(np.random.default_rng(int(seed)).choice(len(files), int(n), replace=False))
            files = [files[i] for i in keep]
        c, h, w = self.sample_shape
        out = torch.empty((len(files), c, h, w))
        for i, f in enumerate(files):
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR), dtype=np.float32)
            t = torch.from_numpy(a / 127.5 - 1.0)
            out[i] = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
        return out

    def reference_statistics(self) -> dict | None:
        """``{"mu", "sigma", "n", "path"}`` from the reference ``.npz`` (read with ``allow_pickle=False``), or None."""
        if self.reference_kind != "npz":
            return None
        from solverzoo.models.safe_load import load_npz_safely

        z = load_npz_safely(self.reference_path, what="backbone.reference statistics", keys=("mu", "sigma"))
        mu, sigma = np.asarray(z["mu"], dtype=np.float64).reshape(-1), np.asarray(z["sigma"], dtype=np.float64)
        if sigma.shape != (len(mu), len(mu)):
            raise _fail(f"backbone.reference={self.reference_path}: sigma has shape {sigma.shape}, expected "
                        f"({len(mu)}, {len(mu)}) for mu of length {len(mu)}")
        return {"mu": mu, "sigma": sigma, "n": int(z["n"]) if "n" in z else None, "path": self.reference_path}

    def features(self) -> Features | None:
        """The FID Inception's pool3 features of decoded images (None without a weights file)."""
        if self.inception_weights is None:
            return None
        if self._features is None:
            from solverzoo.models.inception import file_sha, load_fid_inception, to_uint8

            net = load_fid_inception(self.inception_weights, resize=self.inception_resize,
                                     setting="backbone.inception_weights", device=self.device)

            def fn(images: Tensor) -> Tensor:
                with torch.no_grad():
                    return net(to_uint8(images.to(self.device))).cpu()

            self._features = Features(f"inception-v3-compat pool3 (uint8, {self.inception_resize} resize to 299)",
                                      file_sha(self.inception_weights), 2048, fn, images=True)
        return self._features
