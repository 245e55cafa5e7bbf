"""Guidance conformance: the checks every registered guidance method (built-in or from a plugin)
must pass, on a small class-conditional DiT (image-shaped states, float64, perturbable):

* it is registered under its name, and its options and :meth:`~solverzoo.Guidance.describe` are plain data;
* one call returns finite predictions of the state's shape and dtype, consistent at the state the
  solver continues from (``alpha x0 + sigma eps = pred.renoised(x)`` to 1e-8);
* NFE is honest: the testbed networks (the guided one and any other the method
  builds on them, such as autoguidance's weak model) see exactly ``evals_per_call`` rows per sample and call;
* sample i does not depend on the batch (the first two samples of a batch of four equal a batch
  of two to 1e-10);
* guidance that renoises (CFG++) is refused by a solver that does not declare ``renoise``.

``check_guidance(name, options)``; ``options`` may be a callable ``(model) -> dict`` for methods
that need objects (autoguidance's ``weak`` model).
"""
from __future__ import annotations

import json
from collections.abc import Callable

import torch

from solverzoo.guidance import GuidedDenoiser
from solverzoo.model import Model
from solverzoo.registry import registry

_ROWS: list[int] = []  # rows every testbed network saw (a forward pre-hook on each)


def _tiny_dit(seed: int, hidden: int = 32):
    from solverzoo.models.nets import DiT

    torch.manual_seed(seed)
    net = DiT(in_channels=4, input_size=8, patch=2, hidden=hidden, depth=3, heads=2, text_dim=None, num_classes=3).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.08)
    net.register_forward_pre_hook(lambda mod, args: _ROWS.append(args[0].shape[0]))
    return net


def guidance_testbed_model(seed: int = 0, hidden: int = 32) -> Model:
    """The conformance network: a randomly initialised class-conditional DiT on a flow schedule."""
    from solverzoo import get_schedule

    return Model(_tiny_dit(seed, hidden), "velocity", get_schedule("flow"), time_input="t1000")


def _conds(n: int) -> dict:
    labels = torch.arange(n) % 3
    return {"cond": {"label": labels}, "uncond": {"label": torch.full((n,), -1)},
            "negative": {"label": (labels + 1) % 3}}


def check_guidance(name: str, options: dict | Callable | None = None) -> None:
    """Run every guidance check on ``name``; raises AssertionError saying which failed and how."""
    from solverzoo import get_grid, sample
    from solverzoo.solver import Solver

    factory = registry.get("guidance", name)
    model = guidance_testbed_model()
    opts = options(model) if callable(options) else dict(options or {})
    g = factory(**opts)
    assert g.name == name, f"guidance {name!r}: its name attribute is {g.name!r}; register it under its own name"
    try:
        json.dumps(g.describe(), default=str)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"guidance {name!r}: describe() is not plain data ({exc})") from None
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor(0.6, dtype=torch.float64)
    den = GuidedDenoiser(model, g, {k: v for k, v in _conds(4).items() if k in g.conditioning()})
    _ROWS.clear()
    with torch.no_grad():
        pred = den(x, t)
    rows = list(_ROWS)
    assert pred.x0.shape == x.shape and pred.x0.dtype == x.dtype and pred.eps.shape == x.shape, \
        f"guidance {name!r}: prediction shape/dtype {tuple(pred.x0.shape)} {pred.x0.dtype} for a state {tuple(x.shape)} {x.dtype}"
    assert bool(torch.isfinite(pred.x0).all() and torch.isfinite(pred.eps).all()), f"guidance {name!r}: non-finite prediction"
    a, s = (float(v) for v in model.schedule.alpha_sigma(t))
    err = float((a * pred.x0 + s * pred.eps - pred.renoised(x)).abs().max())
    assert err < 1e-8, (f"guidance {name!r}: x0 and eps are inconsistent by {err:.2e} at the state the solver continues "
                        "from; build the result with solverzoo.prediction.from_x0 (or RenoisedPrediction with renoise)")
    assert sum(rows) == den.evals_per_call * 4, (f"guidance {name!r}: declares {den.evals_per_call} evaluations per call "
                                                 f"but the network saw {sum(rows) / 4:g} rows per sample")
    grid = get_grid("flow_shift")(model.schedule, 3)
    solver = "euler"
    with torch.no_grad():
        big = sample(solver, GuidedDenoiser(model, factory(**opts), {k: v for k, v in _conds(4).items()
                                                                       if k in g.conditioning()}), x, grid).x
        small = sample(solver, GuidedDenoiser(model, factory(**opts), {k: {kk: vv[:2] for kk, vv in v.items()}
                                                                         for k, v in _conds(4).items()
                                                                         if k in g.conditioning()}), x[:2], grid).x
    diff = float((big[:2] - small).abs().max())
    assert diff < 1e-10, f"guidance {name!r}: sample 0-1 change by {diff:.2e} with the batch (a sum over the batch?)"
    if g.renoise:
        class _Plain(Solver):
            name = "plain"

            def plan(self, schedule, grid):
                return None

            def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
                return x

        try:
            _Plain().sample(den, x, grid)
        except ValueError:
            pass
        else:
            raise AssertionError(f"guidance {name!r} renoises but a solver without renoise ran it")
