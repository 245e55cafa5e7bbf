"""DeepCache for U-Nets, and the U-Net layout it drives (see :mod:`solverzoo.caching`).

DeepCache (Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024)
observes that a U-Net's deep features change slowly from one denoising step to the next while
its skip branches carry the detail. On a *full* call it keeps the deep features: the output of
the up block just above the chosen skip branch. On the calls in between it recomputes only the
shallow branch (the first ``branch`` down blocks and the last ``branch`` up blocks) and feeds the
kept features to it, skipping the rest of the U-Net.

How the cache reaches a U-Net without re-implementing its forward: :class:`UNetSpec` names the
down blocks, the middle block and the up blocks; on a cached call the deep blocks are replaced,
for that one call, by stand-ins that return the kept features (the block that produced them) or
shape-only placeholders of what they returned on the last full call (the deep blocks whose
outputs only deep blocks consume), while the network's own forward runs unchanged around them.
A full call runs the unmodified network (hooks only record), so a DeepCache that refreshes at
every call (``interval=1``) equals no cache bit for bit.

Any U-Net whose forward has this shape becomes cacheable by declaring ``cache_stack =
UNetSpec(down=..., mid=..., up=...)`` (or registering one named after its class through
``register_cache_stacks``); diffusers' UNet2DModel and UNet2DConditionModel are declared by
:mod:`solverzoo_builtin.cache_stacks`.

Work is reported like the other caches (``SampleResult.backbone_evals``), with each block
weighted by its FLOPs (torch's FLOP counter on the first call of a sampling call), since a
U-Net's shallow, high-resolution blocks cost more than its deep ones.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from solverzoo.caching import Cache, CacheError, Layout

__all__ = ["Deep", "DeepCache", "UNetCall", "UNetSpec", "refresh_schedule"]


# -- the layout -------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetSpec(Layout):
    """A U-Net's layout: ``down`` (ModuleList), ``mid`` (a module, may be None), ``up`` (ModuleList).

    The network's forward must run each down block once, then the middle block, then each up
    block, the ``i``-th from the end consuming the skip features of the ``i``-th down block
    (diffusers' UNet2DModel and UNet2DConditionModel do). A block's call may return a tensor or
    a tuple of them; the network may read the blocks' attributes (``resnets`` ...).
    """

    down: str = "down_blocks"
    mid: str = "mid_block"
    up: str = "up_blocks"
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.description or f"U-Net .{self.down} / .{self.mid} / .{self.up}")

    def problem(self, module) -> str | None:
        down, up = getattr(module, self.down, None), getattr(module, self.up, None)
        if not isinstance(down, nn.ModuleList) or not isinstance(up, nn.ModuleList):
            return f"{type(module).__name__} declares U-Net blocks at .{self.down} and .{self.up}, which are not nn.ModuleLists"
        if not len(down) or len(down) != len(up):
            return f"{type(module).__name__} has {len(down)} down and {len(up)} up blocks; a U-Net layout needs as many of each"
        return None

    def slots(self, module) -> list[tuple[nn.Module, str]]:
        """``(owner, key)`` of every block in the order the network runs them: down, middle, up."""
        down, up = getattr(module, self.down), getattr(module, self.up)
        mid = [(module, self.mid)] if getattr(module, self.mid, None) is not None else []
        return [(down, k) for k in down._modules] + mid + [(up, k) for k in up._modules]

    def depth(self, module) -> int:
        return len(self.slots(module))

    def run(self, session, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        return session.policy.forward(UNetCall(session, x, t, cond))

    def block_flops(self, module, full_pass: Callable) -> tuple[list[int], int]:
        return _flops_by_block([o._modules[k] for o, k in self.slots(module)], full_pass)


def _flops_by_block(blocks: list, run: Callable) -> tuple[list[int], object]:
    """FLOPs each block performs during ``run(counter)`` (which runs the network under ``counter``
    and returns what the caller wants back), and that."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    marks = [[0, 0] for _ in blocks]
    mark = lambda i, j: lambda *_: marks[i].__setitem__(j, counter.get_total_flops())  # noqa: E731  (hooks return None)
    handles = [b.register_forward_pre_hook(mark(i, 0)) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(mark(i, 1)) for i, b in enumerate(blocks)]
    try:
        out = run(counter)
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, FlopCounterMode):
        out = int(out.get_total_flops())
    return [int(b - a) for a, b in marks], out


# -- one network call under a U-Net cache -------------------------------------------------------
def _shapes(o):
    """What a placeholder of ``o`` needs: tensors become (shape, dtype, device), sequences recurse."""
    if isinstance(o, Tensor):
        return _Shape(tuple(o.shape), o.dtype, o.device)
    if isinstance(o, (tuple, list)):
        return type(o)(_shapes(v) for v in o)
    return o


@dataclass(frozen=True)
class _Shape:
    shape: tuple
    dtype: torch.dtype
    device: torch.device


def _placeholder(tree):
    """Zeros broadcast to each recorded shape (no memory): only deep blocks, which are skipped, read them."""
    if isinstance(tree, _Shape):
        return torch.zeros((), dtype=tree.dtype, device=tree.device).expand(tree.shape)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_placeholder(v) for v in tree)
    return tree


class _Reuse:
    """Stands in for a block during a cached call: returns ``value`` without computing anything
    and shows the network the real block's attributes (``resnets``, ``has_cross_attention`` ...)."""

    def __init__(self, real, value):
        self.__dict__.update(_real=real, _value=value)

    def __getattr__(self, name):
        return getattr(self.__dict__["_real"], name)

    def __call__(self, *args, **kwargs):
        return self._value


@dataclass
class Deep:
    """What a full call keeps: the deep features for ``branch`` and placeholders' shapes, for inputs like ``key``."""

    branch: int
    features: object
    shapes: dict
    key: tuple


class UNetCall:
    """One U-Net call under a cache: :meth:`full` runs every block and keeps the deep features;
    :meth:`shallow` recomputes only the skip branch around kept features."""

    def __init__(self, session, x: Tensor, t: Tensor, cond: dict):
        self.session, self.x, self.t, self.cond = session, x, t, cond
        self.spec = session.spec
        self.slots = self.spec.slots(session.module)
        self.n = len(getattr(session.module, self.spec.down))  # down blocks (= up blocks)
        self.key = (tuple(x.shape), x.dtype, x.device)

    @property
    def state(self) -> dict:  # the policy's state for this sampling call
        return self.session.state

    @property
    def index(self) -> int:  # how many network calls this sampling call made before this one
        return self.session.calls - 1

    def parts(self, branch: int) -> tuple[list[int], int, list[int]]:
        """Slot indices for ``branch``: the shallow blocks, the block whose output are the deep
        features (the one run just before the up block ``branch`` from the end), and the deep
        blocks in between (skipped with placeholders)."""
        n, depth = self.n, len(self.slots)
        if not 1 <= branch <= (depth - 1) // 2:  # the producer must lie below the shallow down blocks
            raise CacheError(f"deepcache branch={branch} needs a deeper U-Net: {type(self.session.module).__name__} has "
                             f"{n} down blocks{' and a middle block' if depth > 2 * n else ''}; use a branch from 1 to "
                             f"{(depth - 1) // 2}")
        top = depth - branch  # the first shallow up block
        return list(range(branch)) + list(range(top, depth)), top - 1, list(range(branch, top - 1))

    def _charge(self, slots: list[int]) -> None:
        weights = self.session.layout_state.get("weights") or [1.0] * len(self.slots)
        self.session.block_rows += self.x.shape[0] * sum(weights[i] for i in slots)

    def _run(self, counter=None):
        if counter is None:
            return self.session.net(self.x, self.t, **self.cond)
        with counter:
            return self.session.net(self.x, self.t, **self.cond)

    def full(self, branch: int) -> tuple[Tensor, Deep]:
        """The unmodified network's output, and the deep features for ``branch`` it computed."""
        _, producer, deep = self.parts(branch)
        kept: dict = {}
        keep = lambda i: lambda mod, args, out: kept.__setitem__(i, out)  # noqa: E731  (hooks return None)
        mods = [owner._modules[k] for owner, k in self.slots]
        handles = [mods[i].register_forward_hook(keep(i)) for i in deep + [producer]]
        try:
            if "weights" in self.session.layout_state:
                out = self._run()
            else:  # the first full call also measures each block's FLOPs
                flops, out = _flops_by_block(mods, self._run)
                total = sum(flops)
                self.session.layout_state["weights"] = [f * len(flops) / total for f in flops] if total else None
        finally:
            for h in handles:
                h.remove()
        self._charge(list(range(len(self.slots))))
        return out, Deep(branch, kept[producer], {i: _shapes(kept[i]) for i in deep}, self.key)

    def shallow(self, kept: Deep) -> Tensor:
        """The network's output with the deep blocks replaced by ``kept`` (from a full call on an input like this one)."""
        if kept.key != self.key:
            raise CacheError(f"kept deep features are for inputs {kept.key[0]}, this call's are {self.key[0]}")
        if self.cond.get("down_intrablock_additional_residuals") is not None:
            raise CacheError("deepcache cannot skip blocks that T2I-adapter residuals are added to; sample without a cache")
        shallow, producer, deep = self.parts(kept.branch)
        real = {i: self.slots[i][0]._modules[self.slots[i][1]] for i in deep + [producer]}
        for i in deep:
            self.slots[i][0]._modules[self.slots[i][1]] = _Reuse(real[i], _placeholder(kept.shapes[i]))
        self.slots[producer][0]._modules[self.slots[producer][1]] = _Reuse(real[producer], kept.features)
        try:
            out = self._run()
        finally:
            for i, mod in real.items():
                self.slots[i][0]._modules[self.slots[i][1]] = mod
        self._charge(shallow)
        return out


# -- the cache --------------------------------------------------------------------------------
def refresh_schedule(calls: int, interval: int, center: float = 0.3, power: float = 1.4) -> list[int]:
    """DeepCache's non-uniform refresh schedule: ``ceil(calls / interval)`` full calls among
    ``calls``, always call 0, spaced densely around ``center`` (a fraction of the solve) and
    sparsely at both ends.

    The paper's construction: points spaced evenly in ``u = sign(k - c) |k - c|^(1 / power)``
    between the ends ``k = 0`` and ``k = calls`` (``c = center * calls``), mapped back to call
    indices, the power lowered by 0.02 until they are distinct (power 1 is the uniform spacing).
    (The released code raises a negative number to a fractional power there; this takes the
    intended signed power.)
    """
    n = math.ceil(calls / interval)
    c = center * calls
    p = power
    while True:
        lo, hi = -(c ** (1 / p)), (calls - c) ** (1 / p)
        u = torch.linspace(lo, hi, n + 1, dtype=torch.float64)[1:-1]
        k = (u.sign() * u.abs() ** p + c).floor().long().clamp(1, calls - 1)
        picks = sorted({0, *k.tolist()})
        if len(picks) == n or p <= 1:
            return picks if len(picks) == n else list(range(0, calls, interval))
        p = max(1.0, p - 0.02)


def _positive_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"cache option {name}={v!r} must be an integer >= {lo}")
    return v


class DeepCache(Cache):
    """DeepCache (Ma et al., "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024): a
    full U-Net call every ``interval`` calls keeps the deep features; the calls in between
    recompute only the first ``branch`` down blocks and the last ``branch`` up blocks around them.

    ``uniform=False`` takes the paper's non-uniform schedule (:func:`refresh_schedule`): as many
    full calls, denser around ``center`` (a fraction of the solve; the paper's 15 of 50 steps
    is 0.3) with exponent ``power``, over ``calls`` network calls (steps times evaluations per
    step; calls past it are full). A fixed schedule: no host read.
    """

    name = "deepcache"
    syncs = False
    layouts = (UNetSpec,)

    def __init__(self, *, interval: int = 3, branch: int = 1, uniform: bool = True, calls: int | None = None,
                 center: float = 0.3, power: float = 1.4):
        self.interval = _positive_int("interval", interval)
        self.branch = _positive_int("branch", branch)
        if not isinstance(uniform, bool):
            raise ValueError(f"cache option uniform={uniform!r} must be true or false")
        self.uniform, self.calls, self.center, self.power = uniform, calls, center, power
        self._full = None
        if not uniform:
            if calls is None:
                raise ValueError("deepcache uniform=false needs calls= the number of network calls of the solve "
                                 "(steps times the solver's evaluations per step)")
            _positive_int("calls", calls)
            if isinstance(center, bool) or not isinstance(center, (int, float)) or not 0 <= center <= 1:
                raise ValueError(f"cache option center={center!r} must be a fraction of the solve in [0, 1]")
            if isinstance(power, bool) or not isinstance(power, (int, float)) or not 1 <= power < 10:
                raise ValueError(f"cache option power={power!r} must be a number in [1, 10)")
            self._full = frozenset(refresh_schedule(calls, interval, float(center), float(power)))

    def refreshes(self, index: int) -> bool:
        """Whether network call ``index`` (from 0) of a sampling call runs the full U-Net."""
        if self._full is None:
            return index % self.interval == 0
        return index in self._full or index >= self.calls

    def forward(self, call: UNetCall) -> Tensor:
        kept = call.state.get("deep")
        if self.refreshes(call.index) or kept is None or kept.key != call.key:
            out, call.state["deep"] = call.full(self.branch)
            return out
        return call.shallow(kept)
