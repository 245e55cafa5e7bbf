"""Network perturbations for guidance: skip blocks or change self-attention for some rows of a batch.

Perturbation guidance (PAG, SEG, SLG / STG) evaluates one branch of the batched forward with a
weakened network; SAG reads a self-attention map. A network declares *where* its blocks and
their self-attention are with a :class:`PerturbSpec`, the way it declares its block stack to
caches (:class:`solverzoo.caching.StackSpec`), and the guidance says *what* to do with a
:class:`Perturbation`. Two ways to declare, neither needing a change to solverzoo:

* on the network itself, a ``perturb_spec`` attribute (a :class:`PerturbSpec`, or a method
  taking no argument that returns one)::

      class MyTransformer(nn.Module):
          perturb_spec = PerturbSpec("blocks", skip=..., attention="attn", qkv=..., project=...)

* for a class you do not own, a spec named after the class: registered by a plugin (kind
  ``perturb_spec``, where the registry has that kind) or handed to the guidance
  (``Perturbation.specs``; the built-in guidance carries specs for diffusers transformers).

:func:`perturbed` applies a perturbation to the rows ``rows`` of one network call: the declared
modules are swapped for the call only, the unperturbed rows are computed by the unmodified
modules on the whole batch (so they equal an unperturbed call of the same batch bit for bit),
and the perturbed rows are recomputed and written over.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solverzoo.caching import WRAPPER_ATTRS


class PerturbError(ValueError):
    """A perturbation cannot be applied to this network."""


@dataclass(frozen=True)
class PerturbSpec:
    """Where a network family keeps what perturbation guidance changes.

    blocks: the ``nn.ModuleList`` attribute holding the transformer blocks (what SLG skips).
    skip: ``(block, args, kwargs) -> what the block returns when skipped`` (its input passed through).
    attention: the attribute of a block holding its self-attention module (None: none declared).
    qkv: ``(attn, args, kwargs) -> (q, k, v)``, each ``(B, heads, N, d)``, from the attention
        module's own call arguments.
    project: ``(attn, y, args, kwargs) -> the module's return value`` from per-head outputs
        ``y`` ``(B, heads, N, d)`` (output projection and any reshaping).
    token_grid: ``(module, n_tokens) -> (h, w)`` the image tokens as a grid (SEG, SAG); None:
        a square grid of ``n_tokens``.
    name: the network class's name (needed only for a spec registered or handed over by name).
    description: one line for listings.
    """

    blocks: str
    skip: Callable
    attention: str | None = None
    qkv: Callable | None = None
    project: Callable | None = None
    token_grid: Callable | None = None
    name: str = ""
    description: str = ""


@dataclass(frozen=True)
class Perturbation:
    """What to do to one branch's rows.

    layers: block indices (negative counts from the end), ``"middle"`` (block ``depth // 2``); None: every block.
    attention: ``(q, k, v, grid) -> y`` replacing the self-attention of ``layers`` (``grid`` the
        token grid ``(h, w)``); None skips the blocks instead.
    observe: True to leave the output unchanged and only call ``attention`` (to read a map).
    specs: fallback specs by network class name, for classes that carry none.
    what: the guidance's name, for messages.
    """

    layers: tuple[int, ...] | None = None
    attention: Callable | None = None
    observe: bool = False
    specs: dict = field(default_factory=dict)
    what: str = "perturbation"


_HOW = ("give the network class a `perturb_spec` attribute (a solverzoo.perturb.PerturbSpec naming its block list and "
        "self-attention), or register a PerturbSpec named after the class; a wrapper must expose the network as "
        + ", ".join(f".{a}" for a in WRAPPER_ATTRS))


def _spec_of(obj, fallback: dict) -> PerturbSpec | None:
    spec = getattr(obj, "perturb_spec", None)
    if callable(spec) and not isinstance(spec, PerturbSpec):
        spec = spec()
    if spec is not None:
        if not isinstance(spec, PerturbSpec):
            raise PerturbError(f"{type(obj).__name__}.perturb_spec is {type(spec).__name__}, not a PerturbSpec; {_HOW}")
        return spec
    from solverzoo.registry import KINDS, UnknownComponentError, registry

    for cls in type(obj).__mro__:
        if "perturb_spec" in KINDS:
            try:
                return registry.get("perturb_spec", cls.__name__)
            except UnknownComponentError:
                pass
        if cls.__name__ in fallback:
            return fallback[cls.__name__]
    return None


def find_perturb_spec(net, fallback: dict | None = None) -> tuple[nn.Module, PerturbSpec]:
    """The module holding the declared blocks, and its spec, looked up through wrappers."""
    seen, todo = set(), [net]
    while todo:
        obj = todo.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        spec = _spec_of(obj, fallback or {})
        if spec is not None and isinstance(getattr(obj, spec.blocks, None), nn.ModuleList):
            return obj, spec
        todo += [getattr(obj, a, None) for a in WRAPPER_ATTRS]
    raise PerturbError(f"perturbation guidance needs to know the network's blocks and self-attention; nothing in "
                       f"{type(net).__name__} declares them. To make a network perturbable, {_HOW}")


def _take(v, rows: slice, batch: int):
    if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == batch:
        return v[rows]
    if isinstance(v, (tuple, list)):
        return type(v)(_take(x, rows, batch) for x in v)
    if isinstance(v, dict):
        return {k: _take(x, rows, batch) for k, x in v.items()}
    return v


def _merge(out, new, rows: slice):
    if isinstance(out, Tensor):
        return torch.cat([out[:rows.start], new.to(out.dtype), out[rows.stop:]], dim=0)
    if isinstance(out, tuple):
        return tuple(o if o is None else _merge(o, n, rows) for o, n in zip(out, new))
    raise PerturbError(f"cannot merge a perturbed output of type {type(out).__name__}; the spec's skip/project "
                       "must return what the module returns (a tensor or a tuple of tensors)")


class _Rows(nn.Module):
    """Stands in for one module during a call: computes it, then rewrites the rows ``rows``."""

    def __init__(self, real: nn.Module, fn: Callable, rows: slice, batch: int, observe: bool, what: str):
        super().__init__()
        object.__setattr__(self, "_real", real)
        self._fn, self._rows, self._batch, self._observe, self._what = fn, rows, batch, observe, what

    def __getattr__(self, name):  # attributes of the real module (e.g. diffusers' block flags)
        return getattr(object.__getattribute__(self, "_real"), name)

    def forward(self, *args, **kwargs):
        out = self._real(*args, **kwargs)
        first = out if isinstance(out, Tensor) else next((o for o in out if isinstance(o, Tensor)), None)
        if first is None or first.shape[0] != self._batch:
            got = None if first is None else first.shape[0]
            raise PerturbError(f"{self._what}: a perturbed module saw a batch of {got} rows, expected {self._batch} (all "
                               "guidance branches); a cache that skips rows or a network that re-batches inside "
                               "cannot be combined with perturbation guidance")
        new = self._fn(self._real, _take(args, self._rows, self._batch),
                       {k: _take(v, self._rows, self._batch) for k, v in kwargs.items()})
        return out if self._observe else _merge(out, new, self._rows)


def _square(n: int) -> tuple[int, int]:
    h = math.isqrt(n)
    if h * h != n:
        raise PerturbError(f"the attention sequence has {n} tokens, not a square grid; declare token_grid in the PerturbSpec")
    return h, h


@contextmanager
def perturbed(net, p: Perturbation, rows: slice, batch: int):
    """Apply ``p`` to the rows ``rows`` (of ``batch``) of every call of ``net`` inside the block."""
    module, spec = find_perturb_spec(net, p.specs)
    blocks = getattr(module, spec.blocks)
    n = len(blocks)
    layers = list(range(n)) if p.layers is None else [n // 2] if p.layers == "middle" else list(p.layers)
    bad = [i for i in layers if not -n <= int(i) < n]
    if bad:
        raise PerturbError(f"{p.what}: layers {bad} out of range; {type(module).__name__} has {n} blocks (0..{n - 1})")
    if p.attention is None:
        targets = [(blocks, str(int(i) % n), lambda real, a, k: spec.skip(real, a, k)) for i in layers]
    else:
        if spec.attention is None or spec.qkv is None or spec.project is None:
            raise PerturbError(f"{p.what} changes self-attention, but the PerturbSpec of {type(module).__name__} declares "
                               "no attention (attention, qkv and project); only block skipping (slg) works with it")

        def attend(real, a, k):
            q, kk, v = spec.qkv(real, a, k)
            grid = spec.token_grid(module, q.shape[-2]) if spec.token_grid is not None else None
            y = p.attention(q, kk, v, grid or _square(q.shape[-2]))
            return None if p.observe else spec.project(real, y, a, k)

        targets = [(blocks[int(i) % n], spec.attention, attend) for i in layers]
    swaps = []
    try:
        for parent, key, fn in targets:
            real = parent._modules[key]
            parent._modules[key] = _Rows(real, fn, rows, batch, p.observe, p.what)
            swaps.append((parent, key, real))
        yield module
    finally:
        for parent, key, real in reversed(swaps):
            parent._modules[key] = real


# -- attention replacements -------------------------------------------------------------------
def identity_attention(q: Tensor, k: Tensor, v: Tensor, grid) -> Tensor:
    """PAG's perturbed self-attention: the identity attention map, so each token's output is its own value."""
    return v


def gaussian_blur_tokens(t: Tensor, grid: tuple[int, int], sigma: float) -> Tensor:
    """Blur ``(B, H, N, d)`` token features over the ``h x w`` grid of their first ``h * w`` tokens
    with a separable Gaussian of std ``sigma`` (radius ``ceil(3 sigma)``, cut at the grid size,
    weights renormalised, reflected borders); ``sigma = inf`` gives every token the grid mean."""
    h, w = grid
    img, rest = t[..., :h * w, :], t[..., h * w:, :]
    if math.isinf(sigma):
        out = img.mean(dim=-2, keepdim=True).expand_as(img)
        return torch.cat([out, rest], dim=-2)
    B, H, _, d = t.shape
    x = img.reshape(B * H, h, w, d).permute(0, 3, 1, 2)  # (BH, d, h, w)
    for dim, size in ((2, h), (3, w)):
        r = min(math.ceil(3 * sigma), size - 1)
        if r <= 0:
            continue
        offs = torch.arange(-r, r + 1, dtype=torch.float64)
        ker = torch.exp(-0.5 * (offs / sigma) ** 2)
        ker = (ker / ker.sum()).to(x.dtype)
        pad = (0, 0, r, r) if dim == 2 else (r, r, 0, 0)
        xp = F.pad(x, pad, mode="reflect")
        x = sum(ker[j] * xp.narrow(dim, j, size) for j in range(2 * r + 1))
    out = x.permute(0, 2, 3, 1).reshape(B, H, h * w, d)
    return torch.cat([out, rest], dim=-2)


def smoothed_attention(sigma: float) -> Callable:
    """SEG's perturbed self-attention: the query blurred over the token grid (std ``sigma``),
    which blurs the attention energy landscape (Hong 2024)."""
    def attend(q, k, v, grid):
        return F.scaled_dot_product_attention(gaussian_blur_tokens(q, grid, sigma), k, v)
    return attend


def attention_map(q: Tensor, k: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d))``, ``(B, heads, N, N)``."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
