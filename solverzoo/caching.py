"""Diffusion caching: skip backbone work inside a step by reusing what earlier calls computed.

A :class:`Cache` is a *policy* (TeaCache, first-block cache, TaylorSeer ...) registered as a
plugin of kind ``cache``. ``sz.sample(..., cache="teacache", cache_options={...})`` opens a
:class:`CacheSession` for that one sampling call: it wraps the model's network, and every
network call runs the transformer's block stack through the policy instead of the plain loop.
State never outlives the call, and with no cache the network is called exactly as before.

The policy sees the stack through a :class:`StackCall` (one network call): the stack's input
streams, the first block's timestep-modulated input (TeaCache's indicator), ``run(start, stop,
streams, rows)`` to compute blocks for some rows of the batch, and the network's time input.
Decisions are made **per row** (each sample and guidance branch on its own), so a sample never
depends on which other samples share its batch; skipped rows cost nothing, and a call whose
rows all compute runs the unmodified blocks (bit-identical to no cache).

Which networks are cacheable: any network that *declares its block stack* with a
:class:`StackSpec` (which ModuleList holds the blocks, how one block is called, and the first
block's modulated input). Two ways, neither needing a change to solverzoo:

* on the network itself, a ``cache_stack`` attribute: a :class:`StackSpec`, or a method taking
  no argument that returns one (for a stack that depends on the instance)::

      class MyTransformer(nn.Module):
          cache_stack = StackSpec("blocks", streams=..., call=..., output=..., indicator=...)

* for a class you do not own, a plugin registering the spec under the class's name::

      @hookimpl
      def register_cache_stacks(register):
          register(StackSpec("transformer_blocks", ..., name="ThirdPartyTransformer"))

:func:`find_stack` looks at the network and at what it wraps (``module`` / ``net`` /
``__wrapped__``, outermost first); on each object it takes the ``cache_stack`` attribute, else
the ``cache_stack`` registered for the name of its class or of a base class (method resolution
order). solverzoo's DiT declares its stack as an attribute; the diffusers
``DiTTransformer2DModel`` and ``SD3Transformer2DModel`` through the built-in plugin
``solverzoo_builtin.cache_stacks``.

Per-row decisions read a (B,) mask on the host once per network call: caches that decide on the
data synchronise once per call, by nature; a fixed-schedule cache (TaylorSeer) does not.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from solverzoo.registry import UnknownComponentError, registry

WRAPPER_ATTRS = ("module", "net", "__wrapped__")
"""Attributes through which :func:`find_stack` looks inside a wrapper, in this order."""


class CacheError(ValueError):
    """A cache cannot be used with this network or denoiser."""


# -- how a network calls its blocks ---------------------------------------------------------
@dataclass(frozen=True)
class StackSpec:
    """How one network family runs its blocks (a network's declaration that caches may drive them).

    attr: the ``nn.ModuleList`` attribute holding the blocks.
    streams: ``(args, kwargs) -> tuple of hidden-state tensors`` the blocks carry, from the
        arguments the network passes to a block.
    call: ``(block, args, kwargs, streams) -> streams`` one block applied.
    output: ``(streams) -> what the block loop expects back`` (the last block's return value).
    indicator: ``(block0, args, kwargs) -> Tensor (B, ...)`` the first block's timestep-modulated input.
    name: the network class's name (needed only to register the spec through a plugin).
    description: one line for listings (``solverzoo plugins``).
    """

    attr: str
    streams: Callable
    call: Callable
    output: Callable
    indicator: Callable
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        # listings show an object's first docstring line: give each spec its own
        object.__setattr__(self, "__doc__", self.description or f"block stack .{self.attr}")


_HOW_TO_DECLARE = ("declare the stack: give the network class a `cache_stack` attribute (a solverzoo.caching.StackSpec, "
                   "or a method returning one), or register a StackSpec named after the class through a plugin's "
                   "`register_cache_stacks` hook (see solverzoo.caching); a wrapper must expose the network as "
                   + ", ".join(f".{a}" for a in WRAPPER_ATTRS))


def _declared(obj) -> StackSpec | None:
    """The spec ``obj`` carries as its ``cache_stack`` attribute (or method), if any."""
    spec = getattr(obj, "cache_stack", None)
    if spec is None or isinstance(spec, StackSpec):
        return spec
    if callable(spec):
        spec = spec()
    if not isinstance(spec, StackSpec):
        raise CacheError(f"{type(obj).__name__}.cache_stack gave {type(spec).__name__}, not a "
                         "solverzoo.caching.StackSpec; " + _HOW_TO_DECLARE)
    return spec


def _registered(obj) -> StackSpec | None:
    """The spec registered (kind ``cache_stack``) for ``obj``'s class or its nearest base class."""
    for cls in type(obj).__mro__:
        try:
            return registry.get("cache_stack", cls.__name__)
        except UnknownComponentError:
            continue
    return None


def find_stack(net) -> tuple[nn.Module, StackSpec]:
    """The module whose block stack a cache drives, and its spec, looked up through wrappers.

    Raises:
        CacheError: nothing in ``net`` declares a block stack (the message says how to), or a
            declared stack's attribute is not an ``nn.ModuleList``.
    """
    seen, todo, bad = set(), [net], []
    while todo:
        obj = todo.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        spec = _declared(obj) or _registered(obj)
        if spec is not None:
            if isinstance(getattr(obj, spec.attr, None), nn.ModuleList):
                return obj, spec
            bad.append(f"{type(obj).__name__} declares its blocks at .{spec.attr}, which is not an nn.ModuleList")
        todo += [getattr(obj, a, None) for a in WRAPPER_ATTRS]
    found = f" ({'; '.join(bad)})" if bad else ""
    raise CacheError(f"caches drive a transformer's block stack; no declared block stack found in "
                     f"{type(net).__name__}{found}. To make a network cacheable, {_HOW_TO_DECLARE}")


# -- one network call, as the policy sees it ------------------------------------------------
def _take(v, rows: Tensor, batch: int):
    if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == batch:
        return v.index_select(0, rows)
    if isinstance(v, dict):
        return {k: _take(x, rows, batch) for k, x in v.items()}
    return v


class StackCall:
    """One pass through the block stack (one network call) under a cache policy."""

    def __init__(self, session: CacheSession, blocks: Sequence[nn.Module], args: tuple, kwargs: dict):
        self.session, self.blocks, self.args, self.kwargs = session, blocks, args, kwargs
        self.spec = session.spec
        self.streams = self.spec.streams(args, kwargs)
        self.batch = self.streams[0].shape[0]
        self.depth = len(blocks)

    @property
    def t(self) -> Tensor:
        """The network's time input for this call, (B,) on the device."""
        return self.session.t

    @property
    def state(self) -> dict:
        """The policy's state for this sampling call (empty at the first call)."""
        return self.session.state

    @property
    def index(self) -> int:
        """How many network calls this sampling call made before this one."""
        return self.session.calls - 1

    def indicator(self) -> Tensor:
        return self.spec.indicator(self.blocks[0], self.args, self.kwargs)

    def run(self, start: int, stop: int, streams: tuple, rows: Tensor | None = None) -> tuple:
        """Blocks ``start:stop`` applied to ``streams`` (already restricted to ``rows`` when given)."""
        args, kwargs = self.args, self.kwargs
        if rows is not None:
            args = tuple(_take(a, rows, self.batch) for a in args)
            kwargs = {k: _take(v, rows, self.batch) for k, v in kwargs.items()}
        n = self.batch if rows is None else int(rows.numel())
        for blk in self.blocks[start:stop]:
            streams = self.spec.call(blk, args, kwargs, streams)
        self.session.block_rows += n * (stop - start)
        return streams

    def run_rows(self, start: int, stop: int, streams: tuple, compute: Tensor | None) -> tuple[tuple, Tensor | None]:
        """Run blocks for the rows where ``compute`` (a (B,) bool mask) is true; returns the
        computed streams for those rows and the row indices (None: every row)."""
        if compute is None:
            return self.run(start, stop, streams), None
        rows = compute.nonzero().flatten()  # the one host read of a data-dependent cache
        if rows.numel() == self.batch:
            return self.run(start, stop, streams), None
        if rows.numel() == 0:
            return (), rows
        return self.run(start, stop, tuple(s.index_select(0, rows) for s in streams), rows), rows


def scatter(base: Sequence[Tensor], rows: Tensor | None, values: Sequence[Tensor]) -> tuple:
    """``base`` with ``rows`` replaced by ``values`` (``rows`` None: ``values`` everywhere)."""
    if rows is None:
        return tuple(values)
    if rows.numel() == 0:
        return tuple(base)
    return tuple(b.index_copy(0, rows, v) for b, v in zip(base, values))


def rel_l1(a: Tensor, b: Tensor) -> Tensor:
    """Per-row relative L1 change ``mean|a - b| / mean|b|``, (B,) in float32."""
    dims = tuple(range(1, a.ndim))
    return ((a - b).float().abs().mean(dims) / b.float().abs().mean(dims).clamp_min(1e-12))


# -- the policy contract ----------------------------------------------------------------------
class Cache:
    """Base class of cache policies. Subclasses implement :meth:`forward`; their constructor's
    keyword arguments are the cache's options."""

    name: str = "cache"
    syncs: bool = True  # reads a per-row decision on the host once per network call

    def forward(self, call: StackCall) -> tuple:
        """The stack's output streams for this call (``call.run`` computes blocks)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {p.name: p.default for p in list(sig.parameters.values())[1:] if p.kind is p.KEYWORD_ONLY}

    def describe(self) -> dict:
        return {"name": self.name, **{k: getattr(self, k) for k in self.options()}}

    @property
    def description(self) -> str:
        doc = inspect.getdoc(type(self)) or ""
        return doc.splitlines()[0] if doc else ""

    def info(self) -> dict:
        return {"name": self.name, "options": {k: repr(v) for k, v in self.options().items()},
                "syncs_per_call": self.syncs, "description": self.description}


class _Stack(nn.Module):
    """Stands in for the block ModuleList during a cached call: the network's loop sees one
    'block' that runs the whole stack under the policy."""

    def __init__(self, session: CacheSession, real: nn.ModuleList):
        super().__init__()
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_real", real)
        self.context_pre_only = False  # read by diffusers' SD3 loop (controlnet branch only)

    def __len__(self) -> int:
        return len(self._real)

    def __iter__(self):
        yield self._runner

    def __getitem__(self, i):
        return self._real[i]

    def _runner(self, *args, **kwargs):
        s = self._session
        return s.spec.output(s.policy.forward(StackCall(s, self._real, args, kwargs)))


class CacheSession:
    """A cache policy's state for one sampling call, and what it computed."""

    def __init__(self, policy: Cache, net: Callable):
        self.policy = policy
        self.net = net
        self.module, self.spec = find_stack(net)
        self.depth = len(getattr(self.module, self.spec.attr))
        self.state: dict = {}
        self.calls = 0  # network calls
        self.rows = 0  # rows (samples x branches) passed through the network
        self.block_rows = 0  # (row, block) pairs actually computed
        self.t: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        self.t = t
        real = self.module._modules[self.spec.attr]
        self.module._modules[self.spec.attr] = _Stack(self, real)
        try:
            return self.net(x, t, **cond)
        finally:
            self.module._modules[self.spec.attr] = real

    def backbone_evals(self, batch: int) -> float:
        """Full-network-equivalent evaluations per sample (equals NFE without a cache)."""
        return self.block_rows / (self.depth * batch)


def estimate_flops(net: Callable, x: Tensor, t: Tensor, cond: dict | None = None) -> dict:
    """FLOPs of one network evaluation per row: ``{"full", "block", "depth"}``, counted by torch's
    FLOP counter on a batch of one: matrix products and convolutions; elementwise work is not
    counted, and neither is fused attention where the backend's kernel has no FLOP formula
    (CPU scaled_dot_product_attention in torch 2.13, about 8% of a shapes-DiT block). Every
    block is assumed to cost what the first one does."""
    from torch.utils.flop_counter import FlopCounterMode

    module, spec = find_stack(net)
    blocks = getattr(module, spec.attr)
    x1, t1 = x[:1], t[:1]
    c1 = {k: v[:1] for k, v in (cond or {}).items()}
    seen: list = []
    handle = blocks[0].register_forward_pre_hook(lambda mod, a, k: seen.append((a, k)) if not seen else None,
                                                 with_kwargs=True)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as full:
            net(x1, t1, **c1)
    finally:
        handle.remove()
    with torch.no_grad(), FlopCounterMode(display=False) as one:
        blocks[0](*seen[0][0], **seen[0][1])
    return {"full": int(full.get_total_flops()), "block": int(one.get_total_flops()), "depth": len(blocks)}


def flops_per_sample(cost: dict, nfe_rows: float, backbone_evals: float) -> float:
    """Estimated FLOPs per sample: the non-block part for every network row, the blocks for the
    (row, block) pairs computed. ``nfe_rows``: network rows per sample (= NFE)."""
    other = cost["full"] - cost["depth"] * cost["block"]
    return float(nfe_rows * other + backbone_evals * cost["depth"] * cost["block"])
