"""Guidance: denoiser-to-denoiser wrappers (classifier-free guidance and relatives).

A :class:`Guidance` names the branches it needs (``cond``, ``uncond``, ``negative``) and
combines their predictions. :class:`GuidedDenoiser` evaluates every branch in *one* batched
network call and reports ``evals_per_call = len(branches)``, so NFE is counted honestly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from solverzoo.model import Cond, Model, batch_cond
from solverzoo.prediction import Prediction


class Guidance:
    """Base class of guidance methods. Subclasses set ``branches`` and implement
    :meth:`combine`; their constructor takes the method's options (``scale`` ...)."""

    name: str = "guidance"
    branches: tuple[str, ...] = ("cond",)

    def combine(self, preds: dict[str, Prediction], x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        raise NotImplementedError

    @staticmethod
    def check_scale(name: str, value: float) -> float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"guidance option {name}={value!r} must be a finite number")
        return float(value)

    def describe(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class GuidedDenoiser:
    """Runs all branches of ``guidance`` as one batched forward of ``model``.

    Args:
        model: the model to guide.
        guidance: the guidance method.
        conds: conditioning per branch name, each batched like ``x``.
    """

    def __init__(self, model: Model, guidance: Guidance, conds: dict[str, Cond]):
        missing = [b for b in guidance.branches if b not in conds]
        if missing:
            raise ValueError(
                f"guidance {guidance.name!r} needs conditioning for branches {list(guidance.branches)}; "
                f"missing {missing} (a Conditioner's null() gives 'uncond', encode(negative_prompts) gives 'negative')"
            )
        self.model = model
        self.guidance = guidance
        self.schedule = model.schedule
        self.evals_per_call = len(guidance.branches)
        self._cond = batch_cond([conds[b] for b in guidance.branches])

    def with_net(self, net) -> GuidedDenoiser:
        """The same guided denoiser calling ``net`` (a cache session) instead of the model's network."""
        other = object.__new__(GuidedDenoiser)
        other.__dict__.update(self.__dict__)
        other.model = self.model.with_net(net)
        return other

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        k = self.evals_per_call
        pred = self.model.predict(torch.cat([x] * k, dim=0) if k > 1 else x, t, self._cond)
        x0s, epss = pred.x0.chunk(k, dim=0), pred.eps.chunk(k, dim=0)
        preds = {b: Prediction(x0s[i], epss[i]) for i, b in enumerate(self.guidance.branches)}
        _, _, (alpha, sigma) = self.model.constants(t, x.dtype)  # memoised with the prediction's constants
        return self.guidance.combine(preds, x, t, alpha, sigma)
