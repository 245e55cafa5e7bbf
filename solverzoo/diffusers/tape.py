"""Run a solver's sampling loop one model evaluation at a time, without threads.

A zoo solver is a plain loop that calls its denoiser; a diffusers pipeline calls the model itself
and hands each output to ``scheduler.step``. This module bridges the two without writing any
solver twice. :func:`record` runs ``Solver.loop`` once on ``meta`` tensors (shapes, no data, no
device work) under a :class:`~torch.overrides.TorchFunctionMode` that writes every torch call
onto a tape; each denoiser call becomes a suspension point. :class:`Replay` then executes the
tape with real tensors, one segment (from one model evaluation to the next) per ``step``: the
same torch calls with the same Python-float coefficients in the same order as an eager
``Solver.loop``, so the result equals ``sz.sample`` bit for bit for the same model outputs.

Recording on meta tensors also enforces what the replay relies on (the solver contract): a loop
that reads a tensor value on the host (``.item()``, ``float(x)``, ``if x.any():``) fails while
recording, with a message that says so. Step noise is drawn at replay time from the generators
passed to ``step`` (recorded draws name placeholder generators that the replay substitutes), in
the order the eager loop draws it. Tape ops whose results nothing uses (e.g. indexing the grid
for the denoiser's time argument) are dropped; each intermediate tensor is released after its
last use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from solverzoo.prediction import Prediction

_CONST, _SLOT, _DEVICE, _GEN, _TREE = range(5)
_RANDOM = {"randn", "rand", "randint", "normal", "bernoulli", "multinomial", "poisson", "randn_like", "rand_like",
           "randint_like", "randperm", "normal_", "uniform_", "exponential_", "bernoulli_", "random_", "geometric_",
           "log_normal_", "cauchy_"}


class TapeError(RuntimeError):
    """A solver loop that cannot be replayed step by step inside a diffusers pipeline."""


@dataclass(frozen=True)
class Call:
    """One model evaluation the loop asks for: ``pos`` tape ops run before it; the model is
    evaluated at slot ``x`` and time ``t``; its output fills slot ``out``."""

    pos: int
    x: int
    out: int
    t: float


@dataclass
class Tape:
    ops: list  # (func, args, arg_marks, kwargs, kw_marks, out_slots)
    calls: list[Call]
    final: int
    nslots: int
    free: list  # free[p]: slots released after op p


def _flatten_gens(generator) -> list:
    if generator is None:
        return []
    return [generator] if isinstance(generator, torch.Generator) else list(generator)


def placeholder_generators(generator):
    """Generators of the same structure and devices as ``generator`` (None stays None)."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return torch.Generator(device=generator.device)
    return [torch.Generator(device=g.device) for g in generator]


class _Recorder(TorchFunctionMode):
    def __init__(self, gens: list):
        super().__init__()
        self.slots: dict[int, int] = {}
        self.keep: list = []  # traced tensors stay alive, so their ids stay unique
        self.ops: list = []
        self.paused = False
        self.gens = {id(g): i for i, g in enumerate(gens)}

    def slot(self, t: Tensor) -> int:
        s = self.slots.get(id(t))
        if s is None:
            s = self.slots[id(t)] = len(self.keep)
            self.keep.append(t)
        return s

    def _mark(self, v):
        if isinstance(v, Tensor):
            s = self.slots.get(id(v))
            if s is not None:
                return _SLOT, s
            if v.device.type == "meta":
                raise TapeError("the loop used a meta tensor that no recorded torch call made")
            return None
        if isinstance(v, torch.device) and v.type == "meta":
            return _DEVICE, None
        if isinstance(v, torch.Generator) and id(v) in self.gens:
            return _GEN, self.gens[id(v)]
        if isinstance(v, (list, tuple, dict)):
            leaves, spec = tree_flatten(v)
            marks = [(i, m) for i, m in ((i, self._mark(x)) for i, x in enumerate(leaves)) if m is not None]
            return (_TREE, (leaves, spec, marks)) if marks else None
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        name = getattr(func, "__name__", "")
        leaves = [out] if isinstance(out, Tensor) else tree_flatten(out)[0]
        if not any(isinstance(o, Tensor) for o in leaves) and not (name.endswith("_") or name == "__setitem__"):
            return out  # metadata (shape, dtype, device ...): already consumed by the Python code
        arg_marks = [(i, m) for i, m in ((i, self._mark(a)) for i, a in enumerate(args)) if m is not None]
        kw_marks = [(k, m) for k, m in ((k, self._mark(v)) for k, v in kwargs.items()) if m is not None]
        outs = self.slot(out) if isinstance(out, Tensor) else [self.slot(o) if isinstance(o, Tensor) else None for o in leaves]
        self.ops.append((func, tuple(args), arg_marks, dict(kwargs), kw_marks, outs, name))
        return out


class _RecordingDenoiser:
    def __init__(self, rec: _Recorder, schedule, calls: list):
        self.rec, self.schedule, self.calls, self.evals_per_call = rec, schedule, calls, 1
        self.coefs = None  # set by record()

    def __call__(self, x, t) -> Prediction:
        rec = self.rec
        if not isinstance(x, Tensor) or id(x) not in rec.slots:
            raise TapeError("the solver called its denoiser with a state no recorded torch call made")
        rec.paused = True
        try:
            if isinstance(t, Tensor) and t.device.type == "meta":
                raise TapeError("the solver computed a model time from tensor values; times must come from its plan "
                                "(host floats or grid entries)")
            t_host = float(t)
            out = torch.empty_like(x)
        finally:
            rec.paused = False
        self.calls.append(Call(len(rec.ops), rec.slots[id(x)], rec.slot(out), t_host))
        return Prediction.affine(x, out, *self.coefs(t_host))


def record(solver, plan, grid: Tensor, schedule, coefs, shape, dtype, generator) -> Tape:
    """Record ``solver.loop`` for a state of ``shape`` / ``dtype`` (see the module docstring).

    ``coefs(t)`` gives the prediction coefficients at host time ``t`` (what
    :meth:`Model._host_constants` returns); ``generator`` only fixes the structure (None, one, or
    one per sample) of the generators the replay will receive.
    """
    dummy = placeholder_generators(generator)
    rec = _Recorder(_flatten_gens(dummy))
    calls: list[Call] = []
    den = _RecordingDenoiser(rec, schedule, calls)
    den.coefs = coefs
    x = torch.empty(tuple(shape), dtype=dtype, device="meta")
    rec.slot(x)  # slot 0: the starting state
    try:
        with torch.no_grad(), rec:
            out = solver.loop(den, x, grid, plan, generator=dummy, callback=None)
    except TapeError as exc:
        raise TapeError(f"solver {solver.name!r} cannot run step by step in a diffusers pipeline: {exc}") from None
    except (RuntimeError, NotImplementedError) as exc:
        raise TapeError(f"solver {solver.name!r} cannot run step by step in a diffusers pipeline: its loop reads tensor "
                        f"values on the host or uses an op without a shape-only (meta) kernel ({exc}). Solver loops must "
                        "be tensor arithmetic with plan coefficients (the solver contract); use sz.sample for this "
                        "solver") from exc
    if not isinstance(out, Tensor) or id(out) not in rec.slots:
        raise TapeError(f"solver {solver.name!r}: its loop did not return a tensor computed from the state")
    return _compact(rec.ops, calls, rec.slots[id(out)], len(rec.keep))


def _op_inputs(op) -> list[int]:
    _, _, arg_marks, _, kw_marks, _, _ = op
    found = []

    def walk(m):
        kind, v = m
        if kind == _SLOT:
            found.append(v)
        elif kind == _TREE:
            for _, mm in v[2]:
                walk(mm)
    for _, m in arg_marks + kw_marks:
        walk(m)
    return found


def _compact(ops: list, calls: list[Call], final: int, nslots: int) -> Tape:
    """Drop ops whose results nothing uses; record when each slot can be released."""
    used = {final} | {c.x for c in calls}
    live = [False] * len(ops)
    for p in range(len(ops) - 1, -1, -1):
        op = ops[p]
        name = op[6]
        side = name.endswith("_") or name == "__setitem__" or name in _RANDOM or any(m[0] == _GEN for _, m in op[2] + op[4])
        outs = [op[5]] if isinstance(op[5], int) else op[5]
        if side or any(s is not None and s in used for s in outs):
            live[p] = True
            used.update(_op_inputs(op))
    new_pos = [0] * (len(ops) + 1)
    for p in range(len(ops)):
        new_pos[p + 1] = new_pos[p] + live[p]
    kept = [op[:6] for op, keep in zip(ops, live) if keep]
    calls = [Call(new_pos[c.pos], c.x, c.out, c.t) for c in calls]
    last = {}
    for p, op in enumerate(kept):
        for s in _op_inputs(op + (None,)):
            last[s] = p
    pinned = {final} | {c.x for c in calls} | {c.out for c in calls}
    free = [[] for _ in kept]
    for s, p in last.items():
        if s not in pinned and s != 0:
            free[p].append(s)
    return Tape(kept, calls, final, nslots, free)


def _resolve(m, vals, gens, device):
    kind, v = m
    if kind == _SLOT:
        return vals[v]
    if kind == _DEVICE:
        return device
    if kind == _GEN:
        return gens[v]
    leaves, spec, marks = v
    leaves = list(leaves)
    for i, mm in marks:
        leaves[i] = _resolve(mm, vals, gens, device)
    return tree_unflatten(leaves, spec)


class Replay:
    """One sampling run of a :class:`Tape` on real tensors, advanced one evaluation at a time."""

    __slots__ = ("tape", "vals", "k", "device")

    def __init__(self, tape: Tape, x: Tensor):
        self.tape, self.k, self.device = tape, 0, x.device
        self.vals = [None] * tape.nslots
        self.vals[0] = x

    @property
    def done(self) -> bool:
        return self.k >= len(self.tape.calls)

    def start(self, generator=None) -> Tensor:
        """Run up to the first model evaluation; returns the state it is made at."""
        c = self.tape.calls[0]
        self._run(0, c.pos, _flatten_gens(generator))
        return self.vals[c.x]

    def advance(self, out: Tensor, sample: Tensor, generator=None) -> Tensor:
        """Feed the output of evaluation ``k`` (made at ``sample``); run to the next evaluation
        and return its state, or the final state after the last one."""
        calls = self.tape.calls
        c = calls[self.k]
        self.vals[c.x] = sample
        self.vals[c.out] = out
        self.k += 1
        end = calls[self.k].pos if self.k < len(calls) else len(self.tape.ops)
        self._run(c.pos, end, _flatten_gens(generator))
        if self.k < len(calls):
            return self.vals[calls[self.k].x]
        result = self.vals[self.tape.final]
        self.vals = []
        return result

    def _run(self, start: int, end: int, gens: list) -> None:
        vals, ops, free, device = self.vals, self.tape.ops, self.tape.free, self.device
        for p in range(start, end):
            func, args, arg_marks, kwargs, kw_marks, outs = ops[p]
            if arg_marks:
                args = list(args)
                for i, m in arg_marks:
                    args[i] = vals[m[1]] if m[0] == _SLOT else _resolve(m, vals, gens, device)
            if kw_marks:
                kwargs = dict(kwargs)
                for k, m in kw_marks:
                    kwargs[k] = vals[m[1]] if m[0] == _SLOT else _resolve(m, vals, gens, device)
            res = func(*args, **kwargs)
            if type(outs) is int:
                vals[outs] = res
            else:
                for s, v in zip(outs, tree_flatten(res)[0]):
                    if s is not None:
                        vals[s] = v
            for s in free[p]:
                vals[s] = None
