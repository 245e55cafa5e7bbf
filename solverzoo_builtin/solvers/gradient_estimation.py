"""Gradient-estimation sampler (Permenter & Yuan, "Interpreting and Improving Diffusion Models from
an Optimization Perspective", ICML 2024, https://openreview.net/forum?id=o2ND9v0CeK): ``gradient_estimation``.

Source: ComfyUI's ``sample_gradient_estimation`` (the only implementation). The paper reads the
denoiser as a gradient of the distance to the data manifold and replaces each Euler direction
``d_i`` by the extrapolation ``d_i + (gamma - 1)(d_i - d_{i-1})`` (a momentum-like estimate;
``gamma = 2`` by default). ComfyUI applies it to k-diffusion's ``to_d``, which is ``eps`` in the VE
frame on VP/VE models and the flow velocity ``eps - x0`` on rectified-flow models; here the same
choice is the integration ``frame`` (``auto`` picks exactly that), so the update is defined, and
equal to ComfyUI's, on every schedule and parametrisation.
"""
from solverzoo import Solver, hookimpl
from solverzoo.kit import frame_coords, lincomb, resolve_frame, table


class GradientEstimation(Solver):
    """Gradient estimation — Permenter & Yuan 2024 (ICML): Euler with the direction extrapolated
    from the previous one, ``y' = y + (u' - u)(gamma d_i - (gamma - 1) d_{i-1})`` in the frame
    ``y = x / c`` against the frame time ``u`` (see :mod:`solverzoo.kit`). The first step and a
    step to sigma = 0 are plain Euler (the latter returns ``x0``).

    A consistent first-order method for every ``gamma`` (second order only for ``gamma = 1.5`` on
    a grid uniform in frame time, where it is Adams-Bashforth 2), so it declares order 1.

    Source: ComfyUI's ``sample_gradient_estimation``.

    Options:
        ge_gamma: the extrapolation factor (default 2; 1 is Euler).
        frame: ``auto`` (default: flow on rectified-flow schedules or from alpha = 0, ve elsewhere),
            ``ve`` or ``flow``.
    """

    name = "gradient_estimation"
    order = 1

    def plan(self, schedule, grid, *, ge_gamma: float = 2.0, frame: str = "auto"):
        tab = table(schedule, grid)
        frame = resolve_frame(frame, schedule, float(tab.alpha[0]))
        cs, us = zip(*(frame_coords(frame, a, s) for a, s in zip(tab.alpha, tab.sigma)))
        steps = []
        for i in range(tab.n):
            du = us[i + 1] - us[i]
            ratio, k = cs[i + 1] / cs[i], cs[i + 1] * du
            if i == 0 or tab.sigma[i + 1] == 0.0:
                steps.append((ratio, k, 0.0))
            else:
                steps.append((ratio, k * ge_gamma, -k * (ge_gamma - 1.0)))
        return frame, steps

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        """Euler in the frame with the extrapolated direction."""
        frame, steps = plan
        flow = frame == "flow"
        d_prev = None
        for i, (ratio, k0, k1) in enumerate(steps):
            pred = denoiser(x, grid[i])
            d = pred.lin(-1.0, 1.0) if flow else pred.eps  # dy/du: eps - x0 (flow) or eps (ve)
            x = lincomb(x, ratio, [(k0, d), (k1, d_prev)])
            d_prev = d
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
        return x


@hookimpl
def register_solvers(register):
    register(GradientEstimation())
