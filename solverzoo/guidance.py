"""Guidance: denoiser-to-denoiser wrappers (classifier-free guidance and relatives).

A :class:`Guidance` names the branches it needs (``cond``, ``uncond``, ``negative``, or a branch
of its own that borrows another's conditioning) and combines their predictions.
:class:`GuidedDenoiser` evaluates every branch in *one* batched network call and reports
``evals_per_call``, so NFE is counted honestly.

What a solver reads. ``combine`` returns a :class:`~solverzoo.prediction.Prediction` whose ``x0``
and ``eps`` are consistent at the state the solver continues from. For almost every method that
state is the evaluated ``x`` itself. Guidance that renoises with another prediction than the
guided one (CFG++: guided ``x0``, unconditional ``eps``) sets ``renoise = True`` and returns a
:class:`RenoisedPrediction`, whose pair is consistent at ``pred.renoised(x) = alpha x0 + sigma
eps``; only solvers declaring ``renoise = True`` (they continue from that state) may run it, and
:func:`solverzoo.solver.check_renoise` makes any other pairing an error.

Guidance that perturbs the network (PAG, SEG, SLG, SAG) names the rows of a branch to perturb
through :meth:`Guidance.perturbation`; the network declares where its blocks and self-attention
are with a :class:`PerturbSpec` (see :mod:`solverzoo.perturb`).
"""
from __future__ import annotations

import math
from contextlib import ExitStack

import torch
from torch import Tensor

from solverzoo.model import Cond, Model, batch_cond
from solverzoo.perturb import Perturbation, perturbed
from solverzoo.prediction import Prediction


class RenoisedPrediction(Prediction):
    """A prediction the solver must continue from another state: ``x0`` the guided data estimate,
    ``eps`` the noise to renoise with (CFG++: the unconditional one), consistent at ``state =
    alpha x0 + sigma eps`` rather than at the evaluated ``x``. :meth:`renoised` returns that
    state, and :meth:`lin` uses it in place of the ``x`` it is given (the evaluated state)."""

    __slots__ = ("state",)

    def __init__(self, x0: Tensor, eps: Tensor, state: Tensor):
        super().__init__(x0, eps)
        self.state = state

    def renoised(self, x: Tensor) -> Tensor:
        return self.state

    def lin(self, a, b, c=0.0, x: Tensor | None = None) -> Tensor:
        return super().lin(a, b, c, None if x is None else self.state)


class Guidance:
    """Base class of guidance methods. Subclasses set ``branches`` and implement
    :meth:`combine`; their constructor takes the method's options (``scale`` ...).

    Class attributes:
        branches: the predictions :meth:`combine` reads, one batched forward for all of them.
        sources: branch -> the conditioning it uses, for branches that borrow another's
            (``{"perturbed": "cond"}``); a branch not listed uses its own name.
        renoise: True when :meth:`combine` returns a :class:`RenoisedPrediction` (CFG++).
    """

    name: str = "guidance"
    branches: tuple[str, ...] = ("cond",)
    sources: dict[str, str] = {}
    renoise: bool = False

    def combine(self, preds: dict[str, Prediction], x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        raise NotImplementedError

    def perturbation(self, branch: str) -> Perturbation | None:
        """How the network is perturbed for the rows of ``branch`` (None: not at all)."""
        return None

    def evaluate(self, den: GuidedDenoiser, x: Tensor, t: Tensor) -> dict[str, Prediction]:
        """Every branch's prediction at ``(x, t)``: one batched forward (:meth:`GuidedDenoiser.forward`).
        Methods that need a second, dependent evaluation (SAG) or another model (autoguidance)
        override it and :attr:`evals_per_call`."""
        return den.forward(x, t)

    @property
    def evals_per_call(self) -> int:
        """Network evaluations per denoiser call and sample (NFE per call)."""
        return len(self.branches)

    def conditioning(self) -> list[str]:
        """The conditionings the branches need (keys of :func:`~solverzoo.conditioning.branch_conds`)."""
        return list(dict.fromkeys(self.sources.get(b, b) for b in self.branches))

    @staticmethod
    def check_scale(name: str, value: float) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
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
        need = guidance.conditioning()
        missing = [b for b in need if b not in conds]
        if missing:
            raise ValueError(
                f"guidance {guidance.name!r} needs conditioning for branches {need}; missing {missing} (a Conditioner's "
                f"null() gives 'uncond', encode(negative_prompts) gives 'negative')"
            )
        self.model = model
        self.guidance = guidance
        self.schedule = model.schedule
        self.renoise = bool(guidance.renoise)
        self.evals_per_call = guidance.evals_per_call
        self.conds = {k: conds[k] for k in need}
        self._cond = batch_cond([self.conds[guidance.sources.get(b, b)] for b in guidance.branches])

    def with_net(self, net) -> GuidedDenoiser:
        """The same guided denoiser calling ``net`` (a cache session) instead of the model's network."""
        other = object.__new__(GuidedDenoiser)
        other.__dict__.update(self.__dict__)
        other.model = self.model.with_net(net)
        return other

    def forward(self, x: Tensor, t: Tensor, branches: tuple[str, ...] | None = None,
                model: Model | None = None) -> dict[str, Prediction]:
        """The predictions of ``branches`` (default: the guidance's) in one batched forward of
        ``model`` (default: the guided model), each branch's rows perturbed as the guidance says."""
        g = self.guidance
        names = g.branches if branches is None else tuple(branches)
        model = self.model if model is None else model
        k, batch = len(names), x.shape[0]
        cond = self._cond if names == g.branches else batch_cond([self.conds[g.sources.get(b, b)] for b in names])
        with ExitStack() as stack:
            for i, b in enumerate(names):
                p = g.perturbation(b)
                if p is not None:
                    stack.enter_context(perturbed(model.net, p, slice(i * batch, (i + 1) * batch), k * batch))
            pred = model.predict(torch.cat([x] * k, dim=0) if k > 1 else x, t, cond)
            x0s, epss = pred.x0.chunk(k, dim=0), pred.eps.chunk(k, dim=0)  # computed inside the perturbation
        return {b: Prediction(x0s[i], epss[i]) for i, b in enumerate(names)}

    def branch_predictions(self, x: Tensor, t: Tensor) -> dict[str, Prediction]:
        """What :meth:`Guidance.combine` receives at ``(x, t)`` (for tests and diagnostics)."""
        return self.guidance.evaluate(self, x, t)

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        preds = self.guidance.evaluate(self, x, t)
        _, _, (alpha, sigma) = self.model.constants(t, x.dtype)  # memoised with the prediction's constants
        return self.guidance.combine(preds, x, t, alpha, sigma)
