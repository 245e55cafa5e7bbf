"""RES multistep solvers (Zhang, Song & Chen, "Improved Order Analysis and Design of Exponential
Integrator for Diffusion Models Sampling", arXiv:2308.02157, 2023): ``res_multistep`` and
``res_multistep_ancestral``.

Source: ComfyUI's ``res_multistep`` (``comfy/k_diffusion/sampling.py``), which exists only there.
ComfyUI writes the step in k-diffusion's VE sigmas (``lambda = -log sigma``) and applies the
ancestral split of ``get_ancestral_step`` to whatever ``sigma`` the model uses, which on a
rectified-flow model is ``t`` itself: the wrong noise level there. Here the step is derived in
the log-SNR frame (``lambda = log(alpha / sigma)``, VE sigma ``s = sigma / alpha``) and lifted
to any path by ``x = alpha * x_ve``, so it is the same update on every schedule and equals
ComfyUI's on a VE schedule (``alpha = 1``), where tests check it to 1e-10.

The module also holds :class:`LinearX0Multistep`, the loop shared by every solver whose step is
``x' = a x + sum_k b_k D_{i-k} (+ std z)`` with ``D`` the data prediction (``er_sde`` uses it;
:mod:`solverzoo_builtin.solvers.unic` corrects any such solver).
"""
import math

from solverzoo import Solver, hookimpl, randn_like
from solverzoo.kit import lincomb, table


class LinearX0Multistep(Solver):
    """A multistep solver whose plan is one ``(a, (b_0, b_1, ...), std)`` per step: the step is
    ``x' = a x + sum_k b_k D_{i-k} + std * z`` with ``D_{i-k}`` the data prediction made ``k``
    steps ago (newest first). :meth:`linear_plan` is that plan: the protocol through which
    ``unic`` adds its corrector without re-implementing the predictor."""

    needs = ("x0",)

    def linear_plan(self, schedule, grid, **options):
        """The per-step ``(a, b, std)`` triples (the plan itself)."""
        self.check_options(options)
        return self.plan(schedule, grid, **options)

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        """Evaluate ``D_i`` at every step start and combine it with the history."""
        depth = max([1] + [len(b) for _, b, _ in plan])
        hist = ()
        for i, (a, bs, std) in enumerate(plan):
            d0 = denoiser(x, grid[i]).x0
            hist = (d0,) + hist[:depth - 1]
            x = lincomb(x, a, list(zip(bs, hist)))
            if std > 0:
                x = x + std * randn_like(x, generator)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": d0})
        return x


def ancestral_split(s0: float, s1: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ``get_ancestral_step`` on VE sigmas: ``(s_down, s_up)`` with
    ``s_up = min(s1, eta * s1 * sqrt(1 - (s1 / s0)^2))`` and ``s_down = sqrt(s1^2 - s_up^2)``
    (``s0`` may be infinite: the step from pure noise)."""
    if eta == 0.0:
        return s1, 0.0
    q = s1 / s0  # 0 when s0 = inf
    up = min(s1, eta * s1 * math.sqrt(max(1.0 - q * q, 0.0)))
    return math.sqrt(max(s1 * s1 - up * up, 0.0)), up


def _phi12(h: float) -> tuple[float, float]:
    """``phi_1(-h) = (1 - e^-h) / h`` and ``phi_2(-h) = (h - 1 + e^-h) / h^2`` (series for tiny h)."""
    if abs(h) < 1e-4:
        return 1.0 - h / 2 + h * h / 6, 0.5 - h / 6 + h * h / 24
    p1 = -math.expm1(-h) / h
    return p1, (1.0 - p1) / h


def res_steps(tab, eta: float = 0.0, s_noise: float = 1.0, lower_order_final: bool = True) -> list:
    """``(a, (b_0, b_1), std)`` of every step of RES-2M with the ancestral split ``eta``.

    In VE units (``x_ve = x / alpha``, ``s = sigma / alpha``): the deterministic part steps from
    ``s_i`` to ``s_down`` as the exponential integrator ``x_ve' = e^-h x_ve + h (b1 D_i + b2 D_{i-1})``,
    ``h = log(s_i / s_down)``, ``b2 = phi_2(-h) / c2``, ``b1 = phi_1(-h) - b2``,
    ``c2 = -(lambda(s_down of step i-1) - lambda_{i-1}) / h`` (ComfyUI's history spacing: the previous
    *deterministic* step, which equals ``-h_{i-1} / h`` when ``eta = 0``); then ``s_up * z`` is added.
    The first step, a step from alpha = 0 or to ``s_down = 0`` are Euler steps (DDIM).
    Lifted to the schedule by ``x = alpha * x_ve``: the noise std is ``alpha' * s_up`` =
    ``eta * sigma' * sqrt(1 - e^(-2 h_i))`` (capped at ``sigma'``), right on VP, VE and flow paths.
    With ``lower_order_final`` a grid of fewer than 15 steps takes its last step that does not end
    at sigma = 0 at first order (DPM-Solver++'s advice for short grids; ComfyUI has no such rule).
    """
    out, prev_down = [], None
    last = max((i for i in range(tab.n) if tab.sigma[i + 1] > 0), default=-1)
    lowered = last if lower_order_final and tab.n < 15 else -1
    for i in range(tab.n):
        a0, s0, a1, s1 = tab.alpha[i], tab.sigma[i], tab.alpha[i + 1], tab.sigma[i + 1]
        sve0 = s0 / a0 if a0 > 0 else math.inf
        sve1 = s1 / a1
        down, up = ancestral_split(sve0, sve1, eta)
        std = a1 * up * s_noise if s1 > 0 else 0.0
        ratio = a1 * down / s0  # = alpha' * (s_down / s) / alpha: the x coefficient, finite at alpha = 0
        multistep = (i > 0 and i != lowered and down > 0 and prev_down > 0
                     and math.isfinite(sve0) and math.isfinite(tab.lam[i - 1]))
        if not multistep:
            out.append((ratio, (a1 * (1.0 - down / sve0), 0.0), std))
        else:
            h = math.log(sve0 / down)
            sve_prev = tab.sigma[i - 1] / tab.alpha[i - 1]
            c2 = -math.log(sve_prev / prev_down) / h  # (lambda_prev - lambda_old_down) / h
            p1, p2 = _phi12(h)
            b2 = p2 / c2
            out.append((ratio, (a1 * h * (p1 - b2), a1 * h * b2), std))
        prev_down = down
    return out


class ResMultistep(LinearX0Multistep):
    """RES multistep — Zhang, Song & Chen 2023 (arXiv:2308.02157): second-order multistep
    exponential integrator on x0 with the exact ``phi_2`` weight of the first divided difference.

    Source: ComfyUI's ``sample_res_multistep`` (the only implementation); derived here in the
    log-SNR frame, so it runs on every schedule and parametrisation (see the module docstring).

    Options:
        lower_order_final: on grids of fewer than 15 steps, take the last step before the jump to
            sigma = 0 at first order (default True; False is ComfyUI's update on every grid).
    """

    name = "res_multistep"
    order = 2

    def plan(self, schedule, grid, *, lower_order_final: bool = True):
        return res_steps(table(schedule, grid), lower_order_final=bool(lower_order_final))


class ResMultistepAncestral(LinearX0Multistep):
    """RES multistep ancestral — Zhang, Song & Chen 2023 (arXiv:2308.02157) with ancestral noise:
    each step integrates down to ``s_down`` and adds fresh noise of VE std ``s_up`` (k-diffusion's
    split, ``eta`` scaling it; ``eta = 0`` is ``res_multistep``).

    Source: ComfyUI's ``sample_res_multistep_ancestral``. The noise is derived in the log-SNR
    frame: std ``eta * sigma' * sqrt(1 - exp(-2 h))`` with ``h`` the log-SNR step, correct on
    flow models, where ComfyUI feeds ``t`` to the VE formula.

    Options:
        eta: noise scale in [0, inf); 1 is DDPM-like ancestral sampling (default 1).
        s_noise: extra factor on the injected noise only (default 1).
        lower_order_final: as for ``res_multistep`` (default True; False is ComfyUI's update).
    """

    name = "res_multistep_ancestral"
    order = 2
    stochastic = True

    def plan(self, schedule, grid, *, eta: float = 1.0, s_noise: float = 1.0, lower_order_final: bool = True):
        if not (eta >= 0 and s_noise >= 0):
            raise ValueError(f"{self.name}: eta and s_noise must be >= 0, got eta={eta!r}, s_noise={s_noise!r}")
        return res_steps(table(schedule, grid), float(eta), float(s_noise), bool(lower_order_final))

    def is_stochastic(self, **options):
        opts = {**self.options(), **options}
        return opts["eta"] > 0 and opts["s_noise"] > 0


@hookimpl
def register_solvers(register):
    for cls in (ResMultistep, ResMultistepAncestral):
        register(cls())
