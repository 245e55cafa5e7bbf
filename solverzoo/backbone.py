"""Backbones: the shared networks a sweep samples with, loaded once per process, and the
:class:`World` each one samples from.

A :class:`Backbone` bundles a latent (or pixel) :class:`~solverzoo.Model`, its conditioner, the
decoder to images and its :class:`World`: everything the benchmark harness needs to evaluate
it (prompts, reference data, features, prompt scorer, FLOP probe, which metrics apply, exact
metrics), so the harness never branches on a world's name and a third-party backbone is
evaluated on its own terms."""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from solverzoo import seeds
from solverzoo.conditioning import branch_conds
from solverzoo.model import Model
from solverzoo.registry import registry


@dataclass(frozen=True)
class Features:
    """A world's default feature extractor for FID / KID ("domain" features).

    Attributes:
        name: what the features are, e.g. ``"shapes-attribute-classifier"``; stored with every score.
        weights_hash: a hash of the extractor's weights (``"none"`` for a fixed map), so a
            retrained extractor never reuses cached reference statistics.
        num_features: the feature dimension d.
        fn: decoded samples ``(B, ...)`` -> ``(B, d)`` features.
        images: True when the inputs are images the harness may resize (``metrics.resize``);
            False for coordinates (an analytic world's points), which are never resized.
    """

    name: str
    weights_hash: str
    num_features: int
    fn: Callable[[Tensor], Tensor]
    images: bool = True


def state_dict_sha(module: nn.Module) -> str:
    """A short SHA-256 of a module's parameters and buffers (its weights' identity)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class World:
    """What a backbone samples from, as the benchmark harness sees it.

    Subclass it and override what your world has; the defaults say "this world has none".
    Every draw is a pure function of its seed (see :mod:`solverzoo.seeds` for which seed the
    harness passes where), so records reproduce.

    Attributes:
        name: the world's name, stored in reference identities and reports (e.g. ``"shapes"``).
        exact: True when the backbone's model is exact (analytic): a high-precision solve of its
            ODE is then ground truth, so the harness records each deterministic cell's error
            against a DOP853 solve from the same noise, and grid calibration uses DOP853.
        clip_model: the CLIP model scoring ``clip_score`` when ``metrics.clip_model`` is unset
            (a shipped name such as ``"shapes-clip"`` or a Hugging Face id), or None.
        not_applicable: metric name -> the sentence, recorded as a warning, saying why that
            metric does not apply to this world (e.g. ``{"clip_score": "..."}``).
    """

    name: str = "unnamed"
    exact: bool = False
    clip_model: str | None = None
    not_applicable: Mapping[str, str] = {}

    def prompts(self, seed: int, n: int) -> list:
        """``n`` prompts (captions or labels, whatever the conditioner takes) drawn with ``seed``."""
        raise NotImplementedError(f"world {self.name!r} ({type(self).__name__}) must implement prompts(seed, n)")

    def reference(self, seed: int, n: int) -> Tensor | None:
        """``n`` real samples drawn with ``seed``, decoded (as the backbone's ``decode`` returns
        samples), for FID / KID; None where the world has no real data. A world of
        (sample, prompt) pairs draws them so that ``prompts(seed, n)`` are these samples' prompts."""
        return None

    def samples_for(self, prompts: Sequence, seed: int) -> Tensor | None:
        """Real samples answering ``prompts`` (sample i for prompt i), drawn with ``seed``;
        None where the world cannot. The harness passes the sweep's prompts, drawn by
        ``prompts(seed, ...)``: a paired world may return the samples those prompts came with.
        They make the FID floor, what a perfect sampler would score."""
        return None

    def features(self) -> Features | None:
        """The default (``metrics.feature=domain``) feature extractor, or None."""
        return None

    def score(self, images: Tensor, latents: Tensor, prompts: Sequence) -> np.ndarray | None:
        """Prompt accuracy per sample: 1.0 where sample i shows what ``prompts[i]`` asks for,
        else 0.0 (float64 array of ``len(prompts)``); None where the world has no scorer."""
        return None

    def example_prompt(self) -> Any:
        """A representative prompt (for FLOP counting and warm-up)."""
        return self.prompts(0, 1)[0]

    def calibration_prompts(self, n: int) -> list:
        """Prompts of a grid calibration set: a draw the harness never uses."""
        return self.prompts(seeds.CALIBRATION_SEED, n)

    def exact_samples(self, prompts: Sequence) -> Tensor | None:
        """Exact samples of the data for ``prompts`` (sample i with seed
        :func:`solverzoo.seeds.exact_sample_seed` ``(i)``), in the space the extractor's features
        live in, for the sliced Wasserstein distance; None where the world is not analytic."""
        return None

    def exact_metrics(self, latents: Tensor, reference: Tensor) -> dict[str, float]:
        """World-specific exact metrics of samples against the high-precision solve of the same
        ODE from the same noise (``exact`` worlds only), e.g. the rate of mode flips."""
        return {}


@dataclass
class Backbone:
    """A model with everything needed to sample from it and evaluate it.

    Attributes:
        name: the registered name.
        model: the network and what it predicts.
        conditioner: prompts -> conditioning (and the null conditioning).
        latent_shape: the shape of one sample's state, without the batch dimension.
        decode: states -> decoded samples (images in [-1, 1], (B, C, H, W), or points).
        default_grid, default_grid_options: the time grid the sweep's ``default`` means.
        classifier: the world's attribute classifier, where it has one (kept for callers that
            use it directly; the harness scores prompts through ``world``).
        world: what the backbone samples from (prompts, reference data, features, scorer).
        card, artifact, weights_id: the model card, shipped weights' name, and a hash of the
            weights (a retrained backbone never reuses old records).
        generator: for a backbone that is not a diffusion model (e.g. an autoregressive one),
            what samples it instead of a solver: an object with ``generate(prompts, generator,
            **options) -> (states, stats)``, states shaped ``(B, *latent_shape)`` for ``decode``,
            stats with ``forward_passes`` and ``flops`` per sample; ``model`` is then None.
    """

    name: str
    model: Model
    conditioner: Any
    latent_shape: tuple[int, ...]
    decode: Callable[[Tensor], Tensor]
    default_grid: str = "karras"
    default_grid_options: dict = field(default_factory=dict)
    classifier: Any = None
    world: World | None = None
    card: str = ""
    artifact: str = ""
    weights_id: str = ""
    generator: Any = None

    def conds(self, prompts: Sequence, negative_prompts: Sequence | None = None) -> dict:
        return branch_conds(self.conditioner, prompts, negative_prompts)

    def require_world(self) -> World:
        """The backbone's :class:`World`, or an error that says how to give it one."""
        if self.world is None:
            raise ValueError(f"backbone {self.name!r} carries no World: the harness needs one to draw prompts and "
                             "reference data; pass Backbone(..., world=MyWorld()) (a solverzoo.backbone.World subclass)")
        return self.world


@functools.cache
def load_backbone(name: str, device: str = "cpu") -> Backbone:
    """The backbone registered as ``name`` (cached: loaded once per process and device)."""
    return registry.get("backbone", name)(device=device)
