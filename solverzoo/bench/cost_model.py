"""Predicting a sweep's wall time before it runs, and choosing its sample count by that prediction.

A sweep's time is, to first order, a sum of parts whose unit costs a short probe measures on the
machine at hand (:func:`probe`, ~2-5 s):

- sampling: ``N x NFE`` network evaluations per cell (an evaluation of a guided cell costs two:
  the conditional and unconditional branches share a batch), plus decoding ``N`` samples;
- converged solves: once per (guidance, seed set) unless cached on disk: ``dpmpp_3m`` at
  ``M/2, M, 2M`` steps (``M = metrics.converged.steps``), each step one evaluation (two guided);
- metrics per cell: FID with its bootstrap, FID-infinity, KID, the Fréchet distance to the
  converged solve (measured at this N and feature dimension) plus prompt scoring and CLIP score
  per sample;
- the reference statistics, once unless cached: drawing and featurising ``metrics.reference.n``
  real samples.

:func:`predict` returns the parts; :func:`choose_n` the largest candidate N whose predicted time
fits a budget (``sweep.n_samples=auto`` with ``sweep.budget_s``). ``solverzoo bench plan_only=true``
prints the plan and exits; every sweep writes ``plan.json`` (predicted parts) beside its records so
the report can set the prediction against the measured time.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from solverzoo.bench import autoregressive as ar

N_CANDIDATES = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclass
class UnitCosts:
    """Seconds per unit, measured on this machine by :func:`probe`."""

    eval_s: float  # one network evaluation of one sample (inside a batch), solver work included
    decode_s: float  # decoding one sample
    score_s: float  # prompt scoring + CLIP score of one sample
    metric_s: float  # FID / FID-inf / KID / fd_converged of one cell at n_metric samples
    n_metric: int  # the N the metric cost was measured at
    real_s: float  # drawing and featurising one real sample (reference statistics)
    threads: int = 1
    machine: str = ""

    def metric_at(self, n: int) -> float:
        """Metric cost at ``n`` samples: the eigenproblems (d x d, independent of N) dominate; the
        covariances and kernels grow with N. Linear in N through the measured point, half fixed."""
        return self.metric_s * (0.5 + 0.5 * n / self.n_metric)


def _timed(fn, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _eval_s(bb, prompts: list, device: str):
    """Seconds per network evaluation of one sample (the difference of two Euler steps; on a generator
    backbone one generate call's time per forward pass, :func:`~solverzoo.bench.autoregressive.probe_eval_s`)
    and samples of ``prompts`` to score."""
    from solverzoo.bench.generate import generate

    if ar.is_generator_backbone(bb):
        return ar.probe_eval_s(bb, prompts)
    b = len(prompts)
    kw = dict(solver="euler", guidance=None, device=device, batch_size=b, seeds=list(range(b)))
    generate(bb, prompts, steps=1, **kw)  # warm
    t1 = _timed(lambda: generate(bb, prompts, steps=1, **kw))
    t3 = _timed(lambda: generate(bb, prompts, steps=3, **kw))
    return max(t3 - t1, 1e-9) / (2 * b), generate(bb, prompts, steps=1, **kw)


def probe(bb, cfg: dict, extractor, ref=None, n_metric: int | None = None) -> UnitCosts:
    """Measure the unit costs on this machine (a batch of ``batch_size`` samples for two Euler steps,
    or one generate call of a generator backbone on up to 16, the metrics of one cell on random
    features of the extractor's dimension, a few real samples)."""
    from solverzoo.bench.converged import fd_converged
    from solverzoo.bench.metrics import fid_kid, fid_kid_settings

    m, world = cfg["metrics"], bb.require_world()
    b = min(int(cfg["batch_size"]), 16 if ar.is_generator_backbone(bb) else 64)
    prompts = list(world.prompts(12345, b))
    with torch.no_grad():
        eval_s, gen = _eval_s(bb, prompts, cfg["device"])
        lat = torch.zeros((b,) + tuple(bb.latent_shape), device=cfg["device"])
        dec = _timed(lambda: bb.decode(lat))
    score = 0.0
    if m.get("prompt_accuracy"):
        score += _timed(lambda: world.score(gen.images, gen.latents, prompts), 1) / b
    if m.get("clip_score"):
        from solverzoo.bench.cell import _clip

        rec: dict = {"warnings": []}
        _clip(bb, m, gen.images, prompts, rec)  # loads the CLIP model once (the sweep's warm-up would)
        score += _clip(bb, m, gen.images, prompts, rec) / b
    ns = cfg["sweep"].get("n_samples")
    n = int(n_metric or (ns if str(ns) != "auto" else 384))
    metric_s, real_s = 0.0, 0.0
    if extractor is not None:
        d = extractor.num_features
        rng = np.random.default_rng(0)
        f = rng.standard_normal((n, d))
        if ref is not None and ref.features is not None:
            metric_s += _timed(lambda: fid_kid(torch.from_numpy(f), ref, **fid_kid_settings(m)), 1)
        metric_s += _timed(lambda: fd_converged(f, f + 0.1, reps=int(m["bootstrap"]), rng=rng, ci=float(m["ci"])), 1)
        t0 = time.perf_counter()
        real = world.reference(1, 16)
        real_s = (time.perf_counter() - t0 + _timed(lambda: extractor(real), 1)) / 16 if real is not None else 0.0
    return UnitCosts(eval_s=eval_s, decode_s=dec / b, score_s=score, metric_s=metric_s, n_metric=n, real_s=real_s,
                     threads=torch.get_num_threads(), machine=f"{platform.machine()} {platform.processor() or ''}".strip())


def _nfe(cell) -> int:
    from solverzoo.registry import registry

    if cell.solver == ar.AUTOREGRESSIVE:  # a generator cell: forward passes per sample (steps = tokens)
        return ar.forward_passes(cell)
    per = int(getattr(registry.get("solver", cell.solver), "evals_per_step", 1))
    return cell.steps * per * (2 if cell.guidance != "none" else 1)


def predict(cells: list, cfg: dict, costs: UnitCosts, n: int | None = None, *, reference_cached: bool = True,
            converged_cached: bool = False) -> dict:
    """Predicted seconds per part for ``cells`` at ``n`` samples each (default: the cells' own N)."""
    n = int(n or cells[0].n_samples)
    m = cfg["metrics"]
    sampling = sum(n * (_nfe(c) * costs.eval_s + costs.decode_s) for c in cells)
    steps = int(m["converged"]["steps"])
    groups = {(c.guidance, c.scale, c.seed_set) for c in cells if c.solver != ar.AUTOREGRESSIVE}  # no ODE
    conv_nfe = sum((steps // 2 + steps + 2 * steps) * (2 if g != "none" else 1) for g, _, _ in groups)
    converged = 0.0 if converged_cached else n * (conv_nfe * costs.eval_s + len(groups) * costs.decode_s)
    metrics = len(cells) * (costs.metric_at(n) + n * costs.score_s) + len(groups) * n * costs.score_s
    reference = 0.0 if reference_cached else int(m["reference"]["n"]) * costs.real_s
    floor = max(n, int(m.get("floor_fid_inf_n") or n)) * costs.real_s + 2 * costs.metric_at(n)  # fid at N, fid_inf at its n
    parts = {"sampling_s": sampling, "converged_s": converged, "metrics_s": metrics, "reference_s": reference,
             "floor_s": floor}
    return {"n": n, "cells": len(cells), "nfe_per_sample": sum(_nfe(c) for c in cells), "converged_groups": len(groups),
            **{k: round(v, 1) for k, v in parts.items()}, "total_s": round(sum(parts.values()), 1),
            "unit_costs": asdict(costs)}


def choose_n(cells: list, cfg: dict, costs: UnitCosts, budget_s: float, *, candidates=N_CANDIDATES, n_min: int = 1,
             elapsed_s: float = 0.0, **cached) -> tuple[int, dict]:
    """The largest candidate N (at least ``n_min``) whose predicted time fits ``budget_s`` minus the
    time already spent; the smallest candidate (with its over-budget prediction) when none fits."""
    fits = [(k, predict(cells, cfg, costs, k, **cached)) for k in sorted(candidates) if k >= n_min]
    if not fits:
        raise ValueError(f"no candidate sample count >= {n_min} among {sorted(candidates)}")
    ok = [(k, p) for k, p in fits if p["total_s"] + elapsed_s <= budget_s]
    return ok[-1] if ok else fits[0]


def write_plan(results_dir: str | Path, plan: dict) -> Path:
    path = Path(results_dir) / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plan, indent=1, default=float))
    os.replace(tmp, path)
    return path


def describe(plan: dict) -> str:
    """One line per part, for the console."""
    u = plan["unit_costs"]
    lines = [f"plan: {plan['cells']} cells x N = {plan['n']} ({plan['nfe_per_sample']} network evaluations per sample "
             f"over all cells), predicted {plan['total_s']:.0f} s on this machine ({u['threads']} threads; "
             f"{1e3 * u['eval_s']:.2f} ms per sample-evaluation)"]
    for k in ("sampling_s", "converged_s", "metrics_s", "reference_s", "floor_s"):
        lines.append(f"  {k[:-2]:10s} {plan[k]:8.1f} s")
    if plan.get("budget_s"):
        spent = float(plan.get("elapsed_before_plan_s") or 0.0)  # start-up and reference statistics, already spent
        fits = plan["total_s"] + spent <= plan["budget_s"]
        lines.append(f"  budget     {plan['budget_s']:8.1f} s, {spent:.0f} s already spent ({'fits' if fits else 'OVER'})")
    return "\n".join(lines)
