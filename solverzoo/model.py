"""Models and denoisers.

A :class:`Model` is a network plus what it predicts, the path it was trained on and how it
wants time as input. :meth:`Model.denoiser` binds conditioning and returns a *denoiser*: the
callable ``(x, t) -> Prediction`` that every solver consumes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor

from solverzoo.prediction import PREDICTION_TYPES, Prediction, coefficients
from solverzoo.schedules import NoiseSchedule

Cond = Mapping[str, Tensor]


def _time_t(s: NoiseSchedule, t: Tensor) -> Tensor:
    return t


def _time_t1000(s: NoiseSchedule, t: Tensor) -> Tensor:
    return t * 1000.0


def _time_sigma(s: NoiseSchedule, t: Tensor) -> Tensor:
    return s.sigma_ve(t)


def _time_c_noise(s: NoiseSchedule, t: Tensor) -> Tensor:
    return 0.25 * torch.log(s.sigma_ve(t))


def _time_lambda(s: NoiseSchedule, t: Tensor) -> Tensor:
    return s.lam(t)


TIME_INPUTS: dict[str, Callable[[NoiseSchedule, Tensor], Tensor]] = {
    "t": _time_t,  # the schedule's own time (a discrete index for DDPM schedules)
    "t1000": _time_t1000,  # t scaled by 1000 (SD3 / FLUX transformers)
    "sigma": _time_sigma,  # VE sigma = sigma / alpha (k-diffusion)
    "c_noise": _time_c_noise,  # EDM's 0.25 * log(sigma)
    "lambda": _time_lambda,  # half log-SNR
}


class Denoiser(Protocol):
    """What solvers consume: ``denoiser(x, t) -> Prediction``.

    Attributes:
        schedule: the path the predictions refer to.
        evals_per_call: network evaluations per call (2 under classifier-free guidance).
    """

    schedule: NoiseSchedule
    evals_per_call: int

    def __call__(self, x: Tensor, t: Tensor) -> Prediction: ...


class Model:
    """A network with its parametrisation.

    Args:
        net: callable ``net(x, time_input, **cond) -> Tensor`` with ``time_input`` of shape (B,).
        prediction: one of ``epsilon``, ``x0``, ``v``, ``velocity``.
        schedule: the noise schedule the network was trained on.
        time_input: how the network wants time: a key of :data:`TIME_INPUTS` or a callable
            ``(schedule, t) -> Tensor``.
    """

    def __init__(self, net: Callable, prediction: str, schedule: NoiseSchedule, time_input: str | Callable = "t"):
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTION_TYPES}")
        if isinstance(time_input, str):
            if time_input not in TIME_INPUTS:
                raise ValueError(f"unknown time_input {time_input!r}; expected one of {sorted(TIME_INPUTS)} or a callable")
            time_input = TIME_INPUTS[time_input]
        self.net = net
        self.prediction = prediction
        self.schedule = schedule
        self.time_input = time_input
        self._consts: dict[float, tuple] = {}  # memo of pure functions of t (see predict)

    def predict(self, x: Tensor, t: Tensor | float, cond: Cond | None = None) -> Prediction:
        """Evaluate the network once at a scalar time ``t`` and convert its output."""
        time_value, coefs, _ = self.constants(t, x.dtype)
        if isinstance(time_value, float):
            time_in = torch.full((x.shape[0],), time_value, device=x.device, dtype=x.dtype)
        else:
            time_in = time_value.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        out = self.net(x, time_in, **(cond or {}))
        if out.shape != x.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)} but the input has shape {tuple(x.shape)}")
        return Prediction.affine(x, out, *coefs)

    def constants(self, t: Tensor | float, dtype: torch.dtype = torch.float32):
        """``(network time input, prediction coefficients, (alpha, sigma))`` at time ``t``.

        In eager mode they are memoised as Python floats (``t`` is a CPU float64 grid value, so
        reading it is no device sync); under ``torch.compile`` they are computed with tensor ops
        (in ``dtype``) so the sampling loop stays one graph.
        """
        if not torch.compiler.is_compiling() and (isinstance(t, float) or t.device.type == "cpu"):
            return self._host_constants(float(t))
        time_raw, coefs, (a, s) = self._constants(torch.as_tensor(t, dtype=torch.float64), as_float=False)
        cast = lambda c: c.to(dtype) if isinstance(c, Tensor) else c  # noqa: E731
        return time_raw, tuple(cast(c) for c in coefs), (cast(a), cast(s))

    def _host_constants(self, key: float):
        """:meth:`constants` at the host time ``key``, as Python floats (memoised)."""
        consts = self._consts.get(key)
        if consts is None:
            consts = self._constants(torch.tensor(key, dtype=torch.float64))
            if len(self._consts) > 65536:
                self._consts.clear()
            self._consts[key] = consts
        return consts

    def _constants(self, t: Tensor, as_float: bool = True):
        a, s = self.schedule.alpha_sigma(t)
        ad = sd = None
        if self.prediction == "velocity":
            ad, sd = self.schedule.alpha_sigma_dot(t)
        coefs = coefficients(self.prediction, a, s, ad, sd)
        time_in = self.time_input(self.schedule, t)
        if as_float:
            return float(time_in), tuple(float(c) for c in coefs), (float(a), float(s))
        return time_in, coefs, (a, s)

    def denoiser(self, cond: Cond | None = None) -> ModelDenoiser:
        return ModelDenoiser(self, cond)

    def with_net(self, net: Callable) -> Model:
        """The same model (parametrisation, schedule, time input, memoised constants) calling
        ``net`` instead: how a cache session wraps the network for one sampling call."""
        other = object.__new__(Model)
        other.__dict__.update(self.__dict__)
        other.net = net
        return other


class ModelDenoiser:
    """A model with its conditioning bound: one network evaluation per call."""

    evals_per_call = 1

    def __init__(self, model: Model, cond: Cond | None = None):
        self.model = model
        self.cond = cond
        self.schedule = model.schedule

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        return self.model.predict(x, t, self.cond)

    def with_net(self, net: Callable) -> ModelDenoiser:
        return ModelDenoiser(self.model.with_net(net), self.cond)


def batch_cond(conds: list[Cond]) -> dict[str, Tensor]:
    """Concatenate several conditionings along the batch for one batched forward."""
    keys = set(conds[0])
    for c in conds[1:]:
        if set(c) != keys:
            raise ValueError(f"conditionings have different keys: {sorted(keys)} vs {sorted(c)}")
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in sorted(keys)}
