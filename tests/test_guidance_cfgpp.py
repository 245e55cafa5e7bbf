"""CFG++ (cfg_pp) and the renoise contract: the sampled trajectories against an independent
re-derivation of the paper's DDIM update on the exact Gaussian mixture (float64), and an error,
never a silently different run, for solvers that do not declare that they honour it."""

import pytest
import torch

import solverzoo as sz
from solverzoo.guidance import RenoisedPrediction

TOL = 1e-10  # float64 round-off over 8-12 steps; a wrong renoising term is O(1e-1) here
LAM = 0.7
LABELS = [0, 1, 2, 0, 1, 2]


def _posterior(gmm, sched, x, t, labels):
    a, s = (float(v) for v in sched.alpha_sigma(torch.as_tensor(t, dtype=torch.float64)))
    col = lambda v: torch.full((x.shape[0], 1), v, dtype=torch.float64)  # noqa: E731
    return a, s, gmm.posterior(x, col(a), col(s), torch.as_tensor(labels))


def _reference(gmm, sched, x, grid, eta=0.0, gens=None):
    """Chung et al. 2024, Algorithm 2 (DDIM with CFG++), with the exact posterior mean:
    eps_lam = eps_u + lam (eps_c - eps_u), x0_lam = (x - sigma eps_lam) / alpha,
    x' = alpha' x0_lam + sigma' eps_u; with eta > 0 the ancestral form (ComfyUI's
    euler_ancestral_cfg_pp): x' = alpha' (x0_lam + s_down eps_u) + alpha' s_up z in VE units."""
    for i in range(len(grid) - 1):
        a, s, (x0c, epsc) = _posterior(gmm, sched, x, grid[i], LABELS)
        _, _, (x0u, epsu) = _posterior(gmm, sched, x, grid[i], [-1] * len(LABELS))
        if a > 0:
            x0 = (x - s * (epsu + LAM * (epsc - epsu))) / a
        else:  # alpha = 0 (flow, t = 1): the same x0_lam, from the data predictions (the map is affine)
            x0 = x0u + LAM * (x0c - x0u)
        a1, s1 = (float(v) for v in sched.alpha_sigma(torch.as_tensor(grid[i + 1], dtype=torch.float64)))
        if eta == 0.0 or s1 == 0.0:
            x = a1 * x0 + s1 * epsu
        else:
            sve, sve1 = s / a, s1 / a1
            up = eta * (sve1 ** 2 * (sve ** 2 - sve1 ** 2) / sve ** 2) ** 0.5
            down = (sve1 ** 2 - up ** 2) ** 0.5
            x = a1 * (x0 + down * epsu) + a1 * up * sz.noise.randn_like(x, gens)
    return x


def _setup(gmm, schedule, prediction, grid):
    sched = sz.get_schedule(schedule)
    g = sz.get_grid(grid)(sched, 10)
    conds = sz.branch_conds(gmm.conditioner(), LABELS)
    den = sz.GuidedDenoiser(gmm.model(sched, prediction), sz.get_guidance("cfg_pp", scale=LAM), conds)
    x = sz.initial_noise(sched, g[0], (len(LABELS), gmm.dim), sz.generators(range(len(LABELS))), dtype=torch.float64)
    return sched, g, den, x


@pytest.mark.parametrize("schedule,prediction,grid,solver,opts", [
    ("vp", "epsilon", "logsnr", "ddim", {}),
    ("vp", "epsilon", "logsnr", "euler", {"frame": "ve"}),
    ("vp", "v", "karras", "euler", {"frame": "flow"}),
    ("flow", "velocity", "flow_shift", "ddim", {}),
    ("flow", "velocity", "flow_shift", "euler", {}),
    ("vp", "epsilon", "logsnr", "lms", {"order": 1}),  # first-order Adams-Bashforth in the eps frame is DDIM
    ("flow", "velocity", "flow_shift", "lms", {"order": 1}),
])
def test_cfg_pp_equals_the_paper_ddim_update(gmm, schedule, prediction, grid, solver, opts):
    sched, g, den, x = _setup(gmm, schedule, prediction, grid)
    out = sz.sample(solver, den, x.clone(), g, **opts)
    ref = _reference(gmm, sched, x.clone(), g.tolist())
    err = float((out.x - ref).abs().max())
    assert err < TOL, f"{solver} {opts} with cfg_pp differs from the paper's update by {err:.3e}"
    plain = sz.sample(solver, sz.GuidedDenoiser(den.model, sz.get_guidance("cfg", scale=LAM), den.conds), x.clone(), g, **opts)
    assert float((plain.x - ref).abs().max()) > 1e-3  # CFG++ is not plain CFG on this case


def test_cfg_pp_ancestral_equals_the_ancestral_form(gmm):
    sched, g, den, x = _setup(gmm, "vp", "epsilon", "logsnr")
    out = sz.sample("euler_ancestral", den, x.clone(), g, generator=sz.generators(range(100, 106)))
    ref = _reference(gmm, sched, x.clone(), g.tolist(), eta=1.0, gens=sz.generators(range(100, 106)))
    assert float((out.x - ref).abs().max()) < TOL


def test_cfg_pp_prediction_contract(gmm):
    sched, g, den, x = _setup(gmm, "vp", "epsilon", "logsnr")
    t = g[3]
    pred = den(x, t)
    a, s, _ = _posterior(gmm, sched, x, t, LABELS)
    assert isinstance(pred, RenoisedPrediction) and den.renoise
    torch.testing.assert_close(pred.renoised(x), a * pred.x0 + s * pred.eps, rtol=0, atol=1e-12)
    # lin with the evaluated state continues from the renoised state; without it, it is a * x0 + b * eps
    torch.testing.assert_close(pred.lin(0.3, 0.2, 0.5, x), 0.3 * pred.x0 + 0.2 * pred.eps + 0.5 * pred.renoised(x))
    plain = sz.GuidedDenoiser(den.model, sz.get_guidance("cfg", scale=LAM), den.conds)(x, t)
    assert plain.renoised(x) is x  # every other prediction: the state itself, the same tensor


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "ddpm", "dop853"])
def test_solvers_that_do_not_declare_renoise_refuse_cfg_pp(gmm, solver):
    _, g, den, x = _setup(gmm, "vp", "epsilon", "logsnr")
    s = sz.get_solver(solver)
    assert not s.renoise and s.info()["renoise"] is False
    with pytest.raises(ValueError, match=r"cfg_pp.*renoise"):
        sz.sample(solver, den, x, g)
    with pytest.raises(ValueError, match=r"cfg_pp.*renoise"):
        s.sample(den, x, g)


def test_declared_solvers_and_multistage_runge_kutta(gmm):
    for name in ("ddim", "euler", "euler_ancestral", "heun", "midpoint", "rk4"):
        assert sz.get_solver(name).renoise, name
    _, g, den, x = _setup(gmm, "vp", "epsilon", "logsnr")
    out = sz.sample("heun", den, x.clone(), g, frame="ve")
    assert torch.isfinite(out.x).all() and out.nfe == 2 * (2 * 9 + 1)
    # scale 1: x0_lam = x0_c; the renoised state alpha x0_c + sigma eps_u differs from x, so
    # Heun's result is not the conditional solve
    cond = sz.sample("heun", den.model.denoiser(den.conds["cond"]), x.clone(), g, frame="ve")
    assert float((out.x - cond.x).abs().max()) > 1e-3
