"""Diffusion caching: skip backbone work inside a step by reusing what earlier calls computed.

A :class:`Cache` is a *policy* (TeaCache, first-block cache, TaylorSeer, DeepCache ...)
registered as a plugin of kind ``cache``. ``sz.sample(..., cache="teacache", cache_options={...})``
opens a :class:`CacheSession` for that one sampling call: it wraps the model's network, and every
network call runs the network's blocks through the policy instead of the plain loop. State never
outlives the call, and with no cache the network is called exactly as before.

The policy sees a transformer's stack through a :class:`StackCall` (one network call): the
stack's input streams, the first block's timestep-modulated input (TeaCache's indicator),
``run(start, stop, streams, rows)`` to compute blocks for some rows of the batch, and the
network's time input. Decisions are made **per row** (each sample and guidance branch on its
own), so a sample never depends on which other samples share its batch; skipped rows cost
nothing, and a call whose rows all compute runs the unmodified blocks (bit-identical to no cache).
A data-dependent decision reads a (B,) mask on the host once per network call (by nature); a
fixed-schedule cache (TaylorSeer, DeepCache) does not synchronise.

Which networks are cacheable: any network that *declares its block stack* with a
:class:`StackSpec` (which ModuleLists hold the blocks, in the order the network runs them, how
one block is called, and the first block's modulated input), or another :class:`Layout` (a
U-Net's, for DeepCache); a cache lists the layouts it drives in :attr:`Cache.layouts`. Two ways,
neither needing a change to solverzoo:

* on the network itself, a ``cache_stack`` attribute: a spec, or a method returning one::

      class MyTransformer(nn.Module):
          cache_stack = StackSpec("blocks", streams=..., call=..., output=..., indicator=...)

* for a class you do not own, a plugin registering the spec under the class's name::

      @hookimpl
      def register_cache_stacks(register):
          register(StackSpec("transformer_blocks", ..., name="ThirdPartyTransformer"))

:func:`find_stack` looks at the network and at what it wraps (``module`` / ``net`` /
``__wrapped__``, outermost first); on each object it takes the ``cache_stack`` attribute, else
the one registered for the name of its class or of a base class (method resolution order).
solverzoo's DiT declares its stack as an attribute; diffusers' DiT, SD3, FLUX transformers and
UNets are declared by the built-in plugin ``solverzoo_builtin.cache_stacks``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from solverzoo.registry import UnknownComponentError, registry

WRAPPER_ATTRS = ("module", "net", "__wrapped__")  # where find_stack looks inside a wrapper, in this order


class CacheError(ValueError):
    """A cache cannot be used with this network or denoiser."""


# -- how a network calls its blocks ---------------------------------------------------------
class Layout:
    """Base of what a network declares so that caches may drive its blocks (a :class:`StackSpec`,
    a chain of blocks carrying hidden streams, or another layout with the caches that know it).
    A layout implements ``problem(module)`` (why ``module`` lacks it, or None), ``depth(module)``
    (the blocks a cache may skip: the unit of :meth:`CacheSession.backbone_evals`), ``run(session,
    x, t, cond)`` (one call of ``session.net`` with ``session.module``'s blocks driven by
    ``session.policy``) and ``block_flops(module, full_pass)`` (FLOPs of each block and of the
    whole network for a batch of one; ``full_pass(counter=None)`` runs the network once under
    ``counter``, by default a fresh ``FlopCounterMode``, and returns it).
    """

    name: str = ""
    description: str = ""


@dataclass(frozen=True)
class StackSpec(Layout):
    """How one network family runs its blocks (a network's declaration that caches may drive them).

    attr: the ``nn.ModuleList`` attribute holding the blocks.
    streams: ``(args, kwargs) -> tuple of hidden-state tensors`` the blocks carry, from the
        arguments the network passes to a block.
    call: ``(block, args, kwargs, streams) -> streams`` one block applied.
    output: ``(streams) -> what the block loop expects back`` (the last block's return value).
    indicator: ``(block0, args, kwargs) -> Tensor (B, ...)`` the first block's timestep-modulated input.
    name: the network class's name (needed only to register the spec through a plugin).
    description: one line for listings (``solverzoo plugins``).
    then: ``(attr, call)`` pairs (or bare names: same ``call``) of further ModuleLists the network
        loops over right after ``attr`` (nothing in between changes the streams); ``call`` gets
        the first list's block arguments and maps the chain's streams through one of their blocks,
        adapting the layout where they take another. A cached first loop runs the whole chain.
    """

    attr: str
    streams: Callable
    call: Callable
    output: Callable
    indicator: Callable
    name: str = ""
    description: str = ""
    then: tuple = ()

    def __post_init__(self) -> None:
        # listings show an object's first docstring line: give each spec its own
        object.__setattr__(self, "__doc__", self.description or f"block stack .{self.attr}")
        then = tuple((t, None) if isinstance(t, str) else tuple(t) for t in self.then)
        if not all(len(t) == 2 and isinstance(t[0], str) and (t[1] is None or callable(t[1])) for t in then):
            raise TypeError(f"StackSpec then={self.then!r}: give (attribute name, block call or None) pairs or names")
        object.__setattr__(self, "then", then)

    def lists(self) -> list[tuple[str, Callable]]:  # (attribute, block call) of each list, in order
        return [(self.attr, self.call)] + [(a, c or self.call) for a, c in self.then]

    def problem(self, module) -> str | None:
        bad = [a for a, _ in self.lists() if not isinstance(getattr(module, a, None), nn.ModuleList)]
        return "; ".join(f"{type(module).__name__} declares its blocks at .{a}, which is not an nn.ModuleList"
                         for a in bad) or None

    def depth(self, module) -> int:
        return sum(len(getattr(module, a)) for a, _ in self.lists())

    def run(self, session: CacheSession, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        mods, lists = session.module._modules, self.lists()
        real = [mods[a] for a, _ in lists]
        mods[self.attr] = _Stack(session, real, [c for (a, c), r in zip(lists, real) for _ in r])
        mods.update({a: _Stack(session, [mods[a]], None) for a, _ in lists[1:]})  # their blocks run in the first loop
        try:
            return session.net(x, t, **cond)
        finally:
            mods.update({a: r for (a, _), r in zip(lists, real)})

    def block_flops(self, module, full_pass: Callable) -> tuple[list[int], int]:
        """Every block of a list is assumed to cost what its first one does."""
        from torch.utils.flop_counter import FlopCounterMode

        lists = [getattr(module, a) for a, _ in self.lists()]
        seen: dict = {}
        keep = lambda i: lambda mod, a, k: seen.setdefault(i, (a, k)) and None  # noqa: E731  (a pre-hook returns None)
        handles = [blocks[0].register_forward_pre_hook(keep(i), with_kwargs=True) for i, blocks in enumerate(lists)]
        try:
            total = int(full_pass().get_total_flops())
        finally:
            for h in handles:
                h.remove()
        costs: list[int] = []
        for i, blocks in enumerate(lists):
            with torch.no_grad(), FlopCounterMode(display=False) as one:
                blocks[0](*seen[i][0], **seen[i][1])
            costs += [int(one.get_total_flops())] * len(blocks)
        return costs, total


_HOW_TO_DECLARE = ("declare the stack: give the network class a `cache_stack` attribute (a solverzoo.caching.StackSpec "
                   "or other Layout, or a method returning one), or register a StackSpec named after the class through a "
                   "plugin's `register_cache_stacks` hook (see solverzoo.caching); a wrapper must expose the network as "
                   + ", ".join(f".{a}" for a in WRAPPER_ATTRS))


def _declared(obj) -> Layout | None:
    spec = getattr(obj, "cache_stack", None)  # the spec obj carries as an attribute (or method)
    if spec is None or isinstance(spec, Layout):
        return spec
    if callable(spec):
        spec = spec()
    if not isinstance(spec, Layout):
        raise CacheError(f"{type(obj).__name__}.cache_stack gave {type(spec).__name__}, not a "
                         "solverzoo.caching.StackSpec; " + _HOW_TO_DECLARE)
    return spec


def _registered(obj) -> Layout | None:
    for cls in type(obj).__mro__:  # the spec registered for obj's class or its nearest base
        try:
            return registry.get("cache_stack", cls.__name__)
        except UnknownComponentError:
            continue
    return None


def find_stack(net) -> tuple[nn.Module, Layout]:
    """The module whose block stack a cache drives, and its spec, looked up through wrappers.

    Raises:
        CacheError: nothing in ``net`` declares a block stack (the message says how to), or a
            declared stack's attribute is not an ``nn.ModuleList`` (a layout's modules are missing).
    """
    seen, todo, bad = set(), [net], []
    while todo:
        obj = todo.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        spec = _declared(obj) or _registered(obj)
        problem = spec.problem(obj) if spec is not None else None
        if spec is not None and problem is None:
            return obj, spec
        bad += [problem] if problem else []
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

    def __init__(self, session: CacheSession, blocks: Sequence[nn.Module], args: tuple, kwargs: dict,
                 calls: Sequence[Callable] | None = None):
        self.session, self.blocks, self.args, self.kwargs = session, blocks, args, kwargs
        self.spec = session.spec
        self.calls = [self.spec.call] * len(blocks) if calls is None else calls  # each block's call
        self.streams = self.spec.streams(args, kwargs)
        self.batch = self.streams[0].shape[0]
        self.depth = len(blocks)

    @property
    def t(self) -> Tensor:  # the network's time input for this call, (B,) on the device
        return self.session.t

    @property
    def state(self) -> dict:  # the policy's state for this sampling call (empty at the first call)
        return self.session.state

    @property
    def index(self) -> int:  # how many network calls this sampling call made before this one
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
        for blk, call in zip(self.blocks[start:stop], self.calls[start:stop]):
            streams = call(blk, args, kwargs, streams)
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
    layouts: tuple = (StackSpec,)  # the network layouts this cache drives

    def forward(self, call: StackCall) -> tuple:
        """The stack's output streams for this call (``call.run`` computes blocks); a cache of
        another layout gets that layout's call and returns what it says."""
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
                "syncs_per_call": self.syncs, "layouts": [c.__name__ for c in self.layouts], "description": self.description}


class _Stack(nn.Module):
    """Stands in for a block ModuleList during a cached call: the network's loop over the first
    list sees one 'block' that runs the whole chain under the policy; its loops over the later
    lists (``calls`` None) see no block."""

    def __init__(self, session: CacheSession, real: list, calls: list | None):
        super().__init__()
        self.__dict__.update(_session=session, _real=real, _calls=calls)  # not submodules
        self.context_pre_only = False  # read by diffusers' SD3 loop (controlnet branch only)

    def __len__(self) -> int:
        return len(self._real[0])

    def __iter__(self):
        if self._calls is not None:
            yield self._runner

    def __getitem__(self, i):
        return self._real[0][i]

    def _runner(self, *args, **kwargs):
        s = self._session
        blocks = [b for blocks in self._real for b in blocks]
        return s.spec.output(s.policy.forward(StackCall(s, blocks, args, kwargs, self._calls)))


def drives(cache, spec: Layout) -> bool:
    """Whether ``cache`` (a registered cache's name, or a Cache class or instance) drives the layout ``spec``."""
    return isinstance(spec, getattr(registry.get("cache", cache) if isinstance(cache, str) else cache, "layouts", (StackSpec,)))


def _mismatch(policy, module, spec) -> str:
    fits = ", ".join(n for n in registry.names("cache") if drives(n, spec)) or "none registered"
    kinds = " or ".join(c.__name__ for c in getattr(policy, "layouts", (StackSpec,)))
    return (f"cache {getattr(policy, 'name', type(policy).__name__)!r} drives a {kinds}, but {type(module).__name__} "
            f"declares a {type(spec).__name__}; caches for it: {fits}")


class CacheSession:
    """A cache policy's state for one sampling call, and what it computed."""

    def __init__(self, policy: Cache, net: Callable):
        self.policy, self.net = policy, net
        self.module, self.spec = find_stack(net)
        if not drives(policy, self.spec):
            raise CacheError(_mismatch(policy, self.module, self.spec))
        self.depth = self.spec.depth(self.module)
        self.state: dict = {}
        self.layout_state: dict = {}  # what the layout keeps for this sampling call
        self.calls = 0  # network calls
        self.rows = 0  # rows (samples x branches) passed through the network
        self.block_rows = 0  # (row, block) pairs actually computed (a layout may weight blocks by cost)
        self.t: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        self.t = t
        return self.spec.run(self, x, t, cond)

    def backbone_evals(self, batch: int) -> float:
        """Full-network-equivalent evaluations per sample (equals NFE without a cache)."""
        return self.block_rows / (self.depth * batch)


def estimate_flops(net: Callable, x: Tensor, t: Tensor, cond: dict | None = None) -> dict:
    """FLOPs of one network evaluation per row: ``{"full", "block" (the blocks' mean), "depth"}``,
    counted by torch's FLOP counter on a batch of one: matrix products and convolutions, not
    elementwise work nor fused attention where the backend's kernel has no FLOP formula (CPU
    scaled_dot_product_attention in torch 2.13, about 8% of a shapes-DiT block). A StackSpec
    assumes every block of a list costs what its first one does (see ``Layout.block_flops``)."""
    from torch.utils.flop_counter import FlopCounterMode

    module, spec = find_stack(net)

    def full_pass(counter=None):
        with torch.no_grad(), (FlopCounterMode(display=False) if counter is None else counter) as mode:
            net(x[:1], t[:1], **{k: v[:1] for k, v in (cond or {}).items()})
        return mode

    blocks, full = spec.block_flops(module, full_pass)
    total, depth = sum(blocks), len(blocks)
    return {"full": int(full), "block": total // depth if total % depth == 0 else total / depth, "depth": depth}


def flops_per_sample(cost: dict, nfe_rows: float, backbone_evals: float) -> float:
    """Estimated FLOPs per sample: the non-block part for every network row, the blocks for the
    (row, block) pairs computed. ``nfe_rows``: network rows per sample (= NFE)."""
    other = cost["full"] - cost["depth"] * cost["block"]
    return float(nfe_rows * other + backbone_evals * cost["depth"] * cost["block"])
