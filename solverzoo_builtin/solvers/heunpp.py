"""Heun++ (``heunpp2``): a three-evaluation Heun variant from the AUTOMATIC1111 extension
Carzit/sd-webui-samplers-scheduler (MIT), shipped by ComfyUI as ``sample_heunpp2``.

There is no paper: it is an unpublished heuristic built on EDM's Heun sampler (Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022). Source:
ComfyUI's ``comfy/k_diffusion/sampling.py``. Each step takes Euler predictions to the next *two*
grid times, evaluates the derivative there and steps with the weighted mean
``w1 d_i + w2 d_{i+1} + w3 d_{i+2}``, ``w2 = u_{i+1} / (3 u_0)``, ``w3 = u_{i+2} / (3 u_0)``,
``w1 = 1 - w2 - w3`` (``u`` the frame time, ``u_0`` the grid's first); the second-to-last step uses
two points (``w2 = u_{i+1} / (2 u_0)``) and the last step is Euler. The weights fade to Euler as the
noise level falls, so the method is first order (it is consistent, but its weights never meet the
second-order condition).

ComfyUI applies it to k-diffusion's ``to_d`` (VE frame on VP/VE models, the flow velocity on
rectified-flow models): here that is the integration ``frame`` (``auto`` picks it), and the
method is written as an explicit Runge-Kutta step on the grid times, run by
:class:`solverzoo.kit.RungeKutta`'s loop.
"""
from solverzoo import hookimpl
from solverzoo.kit import RKPlan, RKStep, RungeKutta, frame_coords, resolve_frame, table


class HeunPP2(RungeKutta):
    """Heun++ 2 — an unpublished three-evaluation extension of EDM's Heun (Karras et al. 2022),
    from Carzit/sd-webui-samplers-scheduler via ComfyUI's ``sample_heunpp2``; first order.

    Options:
        frame: ``auto`` (default), ``ve`` or ``flow``: the frame of the derivative (see
            :mod:`solverzoo.kit`; ``auto`` is what ComfyUI does on each kind of model).
    """

    name = "heunpp2"
    order = 1
    evals_per_step = 3

    def plan(self, schedule, grid, *, frame: str = "auto"):
        tab = table(schedule, grid)
        frame = resolve_frame(frame, schedule, float(tab.alpha[0]))
        cs, us = zip(*(frame_coords(frame, a, s) for a, s in zip(tab.alpha, tab.sigma)))
        n, t = tab.n, tab.t
        steps = []
        for i in range(n):
            c0, c1, du = cs[i], cs[i + 1], us[i + 1] - us[i]
            first = (t[i], 1.0, ())
            if i == n - 1:  # Euler
                steps.append(RKStep(None, (first,), (c1 / c0, (c1 * du,))))
                continue
            stage2 = (t[i + 1], c1 / c0, (c1 * du,))
            if i == n - 2:  # two points
                w2 = us[i + 1] / (2.0 * us[0])
                steps.append(RKStep(None, (first, stage2), (c1 / c0, (c1 * du * (1.0 - w2), c1 * du * w2))))
                continue
            c2, du2 = cs[i + 2], us[i + 2] - us[i + 1]
            stage3 = (t[i + 2], c2 / c0, (c2 * du, c2 * du2))
            w2, w3 = us[i + 1] / (3.0 * us[0]), us[i + 2] / (3.0 * us[0])
            out = (c1 / c0, (c1 * du * (1.0 - w2 - w3), c1 * du * w2, c1 * du * w3))
            steps.append(RKStep(None, (first, stage2, stage3), out))
        return RKPlan(frame, tuple(steps))

    def is_stochastic(self, **options):
        return False


@hookimpl
def register_solvers(register):
    register(HeunPP2())
