"""UniC as a corrector for any linear multistep solver (Zhao et al., "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models", NeurIPS 2023): ``unic``.

UniC corrects a step *after* the model has been evaluated at its end: with ``m_i = D(x~_i)`` at the
predicted state ``x~_i``, it recomputes ``x_i`` from ``x_{i-1}`` and the data predictions
``m_{i-1}, m_{i-2}, ...`` plus ``m_i`` (coefficients from the schedule only), and the next step
starts from the corrected state while keeping ``m_i`` (no extra model evaluation). It raises the
order of the predictor by one. The UniC coefficients are those of
:mod:`solverzoo_builtin.solvers.unipc` (imported, not re-derived).

The mechanism (no predictor is re-implemented): a solver can be corrected when its step is a
*linear multistep step on the data prediction*, ``x' = a x + sum_k b_k D_{i-k}``, and it says so by
a method ``linear_plan(schedule, grid, **options)`` returning one ``(a, (b_0, b_1, ...), std)`` per
step (``std`` the injected noise, which must be 0). ``unic`` asks the base solver for that plan and
runs it with the corrector in between. Solvers that speak the protocol: ``res_multistep``,
``er_sde`` (with ``noise_scaler="ode"``), any subclass of
:class:`solverzoo_builtin.solvers.res_multistep.LinearX0Multistep` (a third-party solver too) and
``dpmpp_2m`` / ``dpmpp_3m``, whose plans already have this form. ``unic(base="dpmpp_2m")`` is
UniPC-2 (bh2): UniP-2 *is* DPM-Solver++(2M).
"""
import math

from solverzoo import Solver, hookimpl
from solverzoo.kit import lincomb, multistep_orders, table
from solverzoo.registry import registry
from solverzoo_builtin.solvers.unipc import _update as unipc_update

_PLAN_IS_LINEAR = {("solverzoo_builtin.solvers.dpmpp", "DPMpp2M"), ("solverzoo_builtin.solvers.dpmpp", "DPMpp3M")}
"""Built-in solvers whose ``plan`` already is a linear plan (until they define ``linear_plan``)."""


def linear_plan(solver: Solver, schedule, grid, options: dict) -> list:
    """The base solver's ``(a, (b_0, ...), std)`` per step, checked.

    Raises:
        ValueError: the solver has no linear multistep plan, or its plan injects noise.
    """
    if hasattr(solver, "linear_plan"):
        steps = solver.linear_plan(schedule, grid, **options)
    elif (type(solver).__module__, type(solver).__name__) in _PLAN_IS_LINEAR:
        solver.check_options(options)
        steps = solver.plan(schedule, grid, **options)
    else:
        raise ValueError(f"unic: solver {solver.name!r} has no linear multistep plan (a method linear_plan returning "
                         "(a, (b_0, b_1, ...), std) per step), so UniC cannot correct it; use a base such as "
                         "'res_multistep', 'dpmpp_2m', 'dpmpp_3m' or 'er_sde' (noise_scaler='ode')")
    for i, step in enumerate(steps):
        ok = (isinstance(step, tuple) and len(step) == 3 and isinstance(step[1], tuple)
              and all(isinstance(v, float) for v in (step[0], step[2], *step[1])))
        if not ok:
            raise ValueError(f"unic: step {i} of {solver.name!r}'s linear plan is {step!r}, not (a, (b_0, ...), std) floats")
        if step[2] != 0.0:
            raise ValueError(f"unic: {solver.name!r} injects noise at step {i} with these options; UniC corrects "
                             "deterministic (ODE) multistep solvers only")
    return steps


class UniC(Solver):
    """UniC — Zhao et al. 2023 (NeurIPS): the UniPC corrector added to any linear multistep solver
    (see the module docstring), no extra model evaluation; order ``min(base order + 1, 3)``.

    Source: the UniPC paper and reference code (the coefficients come from ``unipc``).

    Options:
        base: the registered multistep solver to correct (default ``res_multistep``).
        base_options: a dict of that solver's options (default none).
        order: the corrector's order (default 0: the base's declared order, at most 3); warm-up
            steps use lower orders as the history fills.
        variant: ``bh2`` (default) or ``bh1``: UniPC's B(h).
    """

    name = "unic"
    order = 3
    needs = ("x0",)

    def plan(self, schedule, grid, *, base: str = "res_multistep", base_options: dict | None = None, order: int = 0,
             variant: str = "bh2"):
        if base in ("unic", "unipc"):
            raise ValueError(f"unic: base {base!r} already has the UniC corrector; choose a predictor such as 'dpmpp_2m'")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unic: variant must be 'bh1' or 'bh2', got {variant!r}")
        solver = registry.get("solver", base)
        options = dict(base_options or {})
        solver.check_options(options)
        p = int(order) or min(solver.declared_order(**options), 3)
        if not 1 <= p <= 3:
            raise ValueError(f"unic: order must be 0 (the base's) or 1, 2, 3, got {order!r}")
        steps = linear_plan(solver, schedule, grid, options)
        tab = table(schedule, grid)
        orders = multistep_orders(tab, p, lower_order_final=False)
        corrs = [None]
        for i in range(1, tab.n):
            h_prev = tab.lam[i] - tab.lam[i - 1]
            skip = variant == "bh1" and math.isinf(h_prev)  # B(h) = -h is infinite there
            corrs.append(None if skip else unipc_update(tab, i - 1, i, orders[i - 1], variant, corrector=True))
        depth = max([p] + [len(b) for _, b, _ in steps])
        return depth, tuple(zip(corrs, ((a, b) for a, b, _ in steps)))

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        """Evaluate, correct the previous step with the new evaluation, predict the next."""
        depth, steps = plan
        hist = []  # data predictions, newest first
        x_prev = x
        for i, (corr, (a, bs)) in enumerate(steps):
            m = denoiser(x, grid[i]).x0
            if corr is not None:
                ca, coefs, new = corr
                x = lincomb(x_prev, ca, [(c, hist[k]) for k, c in coefs.items()] + [(new, m)])
            hist = [m] + hist[:depth - 1]
            x_prev = x
            x = lincomb(x, a, list(zip(bs, hist)))
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": m})
        return x

    def declared_order(self, **options):
        opts = {**self.options(), **options}
        base = registry.get("solver", opts["base"])
        p = int(opts["order"]) or min(base.declared_order(**dict(opts["base_options"] or {})), 3)
        return min(p + 1, 3)


@hookimpl
def register_solvers(register):
    register(UniC())
