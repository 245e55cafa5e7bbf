"""Every parametrisation conversion lives here.

A model predicts one of ``epsilon``, ``x0``, ``v`` (``alpha * eps - sigma * x0``) or
``velocity`` (``d x_t / dt = alpha' * x0 + sigma' * eps``). Solvers receive a
:class:`Prediction` that carries both the data prediction ``x0`` and the noise prediction
``eps``, each computed directly from the model output with the formula that stays finite,
so solvers never branch on what the model predicts.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

PREDICTION_TYPES = ("epsilon", "x0", "v", "velocity")


@dataclass(frozen=True)
class Prediction:
    """The model's estimate at ``(x_t, t)``: data ``x0`` and noise ``eps``."""

    x0: Tensor
    eps: Tensor

    def velocity_flow(self) -> Tensor:
        """Velocity in the rectified-flow frame (``d/du`` of ``(1-u) x0 + u eps``)."""
        return self.eps - self.x0

    def map(self, fn) -> "Prediction":
        return Prediction(fn(self.x0), fn(self.eps))


def from_output(kind: str, out: Tensor, x: Tensor, alpha, sigma, alpha_dot=None, sigma_dot=None) -> Prediction:
    """Turn a raw model output of prediction type ``kind`` into a :class:`Prediction`.

    ``alpha`` and ``sigma`` (and, for ``velocity``, their time derivatives) are scalars or
    tensors broadcastable against ``x``.
    """
    if kind == "epsilon":
        return Prediction(x0=(x - sigma * out) / alpha, eps=out)
    if kind == "x0":
        return Prediction(x0=out, eps=(x - alpha * out) / sigma)
    if kind == "v":
        # [x; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps]
        norm = alpha * alpha + sigma * sigma
        return Prediction(x0=(alpha * x - sigma * out) / norm, eps=(sigma * x + alpha * out) / norm)
    if kind == "velocity":
        # [x; u] = [[alpha, sigma], [alpha', sigma']] [x0; eps]
        det = alpha * sigma_dot - sigma * alpha_dot
        return Prediction(x0=(sigma_dot * x - sigma * out) / det, eps=(alpha * out - alpha_dot * x) / det)
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")


def to_output(kind: str, pred: Prediction, alpha, sigma, alpha_dot=None, sigma_dot=None) -> Tensor:
    """Inverse of :func:`from_output`: express a prediction as a model output of ``kind``."""
    if kind == "epsilon":
        return pred.eps
    if kind == "x0":
        return pred.x0
    if kind == "v":
        return alpha * pred.eps - sigma * pred.x0
    if kind == "velocity":
        return alpha_dot * pred.x0 + sigma_dot * pred.eps
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")


def from_x0(x0: Tensor, x: Tensor, alpha, sigma) -> Prediction:
    """A prediction consistent with ``x`` given only the data estimate."""
    return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)
