"""Analytic testbeds: a class-conditional Gaussian mixture whose exact posterior mean gives
the ideal model output in every parametrisation at every noise level, so solver error can be
measured against a high-precision solve of the *true* probability-flow ODE."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from solverzoo.model import Model
from solverzoo.noise import Generators, randn
from solverzoo.prediction import Prediction, to_output
from solverzoo.schedules import NoiseSchedule


@dataclass
class GaussianMixture:
    """``p(x0) = sum_k w_k N(mu_k, s_k^2 I)``; component k belongs to class ``labels[k]``.

    Args:
        means: (K, D) component means.
        stds: (K,) isotropic standard deviations.
        weights: (K,) mixture weights (normalised here).
        labels: (K,) class of each component (for class-conditional models and guidance).
    """

    means: Tensor
    stds: Tensor
    weights: Tensor
    labels: Tensor

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        K = self.means.shape[0]
        if not (self.stds.shape == (K,) and self.weights.shape == (K,) and self.labels.shape == (K,)):
            raise ValueError("means (K, D), stds (K,), weights (K,) and labels (K,) must agree on K")
        if (self.stds <= 0).any():
            raise ValueError("component stds must be positive")

    @classmethod
    def default(cls, dim: int = 4, components: int = 6, classes: int = 3, seed: int = 0) -> GaussianMixture:
        """A reproducible mixture: means ~ N(0, 1.5^2 I), stds in [0.15, 0.5], uneven weights."""
        g = torch.Generator().manual_seed(seed)
        means = 1.5 * torch.randn(components, dim, generator=g, dtype=torch.float64)
        stds = 0.15 + 0.35 * torch.rand(components, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, stds, weights, torch.arange(components) % classes)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    # -- sampling ------------------------------------------------------------------------
    def sample(self, n: int, generator: Generators = None, label: Tensor | None = None) -> Tensor:
        """``n`` exact samples of x0 (float64), optionally of given classes."""
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
        w = self.weights.expand(n, -1).clone()
        if label is not None:
            w = w * (self.labels[None, :] == torch.as_tensor(label).reshape(-1, 1))
        k = torch.multinomial(w, 1, generator=g).squeeze(1)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    # -- the exact posterior -------------------------------------------------------------
    def _log_resp(self, x: Tensor, alpha: Tensor, sigma: Tensor, label: Tensor | None) -> Tensor:
        var = alpha ** 2 * self.stds[None, :] ** 2 + sigma ** 2  # (B, K)
        diff = x[:, None, :] - alpha[:, :, None] * self.means[None]  # (B, K, D)
        logp = torch.log(self.weights)[None] - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        if label is not None:
            allowed = (label[:, None] < 0) | (self.labels[None, :] == label[:, None])
            logp = logp.masked_fill(~allowed, -math.inf)
        return logp

    def posterior(self, x: Tensor, alpha, sigma, label: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact ``E[x0 | x_t]`` and ``E[eps | x_t]`` for ``x_t = alpha x0 + sigma eps``
        (float64). ``label < 0`` means unconditional."""
        shape = x.shape
        x = x.reshape(shape[0], -1).to(torch.float64)
        B = x.shape[0]
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1).expand(B, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1).expand(B, 1)
        if label is not None:
            label = torch.as_tensor(label).reshape(-1).to(torch.long).expand(B)
        resp = torch.softmax(self._log_resp(x, alpha, sigma, label), dim=1)  # (B, K)
        var = alpha ** 2 * self.stds[None, :] ** 2 + sigma ** 2
        diff = x[:, None, :] - alpha[:, :, None] * self.means[None]
        x0 = self.means[None] + (alpha * self.stds[None, :] ** 2 / var)[..., None] * diff
        eps = (sigma / var)[..., None] * diff
        return (resp[..., None] * x0).sum(1).reshape(shape), (resp[..., None] * eps).sum(1).reshape(shape)

    def component(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        """Most probable component of each point at noise level (alpha, sigma)."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        B = x.shape[0]
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1).expand(B, 1)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1).expand(B, 1)
        return self._log_resp(x, a, s, None).argmax(1)

    # -- as a model ----------------------------------------------------------------------
    def model(self, schedule: NoiseSchedule, prediction: str = "epsilon") -> Model:
        """An exact :class:`Model` of this mixture on ``schedule`` predicting ``prediction``.
        Conditioning: ``label`` (LongTensor, -1 for unconditional)."""
        gmm = self

        def net(x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
            t = t.to(torch.float64)
            a, s = schedule.alpha_sigma(t)
            x0, eps = gmm.posterior(x, a, s, label)
            pred = Prediction(x0, eps)
            shape = (-1,) + (1,) * (x.ndim - 1)
            if prediction == "velocity":
                ad, sd = schedule.alpha_sigma_dot(t)
                out = to_output(prediction, pred, a.reshape(shape), s.reshape(shape), ad.reshape(shape), sd.reshape(shape))
            else:
                out = to_output(prediction, pred, a.reshape(shape), s.reshape(shape))
            return out.to(x.dtype)

        return Model(net, prediction, schedule, time_input="t")

    def conditioner(self) -> LabelConditioner:
        return LabelConditioner(self.num_classes)


class LabelConditioner:
    """Class labels as conditioning: ``{"label": LongTensor}``; the null label is -1."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def encode(self, prompts: Sequence[int]) -> dict[str, Tensor]:
        labels = torch.as_tensor(list(prompts), dtype=torch.long)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"class label {int(bad[0])} is out of range; this model has classes 0..{self.num_classes - 1}")
        return {"label": labels}

    def null(self, batch: int) -> dict[str, Tensor]:
        return {"label": torch.full((batch,), -1, dtype=torch.long)}


def marginal_sample(gmm: GaussianMixture, schedule: NoiseSchedule, t, n: int, generator: torch.Generator,
                    label: Tensor | None = None) -> Tensor:
    """``n`` exact samples of ``x_t`` (float64)."""
    x0 = gmm.sample(n, generator, label)
    a, s = schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
    return a * x0 + s * randn(x0.shape, generator, dtype=torch.float64)
