"""A sweep cell as a typed value (:class:`Cell`) and the ledger that times it (:class:`TimingLedger`).

A cell's identity is its config dict (:meth:`Cell.config`), hashed by
:func:`solverzoo.bench.record_schema.config_hash` into the record's file name: the dict must stay
exactly what the sweep wrote before cells were typed, so ``cache`` / ``cache_options`` appear
only on cells that use a cache (no-cache hashes predate the cache axis)."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from solverzoo.bench.record_schema import CONFIG_FIELDS, config_hash

CACHE_FIELDS = ("cache", "cache_options")


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep: what is sampled, how, and how it is scored."""

    backbone: str
    """The backbone's registered name."""
    backbone_weights: str
    """Identity of the backbone's weights (``Backbone.weights_id``)."""
    solver: str
    """The registered solver."""
    solver_options: dict
    """Keyword options of the solver (``sweep.solver_options[solver]``)."""
    grid: str
    """The registered time grid (the backbone's default resolved to its name)."""
    grid_options: dict
    """Keyword options of the grid (e.g. ``{"key": ...}`` for a saved optimised grid)."""
    steps: int
    """Solver steps."""
    guidance: str
    """The registered guidance, or ``"none"`` for the unguided ODE."""
    scale: float
    """Guidance scale."""
    n_samples: int
    """Samples drawn (sample i from ``seeds.sample_seed(seed_set, i)``)."""
    seed_set: int
    """The common-random-numbers seed set."""
    metrics: dict
    """The metric settings that affect the cell's numbers (``sweep.METRIC_SETTINGS`` of ``cfg.metrics``)."""
    cache: str | None = None
    """The registered feature cache, or None without one (never ``"none"``)."""
    cache_options: dict | None = None
    """Keyword options of the cache (None without one)."""

    def __post_init__(self):
        if self.cache == "none":
            object.__setattr__(self, "cache", None)
        if self.cache is None:
            object.__setattr__(self, "cache_options", None)
        elif self.cache_options is None:
            object.__setattr__(self, "cache_options", {})

    def config(self) -> dict:
        """The cell's config dict: the fields of :data:`CONFIG_FIELDS`, plus ``cache`` and
        ``cache_options`` only where a cache is used (what :attr:`hash` hashes)."""
        out = {k: getattr(self, k) for k in CONFIG_FIELDS}
        if self.cache is not None:
            out.update(cache=self.cache, cache_options=self.cache_options)
        return out

    @property
    def hash(self) -> str:
        """The config hash: the record's ``config_hash`` and file name."""
        return config_hash(self.config())

    def __hash__(self) -> int:  # the dict fields are unhashable: hash the config instead
        return hash(self.hash)

    def without_cache(self) -> Cell:
        """The same cell without a cache (its paired no-cache twin)."""
        return dataclasses.replace(self, cache=None, cache_options=None)

    def label(self) -> str:
        """One line naming the cell, for logs."""
        return (f"{self.solver} {self.grid} {self.steps} steps {self.guidance} {self.scale:g} seeds {self.seed_set}"
                + (f" cache {self.cache} {self.cache_options}" if self.cache is not None else ""))

    @classmethod
    def from_config(cls, d: dict) -> Cell:
        """The cell of a config dict (:meth:`config`'s form; a record's via ``record_config``)."""
        unknown = set(d) - set(CONFIG_FIELDS) - set(CACHE_FIELDS)
        missing = set(CONFIG_FIELDS) - set(d)
        if unknown or missing:
            raise ValueError(f"not a cell config: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return cls(**d)


class TimingLedger:
    """Consecutive phases of one piece of work, timed into named parts that add up to the wall
    time by construction: :meth:`lap` puts the time since the previous lap (or the start) into
    a part; :meth:`move` re-attributes seconds measured inside a lap (e.g. the backbone's forward
    time inside sampling) from one part to another; :attr:`wall` is the sum of the parts
    (``math.fsum``: exact, whatever the order), so nothing is counted twice or lost."""

    def __init__(self, parts: Iterable[str] | None = None, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._fixed = parts is not None
        self.parts: dict[str, float] = {p: 0.0 for p in parts or ()}
        self._last = clock()

    def _check(self, part: str) -> None:
        if self._fixed and part not in self.parts:
            raise ValueError(f"unknown timing part {part!r} (the ledger's parts: {', '.join(self.parts)})")
        self.parts.setdefault(part, 0.0)

    def lap(self, part: str) -> float:
        """Put the seconds since the previous lap into ``part``; returns them."""
        self._check(part)
        now = self._clock()
        dt, self._last = now - self._last, now
        self.parts[part] += dt
        return dt

    def move(self, src: str, dst: str, seconds: float) -> float:
        """Move ``seconds`` from part ``src`` to part ``dst`` (clipped to ``[0, parts[src]]``, so
        no part goes negative); returns the seconds moved."""
        self._check(src)
        self._check(dst)
        s = min(max(float(seconds), 0.0), self.parts[src])
        self.parts[src] -= s
        self.parts[dst] += s
        return s

    @property
    def wall(self) -> float:
        """The wall time: the sum of the parts."""
        return math.fsum(self.parts.values())

    def fields(self, suffix: str = "_s") -> dict:
        """``{part + suffix: seconds}`` and ``wall + suffix``."""
        return {**{f"{p}{suffix}": v for p, v in self.parts.items()}, f"wall{suffix}": self.wall}
