"""A small CLIP (Radford et al. 2021) for the shapes world: a CNN image tower and a
character-level transformer text tower trained contrastively (InfoNCE with a learned
temperature) on image-caption pairs. It plugs into torchmetrics' ``CLIPScore`` through
:func:`torchmetrics_pair` (model + processor with the Hugging Face CLIP call signatures).
:func:`hf_clip_pair` does the same for a standard Hugging Face CLIP folder, loaded without
running code from it (:mod:`solverzoo.models.safe_load`)."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB = "\0 abcdefghijklmnopqrstuvwxyz0123456789,.-'"  # index 0 is padding


def tokenize(texts: list[str], max_length: int = 64) -> tuple[Tensor, Tensor]:
    ids = torch.zeros(len(texts), max_length, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [VOCAB.find(c) for c in t.lower()[:max_length]]
        ids[i, : len(codes)] = torch.tensor([c if c > 0 else 1 for c in codes], dtype=torch.long)  # unknown -> space
    return ids, ids > 0


class SmallCLIP(nn.Module):
    def __init__(self, dim: int = 64, width: int = 96, layers: int = 2, heads: int = 4, max_length: int = 64):
        super().__init__()
        self.config = dict(dim=dim, width=width, layers=layers, heads=heads, max_length=max_length)
        self.image = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Flatten(), nn.Linear(64 * 8 * 8, width), nn.SiLU(), nn.Linear(width, dim))
        self.tok = nn.Embedding(len(VOCAB), width)
        self.pos = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.text = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.text_proj = nn.Linear(width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07)

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self.image(pixel_values)

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        h = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
        h = self.text(h, src_key_padding_mask=~attention_mask.bool())
        m = attention_mask[..., None].float()
        return self.text_proj((h * m).sum(1) / m.sum(1).clamp_min(1))

    def loss(self, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        a = F.normalize(self.get_image_features(images), dim=-1)
        b = F.normalize(self.get_text_features(ids, mask), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * a @ b.T
        target = torch.arange(len(a))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class SmallCLIPProcessor:
    """The Hugging Face ``CLIPProcessor`` call signature: uint8 (3, H, W) images or strings in."""

    def __init__(self, max_length: int = 64):
        self.max_length = max_length

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True):
        out = {}
        if images is not None:
            out["pixel_values"] = torch.stack([i.float() / 127.5 - 1.0 for i in images])
        if text is not None:
            out["input_ids"], out["attention_mask"] = tokenize(list(text), self.max_length)
        return out


def torchmetrics_pair(model: SmallCLIP):
    """``(model, processor)`` for ``torchmetrics CLIPScore(model_name_or_path=lambda: pair)``."""
    model.config_obj = SimpleNamespace()  # torchmetrics probes model.config.text_config; keep it absent
    wrapper = _Wrap(model)
    return wrapper, SmallCLIPProcessor(model.config["max_length"])


class _Wrap(nn.Module):
    def __init__(self, m: SmallCLIP):
        super().__init__()
        self.m = m
        self.config = SimpleNamespace()

    def get_image_features(self, pixel_values):
        return self.m.get_image_features(pixel_values)

    def get_text_features(self, input_ids, attention_mask):
        return self.m.get_text_features(input_ids, attention_mask)


def _features(out) -> Tensor:
    """transformers >= 5 returns a model output from ``get_*_features``: its (projected) pooler output."""
    return out if isinstance(out, Tensor) else out.pooler_output


class HFCLIPForTorchmetrics(nn.Module):
    """A Hugging Face ``CLIPModel`` with ``get_image_features`` / ``get_text_features`` returning
    tensors (what torchmetrics' ``CLIPScore`` expects) whatever the transformers version."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics truncates captions to text_config.max_position_embeddings

    def get_image_features(self, pixel_values):
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_hf_clip(path: str):
    """``(CLIPModel, CLIPProcessor)`` of a standard Hugging Face CLIP, from a local folder or a hub
    id, without running code from it: a folder with custom code (``*.py``, ``auto_map``; e.g. the
    jina-clip family) or pickle-only weights is refused before loading, weights come from
    safetensors only and ``trust_remote_code`` is off."""
    import json
    import os
    from pathlib import Path

    from transformers import CLIPModel, CLIPProcessor

    from solverzoo.models.safe_load import HF_SAFE_KWARGS, UnsafeFileError, check_model_folder

    local = os.path.isdir(path)
    if local:
        check_model_folder(path, what="CLIP model folder")
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"CLIP model folder {path!r} has no config.json; pass a folder written by "
                                    "CLIPModel.save_pretrained + CLIPProcessor.save_pretrained")
        try:
            model_type = json.loads(Path(cfg_path).read_text()).get("model_type")
        except ValueError as exc:
            raise ValueError(f"CLIP model folder {path!r}: config.json is not valid JSON ({exc})") from exc
        if model_type != "clip":
            raise UnsafeFileError(f"CLIP model folder {path!r} holds model_type {model_type!r}, not a standard CLIP "
                                  "('clip'): refused; provide a Hugging Face CLIPModel folder (config.json + *.safetensors)")
    elif os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"CLIP model {path!r} is not a local folder and HF_HUB_OFFLINE=1; download it once "
                                "(huggingface-cli download) and pass the folder")
    model = CLIPModel.from_pretrained(path, local_files_only=local, use_safetensors=True, **HF_SAFE_KWARGS).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=local, **HF_SAFE_KWARGS)
    return model, processor


def hf_clip_pair(path: str):
    """``(model, processor)`` of :func:`load_hf_clip` for ``CLIPScore(model_name_or_path=lambda: pair)``:
    the path never reaches torchmetrics' own loader (which runs remote code for some names)."""
    model, processor = load_hf_clip(path)
    return HFCLIPForTorchmetrics(model), processor
