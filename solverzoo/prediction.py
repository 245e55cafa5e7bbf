"""Every parametrisation conversion lives here.

A model predicts one of ``epsilon``, ``x0``, ``v`` (``alpha * eps - sigma * x0``) or
``velocity`` (``d x_t / dt = alpha' * x0 + sigma' * eps``). Solvers receive a
:class:`Prediction` that offers both the data prediction ``x0`` and the noise prediction
``eps``, so solvers never branch on what the model predicts.

Each conversion is affine in ``(x, out)``. A :class:`Prediction` made by :func:`from_output`
keeps ``x``, ``out`` and the four coefficients and materialises ``x0`` / ``eps`` only when
asked; :meth:`Prediction.lin` forms ``a * x0 + b * eps`` as one ``a' x + b' out`` directly,
so a DDIM-like update costs two tensor ops whatever the prediction type.
"""
from __future__ import annotations

from torch import Tensor

PREDICTION_TYPES = ("epsilon", "x0", "v", "velocity")


def _is(c, v: float) -> bool:
    """True when ``c`` is the Python float ``v`` (tensors, as under torch.compile, never are)."""
    return isinstance(c, float) and c == v


def _axpby(a, x: Tensor, b, y: Tensor) -> Tensor:
    if isinstance(a, float) and isinstance(b, float):
        if b == 0.0:
            return x * a
        if a == 0.0:
            return y * b
        return (x * a).add_(y, alpha=b) if a != 1.0 else x.add(y, alpha=b)
    return a * x + b * y


class Prediction:
    """The model's estimate at ``(x_t, t)``: data ``x0`` and noise ``eps``.

    Build it from tensors (``Prediction(x0, eps)``) or, lazily, as an affine map of the
    network input and output (:meth:`affine`).
    """

    __slots__ = ("_x0", "_eps", "_x", "_out", "_c")

    def __init__(self, x0: Tensor | None = None, eps: Tensor | None = None):
        self._x0, self._eps, self._x, self._out, self._c = x0, eps, None, None, None

    @classmethod
    def affine(cls, x: Tensor, out: Tensor, x0_x, x0_out, eps_x, eps_out) -> Prediction:
        """``x0 = x0_x * x + x0_out * out`` and ``eps = eps_x * x + eps_out * out``."""
        p = object.__new__(cls)
        p._x0 = p._eps = None
        p._x, p._out, p._c = x, out, (x0_x, x0_out, eps_x, eps_out)
        return p

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            c = self._c
            self._x0 = self._out if (_is(c[0], 0.0) and _is(c[1], 1.0)) else _axpby(c[0], self._x, c[1], self._out)
        return self._x0

    @property
    def eps(self) -> Tensor:
        if self._eps is None:
            c = self._c
            self._eps = self._out if (_is(c[2], 0.0) and _is(c[3], 1.0)) else _axpby(c[2], self._x, c[3], self._out)
        return self._eps

    def lin(self, a, b, c=0.0, x: Tensor | None = None) -> Tensor:
        """``a * x0 + b * eps (+ c * x)`` in the fewest tensor ops; ``x`` is the state the
        prediction was made at (folded into the affine map when it is the network input)."""
        if self._c is None:
            out = _axpby(a, self._x0, b, self._eps)
            return out if x is None or _is(c, 0.0) else out.add_(x, alpha=c) if isinstance(c, float) else out + c * x
        k = self._c
        cx = a * k[0] + b * k[2]
        if x is not None and x is self._x:
            cx, x = cx + c, None
        out = _axpby(cx, self._x, a * k[1] + b * k[3], self._out)
        return out if x is None or _is(c, 0.0) else out.add_(x, alpha=c) if isinstance(c, float) else out + c * x

    def velocity_flow(self) -> Tensor:
        """Velocity in the rectified-flow frame (``d/du`` of ``(1-u) x0 + u eps``)."""
        return self.lin(-1.0, 1.0)

    def map(self, fn) -> Prediction:
        return Prediction(fn(self.x0), fn(self.eps))

    def renoised(self, x: Tensor) -> Tensor:
        """The state a solver continues from after evaluating the denoiser at ``x``: ``x`` itself
        (the same tensor object). Guidance that renoises with another prediction than the guided one
        (CFG++, :class:`solverzoo.guidance.RenoisedPrediction`) returns ``alpha x0 + sigma eps``, the
        state at which its ``(x0, eps)`` pair is consistent. A solver declaring ``renoise = True``
        continues from this state (or forms its steps with :meth:`lin` only)."""
        return x


def coefficients(kind: str, alpha, sigma, alpha_dot=None, sigma_dot=None):
    """``(x0_x, x0_out, eps_x, eps_out)`` of the affine map from ``(x, out)`` for ``kind``."""
    if kind == "epsilon":
        return 1.0 / alpha, -sigma / alpha, 0.0, 1.0
    if kind == "x0":
        return 0.0, 1.0, 1.0 / sigma, -alpha / sigma
    if kind == "v":
        # [x; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps]
        norm = alpha * alpha + sigma * sigma
        return alpha / norm, -sigma / norm, sigma / norm, alpha / norm
    if kind == "velocity":
        # [x; u] = [[alpha, sigma], [alpha', sigma']] [x0; eps]
        det = alpha * sigma_dot - sigma * alpha_dot
        return sigma_dot / det, -sigma / det, -alpha_dot / det, alpha / det
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")


def from_output(kind: str, out: Tensor, x: Tensor, alpha, sigma, alpha_dot=None, sigma_dot=None) -> Prediction:
    """Turn a raw model output of prediction type ``kind`` into a (lazy) :class:`Prediction`.

    ``alpha`` and ``sigma`` (and, for ``velocity``, their time derivatives) are floats or
    tensors broadcastable against ``x``.
    """
    return Prediction.affine(x, out, *coefficients(kind, alpha, sigma, alpha_dot, sigma_dot))


def to_output(kind: str, pred: Prediction, alpha, sigma, alpha_dot=None, sigma_dot=None) -> Tensor:
    """Inverse of :func:`from_output`: express a prediction as a model output of ``kind``."""
    if kind == "epsilon":
        return pred.eps
    if kind == "x0":
        return pred.x0
    if kind == "v":
        return pred.lin(-sigma, alpha)
    if kind == "velocity":
        return pred.lin(alpha_dot, sigma_dot)
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")


def from_x0(x0: Tensor, x: Tensor, alpha, sigma) -> Prediction:
    """A prediction consistent with ``x`` given only the data estimate."""
    return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)
