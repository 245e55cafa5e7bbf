"""DPM-Solver++ multistep solvers (Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", 2022): 2M, 3M and the 2M SDE variant.

All three are exponential integrators in the log-SNR ``lambda`` on the data prediction
``D = x0``. Per step they are linear combinations ``x' = a x + sum_j b_j D_{i-j}`` whose
coefficients the plan computes in float64; the loop only combines tensors.
"""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import expm1_neg, lincomb, multistep_orders, table


def _coefficients(tab, i: int, p: int, sde_eta: float = 0.0, d2_weight: float = 2.0, form: str = "midpoint"):
    """(x coefficient, coefficients of D_i, D_{i-1}, D_{i-2}, noise std) of one step of order p.

    ``d2_weight`` multiplies the second-difference term of the third-order step: 2 is the
    Taylor-exact value (D2 approximates h^2 x0''/2 and its integral weight is 2 h phi_3);
    1 is what the DPM-Solver reference code, diffusers and k-diffusion use, which halves
    that term and makes the method second order asymptotically (see ``dpmpp_3m``).
    ``form`` picks the second-order step: ``midpoint`` (``(1 - e^-H) D1 / 2``, diffusers' default)
    or ``heun`` (``h phi_2(H) D1``, k-diffusion's 2M SDE ``heun`` and its 3M warm-up step).
    With ``sde_eta > 0`` the phi functions take ``H = (1 + eta) h`` (the SDE variants)."""
    s0, a1, s1 = float(tab.sigma[i]), float(tab.alpha[i + 1]), float(tab.sigma[i + 1])
    emh = tab.emh(i)  # exp(-h), 0 for a step to sigma = 0
    if sde_eta > 0:  # SDE variant: exp(-h) -> exp(-(1 + eta) h), noise sigma' sqrt(1 - exp(-2 eta h))
        a, c0, std = (s1 / s0 * emh ** sde_eta, a1 * (1.0 - emh ** (1.0 + sde_eta)),
                      s1 * math.sqrt(max(1.0 - emh ** (2 * sde_eta), 0.0)))
    else:
        a, c0, std = s1 / s0, a1 * (1.0 - emh), 0.0
    if p == 1:
        return a, (c0, 0.0, 0.0), std
    h, h0 = tab.h(i), tab.h(i - 1)
    r0 = h0 / h
    H = (1.0 + sde_eta) * h
    em1 = expm1_neg(H)
    c1 = a1 * (em1 / H + 1.0)  # h phi_2(H) / h: the weight of the first difference
    if p == 2:
        w = 0.5 * c0 if form == "midpoint" else c1  # D0 + w / r0 (D0 - D1)
        return a, (c0 + w / r0, -w / r0, 0.0), std
    r1 = tab.h(i - 2) / h
    c2 = -d2_weight * a1 * ((em1 + H) / (H * H) - 0.5)
    k, q = r0 / (r0 + r1), 1.0 / (r0 + r1)
    u, w = c1 * (1 + k) + c2 * q, -c1 * k - c2 * q  # weights of D1_0 = (D0-D1)/r0 and D1_1 = (D1-D2)/r1
    return a, (c0 + u / r0, -u / r0 + w / r1, -w / r1), std


COEFFICIENTS = ("exact", "dpm_solver", "k_diffusion")
"""The coefficient variants of the third-order multistep step (see :class:`DPMpp3M`)."""


class _DPMpp(Solver):
    max_order = 2
    sde_eta = 0.0

    def _plan(self, schedule, grid, lower_order_final, sde_eta, d2_weight=2.0, form="midpoint", s_noise=1.0):
        tab = table(schedule, grid)
        orders = multistep_orders(tab, self.max_order, lower_order_final)
        steps = [_coefficients(tab, i, p, sde_eta, d2_weight, form) for i, p in enumerate(orders)]
        return steps if s_noise == 1.0 else [(a, b, std * s_noise) for a, b, std in steps]

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        d1 = d2 = None
        for i, (a, (b0, b1, b2), std) in enumerate(plan):
            d0 = denoiser(x, grid[i]).x0
            x = lincomb(x, a, [(b0, d0), (b1, d1), (b2, d2)])
            if std > 0:
                x = x + std * randn_like(x, generator)
            d1, d2 = d0, d1
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": d0})
        return x


class DPMpp2M(_DPMpp):
    """DPM-Solver++(2M) — Lu et al. 2022: second-order multistep exponential integrator on x0."""

    name = "dpmpp_2m"
    order = 2
    max_order = 2
    needs = ("x0",)

    def plan(self, schedule, grid, *, lower_order_final: bool = True):
        return self._plan(schedule, grid, lower_order_final, 0.0)


class DPMpp3M(_DPMpp):
    """DPM-Solver++(3M) — Lu et al. 2022: third-order multistep exponential integrator on x0.

    ``coefficients`` picks one of three variants:

    * ``"exact"`` (default) weights the second-difference term D2 by ``2 h phi_3``, the value
      the Taylor expansion of the exponential integrator requires; measured order on the
      Gaussian-mixture testbed: 3.2.
    * ``"dpm_solver"`` is the DPM-Solver reference code and diffusers'
      ``DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++")``: weight
      ``h phi_3`` (half the Taylor value, measured order 2.0) and a midpoint-form second step
      ``(1 - e^-h) D1 / 2`` during warm-up.
    * ``"k_diffusion"`` is k-diffusion's 3M (``sample_dpmpp_3m_sde`` with ``eta=0``, ComfyUI's
      ``dpmpp_3m_sde`` at eta 0): the same ``h phi_3`` weight, but its second-order warm-up step
      is the Heun form ``h phi_2(h) D1``. Equal to k-diffusion with ``lower_order_final=False``
      (k-diffusion has no lowered final steps). Measured order 2.0 as well.

    The two peer variants differ only in the warm-up step (and diffusers' lowered final steps).
    """

    name = "dpmpp_3m"
    order = 3
    max_order = 3
    needs = ("x0",)

    def plan(self, schedule, grid, *, lower_order_final: bool = True, coefficients: str = "exact"):
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"dpmpp_3m: coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
        return self._plan(schedule, grid, lower_order_final, 0.0, 2.0 if coefficients == "exact" else 1.0,
                          "heun" if coefficients == "k_diffusion" else "midpoint")

    def declared_order(self, **options):
        return 3 if options.get("coefficients", "exact") == "exact" else 2


class DPMpp2MSDE(_DPMpp):
    """DPM-Solver++(2M) SDE — Lu et al. 2022: the SDE variant (diffusers' ``sde-dpmsolver++``,
    midpoint form); ``eta`` scales the injected noise (1 is the reverse SDE)."""

    name = "dpmpp_2m_sde"
    order = 2
    max_order = 2
    stochastic = True
    needs = ("x0",)

    def plan(self, schedule, grid, *, eta: float = 1.0, lower_order_final: bool = True):
        if not eta > 0:
            raise ValueError(f"dpmpp_2m_sde: eta must be > 0 (eta = 0 is dpmpp_2m), got {eta!r}")
        return self._plan(schedule, grid, lower_order_final, float(eta))


def _singlestep_orders(n: int, order: int, lower_order_final: bool) -> list[int]:
    """diffusers' ``DPMSolverSinglestepScheduler.get_order_list``: blocks ``1, 2, .., order`` of grid
    steps, each block one singlestep method whose stages are the block's interior grid points; with
    ``lower_order_final`` the last block is cut to fit the grid (and its last step lowered)."""
    if not lower_order_final:
        if n % order:
            raise ValueError(f"dpmpp_singlestep: lower_order_final=False needs a step count divisible by order={order} "
                             f"(whole blocks), got {n} steps; pass lower_order_final=True or another step count")
        return list(range(1, order + 1)) * (n // order)
    if order == 1:
        return [1] * n
    if order == 2:
        return [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
    tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[n % 3]
    return [1, 2, 3] * (n // 3 - (1 if n % 3 == 0 else 0)) + tail


def _singlestep_coefficients(tab, i: int, p: int, heun: bool):
    """``(x coef on the block's start state, weights of D at the block's points, oldest first)`` of
    step ``i`` of order ``p``: DPM-Solver++(pS) from grid point ``i - p + 1`` to ``i + 1``."""
    s = i - p + 1
    a1 = tab.alpha[i + 1]
    emh = float((tab.sigma[i + 1] / tab.sigma[s]) * (tab.alpha[s] / a1)) if a1 > 0 else 0.0
    x_coef, c0 = tab.sigma[i + 1] / tab.sigma[s], a1 * (1.0 - emh)  # exp(-h) over the whole block step
    if p == 1:
        return x_coef, (c0,)
    h = tab.lam[i + 1] - tab.lam[s]
    c1 = a1 * (expm1_neg(h) / h + 1.0)  # h phi_2(h) / h
    r0 = (tab.lam[i] - tab.lam[s]) / h
    if p == 2:
        w = c1 if heun else 0.5 * c0  # D0 + w / r0 (m0 - m1)
        return x_coef, (c0 - w / r0, w / r0)
    r1 = (tab.lam[i - 1] - tab.lam[s]) / h
    if not heun:  # DPM-Solver-3's update with the last stage only: + c1 (m0 - m2) / r0
        return x_coef, (c0 - c1 / r0, 0.0, c1 / r0)
    c2 = -a1 * ((expm1_neg(h) + h) / (h * h) - 0.5)
    # D1 = (r0 D1_0 - r1 D1_1) / (r0 - r1), D2 = 2 (D1_1 - D1_0) / (r0 - r1), D1_0 = (m1 - m2) / r1, D1_1 = (m0 - m2) / r0
    k1, k2 = c1 / (r0 - r1), 2.0 * c2 / (r0 - r1)
    w_d10, w_d11 = k1 * r0 - k2, -k1 * r1 + k2
    return x_coef, (c0 - w_d10 / r1 - w_d11 / r0, w_d10 / r1, w_d11 / r0)


class DPMppSinglestep(Solver):
    """DPM-Solver++ singlestep — Lu et al. 2022 (DPM-Solver++(2S) / (3S) on x0), as diffusers'
    ``DPMSolverSinglestepScheduler(algorithm_type="dpmsolver++")``: the grid is cut into blocks of
    ``order`` steps; each block is one singlestep method whose intermediate stages are the block's
    interior grid points (one evaluation per grid point), started again from the block's first state.

    Unlike ``dpmpp_2s_ancestral`` (k-diffusion), whose stage sits at the log-SNR midpoint of every
    grid step, the stages here are grid points, so a grid of N steps costs N evaluations.
    Options: ``order`` (1-3), ``solver_type`` (``midpoint``, diffusers' default, or ``heun``; the
    third-order ``midpoint`` update is third order for log-SNR-uniform blocks, ``heun`` on any),
    ``lower_order_final`` (diffusers' block pattern for step counts that are not multiples of
    ``order``; False needs a multiple). A step to sigma = 0 is first order (``x' = alpha' x0``).
    """

    name = "dpmpp_singlestep"
    order = 3
    needs = ("x0",)

    def plan(self, schedule, grid, *, order: int = 3, solver_type: str = "midpoint", lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"dpmpp_singlestep: order must be 1, 2 or 3, got {order!r}")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"dpmpp_singlestep: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        tab = table(schedule, grid)
        start = 1 if tab.alpha[0] == 0.0 else 0  # a block cannot start at infinite noise (lambda = -inf)
        orders = [1] * start + _singlestep_orders(tab.n - start, order, lower_order_final)
        if tab.to_zero(tab.n - 1):
            orders[-1] = 1
        return [(p, *_singlestep_coefficients(tab, i, p, solver_type == "heun")) for i, p in enumerate(orders)]

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        x_start, ds = x, []
        for i, (p, a, w) in enumerate(plan):
            d = denoiser(x, grid[i]).x0
            if p == 1:
                x_start, ds = x, [d]
            else:
                ds.append(d)
            x = lincomb(x_start, a, list(zip(w, ds)))
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": d})
        return x

    def declared_order(self, **options):
        return options.get("order", 3)


@hookimpl
def register_solvers(register):
    for cls in (DPMpp2M, DPMpp3M, DPMpp2MSDE, DPMppSinglestep):
        register(cls())
