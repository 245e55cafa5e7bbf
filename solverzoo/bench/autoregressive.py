"""Sweep cells on a backbone that is not a diffusion model: a next-token model (e.g.
``shapes-video-ar``) has no ODE, no solver and no time grid; its
:attr:`~solverzoo.backbone.Backbone.generator` samples it. A sweep names it with the reserved
sampler :data:`AUTOREGRESSIVE` in ``sweep.solvers`` (options from
``sweep.solver_options.autoregressive``: ``temperature``, ``top_k``; the guidance setting's
``cfg`` scale is the generator's ``cfg_scale``, guidance ``none`` is 1).

Such a cell uses the per-sample seeds of a diffusion cell (:func:`solverzoo.seeds.sample_seeds`
-> :func:`solverzoo.noise.generators`), so sample i is the same whatever the batch size and
number of ranks; it records grid ``none`` and steps = tokens per sample (the generator's
``tokens_per_sample`` or ``length``; 1 if it declares neither), NFE = network forward passes
per sample and the FLOPs its generator reports; there is no converged solve (NaN, with
:data:`NO_ODE`). Solver cells on a generator backbone, ``autoregressive`` on a diffusion
backbone, caches and guidance other than ``cfg`` are skipped with the reason, never run."""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from solverzoo import seeds as seed_policy
from solverzoo.bench.cell_spec import Cell
from solverzoo.bench.generate import Generated
from solverzoo.noise import generators

AUTOREGRESSIVE = "autoregressive"
"""The reserved sampler name of a generator backbone's cells (not a registered solver)."""
OPTIONS = ("temperature", "top_k")
GUIDANCE = ("none", "cfg")  # a generator guides its logits with classifier-free guidance only
NO_ODE = ("autoregressive: no ODE to solve (a next-token model samples token by token: there is no converged solve of an "
          "ODE to compare its samples with)")
CONVERGED_METRICS = ("err_converged", "psnr_converged", "fd_converged")


@dataclass
class Sampled(Generated):
    """A generator's samples: :class:`~solverzoo.bench.generate.Generated` (``nfe`` = forward
    passes per sample, ``backbone_evals`` their mean, ``times`` None) plus the generator's own
    per-sample cost."""

    flops: float = math.nan  # FLOPs per sample (mean), as the generator reports them
    tokens: float = math.nan  # tokens per sample (mean)


def is_generator_backbone(bb) -> bool:
    """True for a backbone sampled by its generator (no diffusion model)."""
    return getattr(bb, "generator", None) is not None


def mismatch(solvers: Sequence[str], bb) -> str | None:
    """Why ``solvers`` cannot run on ``bb`` (the reason a sweep skips them), or None."""
    if is_generator_backbone(bb):
        bad = [s for s in solvers if s != AUTOREGRESSIVE]
        if bad:
            return (f"solvers {bad} skipped on {bb.name}: it is not a diffusion model (no ODE, sampled by its generator); "
                    f"sample it with sweep.solvers=[{AUTOREGRESSIVE}]")
    elif AUTOREGRESSIVE in solvers:
        return (f"solver {AUTOREGRESSIVE} skipped on {bb.name}: it samples a backbone's generator (a next-token model) "
                f"and {bb.name} is a diffusion model; name a registered solver for it")
    return None


def is_generator_cell(cell: Cell, bb) -> bool:
    """True for a cell its backbone's generator samples, False for a solver's; a cell pairing a
    solver with a generator backbone (or ``autoregressive`` with a diffusion one) is an error."""
    why = mismatch([cell.solver], bb)
    if why is not None:
        raise ValueError(why.replace("skipped on", "cannot run on"))
    return cell.solver == AUTOREGRESSIVE


def option_problem(opts: dict) -> str | None:
    """What is wrong with ``sweep.solver_options.autoregressive`` (None when nothing is)."""
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        return f"unknown option(s) {unknown}; {AUTOREGRESSIVE} takes {list(OPTIONS)}"
    t = opts.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        return f"temperature={t!r} must be a number >= 0 (0: greedy decoding), e.g. temperature: 1.0"
    k = opts.get("top_k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        return f"top_k={k!r} must be a positive integer number of tokens, or null (all tokens)"
    return None


def cfg_scale(cell: Cell) -> float:
    """The generator's ``cfg_scale`` of a cell: its guidance scale under ``cfg``, 1 without guidance."""
    if cell.guidance not in GUIDANCE:
        raise ValueError(f"guidance {cell.guidance!r}: a generator guides its logits with cfg only (or none)")
    return 1.0 if cell.guidance == "none" else float(cell.scale)


def forward_passes(cell: Cell) -> int:
    """Network forward passes per sample a cell is predicted to take: a token per pass, two
    guidance branches under cfg (scale != 1)."""
    return int(cell.steps) * (2 if cfg_scale(cell) != 1.0 else 1)


def tokens_per_sample(bb) -> int:
    """Tokens per sample the backbone's generator declares (``tokens_per_sample`` or ``length``), else 1."""
    g = bb.generator
    n = getattr(g, "tokens_per_sample", None) or getattr(g, "length", None)
    return int(n) if isinstance(n, (int, np.integer)) and n >= 1 else 1


def expand(cfg: dict, bb, metrics: dict, n_samples: int, skipped: list | None = None) -> list[Cell]:
    """The cells of a sweep on a generator backbone: one per seed set and guidance setting (grid
    ``none``, steps = tokens per sample). What cannot run is left out, with the reason appended
    to ``skipped``: solvers, caches, guidance other than cfg."""
    sw, notes = cfg["sweep"], []
    why = mismatch(sw["solvers"], bb)
    if why:
        notes.append(why)
    caches = [c.get("name") if isinstance(c, dict) else c for c in sw.get("caches") or ["none"]]
    if any(c != "none" for c in caches):
        notes.append(f"caches {[c for c in caches if c != 'none']} skipped on {bb.name}: a cache skips a diffusion "
                     "network's blocks between solver steps; this backbone is sampled by its generator")
    guidance = [g for g in sw["guidance"] if g["name"] in GUIDANCE]
    notes += [f"guidance {g['name']} skipped for {AUTOREGRESSIVE} on {bb.name}: its generator guides its logits with cfg "
              "only (or none)" for g in sw["guidance"] if g["name"] not in GUIDANCE]
    cells = []
    if AUTOREGRESSIVE in sw["solvers"]:
        steps = tokens_per_sample(bb)
        notes.append(f"{AUTOREGRESSIVE} on {bb.name}: sweep.grids and sweep.steps do not apply (no time grid): one cell "
                     f"per guidance setting and seed set, recorded as grid none and steps {steps} (tokens per sample)")
        cells = [Cell(backbone=bb.name, backbone_weights=bb.weights_id, solver=AUTOREGRESSIVE,
                      solver_options=dict((sw.get("solver_options") or {}).get(AUTOREGRESSIVE) or {}), grid="none",
                      grid_options={}, steps=steps, guidance=g["name"], scale=float(g["scale"]), n_samples=n_samples,
                      seed_set=int(s), metrics=metrics) for s, g in itertools.product(sw["seed_sets"], guidance)]
    if skipped is not None:
        skipped.extend(notes)
    return cells


def _per_sample(stats: dict, key: str, n: int) -> np.ndarray:
    """A generator's per-sample statistic (a number for every sample, or one per sample) as ``(n,)`` floats."""
    v = stats.get(key, math.nan)
    a = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).reshape(-1)
    if a.size == 1:
        return np.full(n, float(a[0]))
    if a.size != n:
        raise ValueError(f"generator stats[{key!r}] has {a.size} values for {n} samples; give one number or one per sample")
    return a


def generate(bb, prompts: Sequence, *, seeds: Sequence[int], cfg_scale: float = 1.0, options: dict | None = None,
             batch_size: int = 64, progress: bool = False) -> Sampled:
    """Sample one state per prompt with the backbone's generator, batch by batch, sample i from
    ``generators([seeds[i]])`` (the diffusion cells' per-sample seeds), then decode in chunks."""
    t0 = time.perf_counter()
    seeds = list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    outs, stats, samp = [], {k: [] for k in ("forward_passes", "flops", "tokens")}, 0.0
    starts = range(0, len(prompts), batch_size)
    if progress:
        import sys

        from tqdm import tqdm

        starts = tqdm(starts, desc="cell", unit="batch", leave=False, file=sys.stderr)
    for i in starts:
        p, s = list(prompts[i:i + batch_size]), seeds[i:i + batch_size]
        t = time.perf_counter()
        with torch.no_grad():
            states, st = bb.generator.generate(p, generators(s), cfg_scale=float(cfg_scale), **(options or {}))
        samp += time.perf_counter() - t
        if tuple(states.shape) != (len(p), *bb.latent_shape):
            raise ValueError(f"backbone {bb.name!r}: its generator returned states of shape {tuple(states.shape)} for "
                             f"{len(p)} prompts; expected {(len(p), *bb.latent_shape)}")
        if "forward_passes" not in st:
            raise ValueError(f"backbone {bb.name!r}: its generator's stats must give forward_passes per sample")
        outs.append(states)
        for k in stats:
            stats[k].append(_per_sample(st, k, len(p)))
    lat = torch.cat(outs)
    with torch.no_grad():
        images = torch.cat([bb.decode(lat[i:i + 256]) for i in range(0, len(lat), 256)])
    fp, fl, tok = (np.concatenate(stats[k]) for k in ("forward_passes", "flops", "tokens"))
    return Sampled(images, lat, max(int(round(fp.mean())), 1), time.perf_counter() - t0, samp,
                   backbone_evals=float(fp.mean()), flops=float(fl.mean()), tokens=float(tok.mean()))


def generate_cell(cell: Cell, bb, prompts: list, idx: list[int], cfg: dict, progress: bool) -> Sampled:
    """A generator cell's samples: sample i from :func:`solverzoo.seeds.sample_seed` ``(seed_set, i)``."""
    return generate(bb, prompts, seeds=seed_policy.sample_seeds(cell.seed_set, idx), cfg_scale=cfg_scale(cell),
                    options=cell.solver_options, batch_size=cfg["batch_size"], progress=progress)


def record_fields(gen: Sampled, rec: dict) -> tuple[dict, dict, None, None]:
    """What a generator cell records in place of the comparison with the converged solve (the
    shape of ``cell._converged_fields``): ``err_converged``, ``psnr_converged`` and
    ``fd_converged`` NaN, each with a warning saying why; its FLOPs and tokens per sample."""
    rec["warnings"].extend(f"{m}: {NO_ODE}" for m in CONVERGED_METRICS)
    nan = {f"{m}{s}": math.nan for m in CONVERGED_METRICS for s in ("", "_ci_low", "_ci_high")}
    cost = {"flops_per_sample": gen.flops, "tokens_per_sample": gen.tokens}
    return {**nan, **cost}, {"err": None, "psnr": None}, None, None


def probe_eval_s(bb, prompts: list) -> tuple[float, Sampled]:
    """Seconds per forward pass of one sample, from one unguided generate call over ``prompts``
    (the cost model's unit: a cell costs ``N x forward passes`` of it)."""
    gen = generate(bb, prompts, seeds=list(range(len(prompts))), batch_size=len(prompts))
    return gen.sampling_s / (len(prompts) * max(gen.backbone_evals, 1.0)), gen
