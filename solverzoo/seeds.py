"""The seed policy of the benchmark harness, in one place: common random numbers.

Every cell of a sweep that shares a seed set draws sample ``i`` from the same starting noise
and asks it the same prompt, whatever the solver, grid, step count, guidance, cache, batch
size or number of ranks. Two cells then differ only by what the sweep varies, so their
per-sample differences (paired bootstrap, :func:`solverzoo.bench.metrics.paired_delta`) cancel
the shared sampling noise. For that to hold, each random draw has its own seed stream, named
here, and no code elsewhere invents a seed:

* **sample noise**: sample ``i`` of seed set ``s`` starts from ``sample_seed(s, i)``;
* **step noise** (stochastic solvers): its own stream, ``step_noise_seed(sample_seed)``;
* **reference set**: the world's real data drawn with the configured reference seed;
* **prompts**: an independent draw of the same world, ``prompt_seed(reference_seed)``, so the
  prompts are never the reference images' own captions;
* **floor**: real samples of exactly the sweep's prompts (:func:`floor_seed`), what a perfect
  sampler would score at the sweep's N;
* **exact samples** of an analytic world (sliced Wasserstein): :func:`exact_sample_seed`;
* **calibration** (optimised grids): seeds the harness never uses (:data:`CALIBRATION_SEED`).

Changing any of these changes every recorded number: they are part of the records' meaning.
"""
from __future__ import annotations

from collections.abc import Iterable

SAMPLE_SEED_STRIDE = 1_000_003
"""Seed sets are this far apart, so seed set ``s`` never reuses seed set ``s - 1``'s noise."""

STEP_NOISE_OFFSET = 10_000_019
"""Stochastic solvers' per-step noise: a stream apart from the starting noise."""

EXACT_SAMPLE_OFFSET = 7
"""Exact samples of an analytic world: sample ``i`` is drawn with seed ``7 + i``."""

CALIBRATION_SEED = 2_000_000_011
"""Noise seeds (``CALIBRATION_SEED + i``) and the prompt draw of grid calibration sets: far
from every seed the harness uses, so a grid is never tuned on the benchmark's own samples."""


def sample_seed(seed_set: int, index: int) -> int:
    """The starting-noise seed of sample ``index`` in seed set ``seed_set``."""
    return int(seed_set) * SAMPLE_SEED_STRIDE + int(index)


def sample_seeds(seed_set: int, indices: Iterable[int]) -> list[int]:
    """:func:`sample_seed` for each of ``indices`` (a rank's share of a cell's samples)."""
    return [sample_seed(seed_set, i) for i in indices]


def step_noise_seed(noise_seed: int) -> int:
    """The seed of a sample's per-step noise stream, given its starting-noise seed."""
    return STEP_NOISE_OFFSET + int(noise_seed)


def prompt_seed(reference_seed: int) -> int:
    """The sweep's prompts: an independent draw of the world, next to the reference set's."""
    return int(reference_seed) + 1


def floor_seed(reference_seed: int) -> int:
    """The floor's real samples: those of the prompt draw, so the floor answers the sweep's prompts."""
    return prompt_seed(reference_seed)


def exact_sample_seed(index: int) -> int:
    """The seed of exact sample ``index`` of an analytic world (compared with sample ``index``)."""
    return EXACT_SAMPLE_OFFSET + int(index)


def calibration_seeds(n: int) -> list[int]:
    """Starting-noise seeds of a grid calibration set of ``n`` samples."""
    return [CALIBRATION_SEED + i for i in range(int(n))]


def bootstrap_seed(seed_set: int) -> int:
    """The bootstrap resamples of a cell: shared by every cell of a seed set (paired comparisons)."""
    return int(seed_set)
