"""Solvers that exist only in ComfyUI or only in papers: er_sde, seeds_2/3, exp_heun_2_x0(_sde),
res_multistep(_ancestral), gradient_estimation, heunpp2, restart and the UniC corrector.

No peer is importable, so each is checked against something independent:

* the published order of the deterministic method on the exact Gaussian-mixture testbed
  (DOP853 reference; measured within 0.35 of the declared order);
* on a VE schedule (alpha = 1, where ComfyUI's sigma-only code is valid) the update equals ComfyUI's,
  re-derived below from its formulas with the same step noise, to 1e-10 in float64;
* SDE variants: with many steps on a *rectified-flow* model the end points match exact samples of
  the marginal (sliced Wasserstein within the two-sample floor), and ComfyUI's VE-only ancestral
  noise, applied to a flow model as ComfyUI does, visibly fails the same check;
* deterministic limits (eta = 0, repeats = 0) equal the ODE solver they reduce to, and
  ``unic(base="dpmpp_2m")`` equals the existing UniPC-2 (bh2) implementation.
"""
import math

import pytest
import torch

import solverzoo as sz
from solverzoo.testbeds import GaussianMixture, marginal_sample
from solverzoo.testing.verify import DEFAULT_NFES, sliced_wasserstein, verify

ORDER_CASES = [
    ("res_multistep", {}, 2), ("er_sde", {"noise_scaler": "ode"}, 3), ("er_sde", {"noise_scaler": "ode", "max_stage": 2}, 2),
    ("er_sde", {"noise_scaler": "ode", "coefficients": "comfyui"}, 2), ("seeds_2", {"eta": 0.0}, 2),
    ("seeds_3", {"eta": 0.0}, 3), ("exp_heun_2_x0", {}, 2), ("gradient_estimation", {}, 1), ("heunpp2", {}, 1),
    ("restart", {"repeats": 0}, 2), ("unic", {}, 3), ("unic", {"base": "dpmpp_2m"}, 3),
]


@pytest.mark.parametrize("name,options,order", ORDER_CASES, ids=lambda v: str(v))
def test_declared_order_is_textbook_and_measured(name, options, order):
    """Empirical order within 0.35 of the declared one (64 samples; the ladder is 16..256 *steps*,
    i.e. NFE 16k..256k for k evaluations per step, so multi-stage methods are measured on the same
    step sizes: on the default NFE ladder seeds_3 takes 5..85 steps and measures a pre-asymptotic 3.36)."""
    k = sz.get_solver(name).evals_per_step
    rep = verify(name, n=64, options=options, nfes=tuple(k * n for n in DEFAULT_NFES))
    assert rep.declared_order == order
    assert rep.empirical_order is not None and abs(rep.empirical_order - order) < 0.35, rep.empirical_order


# -- ComfyUI's updates re-derived on a VE schedule (sigma = t, alpha = 1) ----------------------------
def _ve_setup(steps=12):
    gmm = GaussianMixture.default(dim=3, seed=2)
    sched = sz.get_schedule("edm")
    grid = sz.get_grid("karras")(sched, steps)
    den = gmm.model(sched, "x0").denoiser()
    x = sz.initial_noise(sched, grid[0], (5, 3), sz.generators(range(5)), dtype=torch.float64)
    return den, x, grid


def _noise(g, x):
    return torch.randn(x.shape, generator=g, dtype=torch.float32).to(torch.float64)


def comfy_er_sde(model, x, sig, g, scaler, max_stage=3, s_noise=1.0):
    er = sig  # sigma / alpha with alpha = 1
    old, old_d = None, None
    for i in range(len(sig) - 1):
        d = model(x, sig[i])
        stage = min(max_stage, i + 1)
        if sig[i + 1] == 0:
            x = d
        else:
            ls, lt = er[i], er[i + 1]
            r = scaler(lt) / scaler(ls)
            x = r * x + (1 - r) * d
            if stage >= 2:
                dt = lt - ls
                step = -dt / 200
                pos = lt + torch.arange(200, dtype=torch.float64) * step
                sp = scaler(pos)
                s = torch.sum(1 / sp) * step
                dd = (d - old) / (ls - er[i - 1])
                x = x + (dt + s * scaler(lt)) * dd
                if stage >= 3:
                    su = torch.sum((pos - ls) / sp) * step
                    du = (dd - old_d) / ((ls - er[i - 2]) / 2)
                    x = x + ((dt ** 2) / 2 + su * scaler(lt)) * du
                old_d = dd
            if s_noise > 0:
                x = x + _noise(g, x) * s_noise * torch.sqrt(lt ** 2 - ls ** 2 * r ** 2)
        old = d
    return x


def _exp_stage(x, s_from, s_to, frac, h, eta, lin):
    """sigma_to / sigma_from * exp(-eta frac h) x - alpha * lin (alpha = 1)."""
    return s_to / s_from * torch.exp(-frac * h * eta) * x - lin


def comfy_seeds(model, x, sig, g, eta, r1, r2=None, solver_type="phi_2", s_noise=1.0):
    """ComfyUI's sample_seeds_2 (r2 None) / sample_seeds_3 on VE sigmas (lambda = -log sigma)."""
    e1 = torch.expm1
    e2 = lambda v: (torch.expm1(v) - v) / v  # noqa: E731
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sig) - 1):
        d = model(x, sig[i])
        if sig[i + 1] == 0:
            x = d
            continue
        ls, lt = -torch.log(sig[i]), -torch.log(sig[i + 1])
        h = lt - ls
        H = h * (eta + 1)
        s1 = torch.exp(-torch.lerp(ls, lt, r1))
        x2 = _exp_stage(x, sig[i], s1, r1, h, eta, e1(-r1 * H) * d)
        if noisy:
            w = torch.sqrt(-torch.expm1(-2 * r1 * h * eta)) * _noise(g, x)
            x2 = x2 + w * s1 * s_noise
        d2 = model(x2, s1)
        if r2 is None:
            if solver_type == "phi_1":
                x = _exp_stage(x, sig[i], sig[i + 1], 1.0, h, eta, e1(-H) * torch.lerp(d, d2, 1 / (2 * r1)))
            else:
                b2 = e2(-H) / r1
                x = _exp_stage(x, sig[i], sig[i + 1], 1.0, h, eta, (e1(-H) - b2) * d + b2 * d2)
            last = r1
        else:
            s2 = torch.exp(-torch.lerp(ls, lt, r2))
            a32 = r2 / r1 * e2(-r2 * H)
            x3 = _exp_stage(x, sig[i], s2, r2, h, eta, (e1(-r2 * H) - a32) * d + a32 * d2)
            if noisy:
                f = (r1 - r2) * h * eta
                w = w * torch.exp(f) + torch.sqrt(-torch.expm1(2 * f)) * _noise(g, x)
                x3 = x3 + w * s2 * s_noise
            d3 = model(x3, s2)
            b3 = e2(-H) / r2
            x = _exp_stage(x, sig[i], sig[i + 1], 1.0, h, eta, (e1(-H) - b3) * d + b3 * d3)
            last = r2
        if noisy:
            f = (last - 1) * h * eta
            w = w * torch.exp(f) + torch.sqrt(-torch.expm1(2 * f)) * _noise(g, x)
            x = x + w * sig[i + 1] * s_noise
    return x


def ancestral_step(s_from, s_to, eta):
    if not eta:
        return s_to, torch.zeros(())
    up = torch.minimum(s_to, eta * torch.sqrt(s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2))
    return torch.sqrt(s_to ** 2 - up ** 2), up


def comfy_res_multistep(model, x, sig, g, eta):
    old_down, old = None, None
    for i in range(len(sig) - 1):
        d = model(x, sig[i])
        down, up = ancestral_step(sig[i], sig[i + 1], eta)
        if down == 0 or old is None:
            x = x + (x - d) / sig[i] * (down - sig[i])
        else:
            t, t_old, t_next, t_prev = (-torch.log(v) for v in (sig[i], old_down, down, sig[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            p1 = torch.expm1(-h) / -h
            p2 = (p1 - 1.0) / -h
            x = torch.exp(-h) * x + h * ((p1 - p2 / c2) * d + (p2 / c2) * old)
        if sig[i + 1] > 0 and eta > 0:
            x = x + _noise(g, x) * up
        old, old_down = d, down
    return x


def comfy_gradient_estimation(model, x, sig, gamma=2.0):
    old_d = None
    for i in range(len(sig) - 1):
        den = model(x, sig[i])
        d = (x - den) / sig[i]
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = den
        else:
            x = x + d * dt
            if i >= 1:
                x = x + (gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def comfy_heunpp2(model, x, sig):
    to_d = lambda y, s: (y - model(y, s)) / s  # noqa: E731
    for i in range(len(sig) - 1):
        d = to_d(x, sig[i])
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == sig[-1]:
            x = x + d * dt
        elif sig[i + 2] == sig[-1]:
            x2 = x + d * dt
            w2 = sig[i + 1] / (2 * sig[0])
            x = x + (d * (1 - w2) + to_d(x2, sig[i + 1]) * w2) * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sig[i + 1])
            x3 = x2 + d2 * (sig[i + 2] - sig[i + 1])
            d3 = to_d(x3, sig[i + 2])
            w2, w3 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
            x = x + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    return x


_ER = {"er_sde": lambda v: v * ((v ** 0.3).exp() + 10.0),
       "reverse_sde": lambda v: v ** 2, "ode": lambda v: v}
VE_CASES = [
    ("er_sde", {"coefficients": "comfyui"}, lambda m, x, s, g: comfy_er_sde(m, x, s, g, _ER["er_sde"])),
    ("er_sde", {"coefficients": "comfyui", "noise_scaler": "reverse_sde", "max_stage": 2},
     lambda m, x, s, g: comfy_er_sde(m, x, s, g, _ER["reverse_sde"], max_stage=2)),
    ("er_sde", {"coefficients": "comfyui", "noise_scaler": "ode"},
     lambda m, x, s, g: comfy_er_sde(m, x, s, g, _ER["ode"], s_noise=0.0)),
    ("seeds_2", {}, lambda m, x, s, g: comfy_seeds(m, x, s, g, 1.0, 0.5, solver_type="phi_1")),
    ("seeds_2", {"solver_type": "phi_2", "r": 0.4, "eta": 0.5}, lambda m, x, s, g: comfy_seeds(m, x, s, g, 0.5, 0.4)),
    ("seeds_3", {}, lambda m, x, s, g: comfy_seeds(m, x, s, g, 1.0, 1 / 3, 2 / 3)),
    ("exp_heun_2_x0", {}, lambda m, x, s, g: comfy_seeds(m, x, s, g, 0.0, 1.0)),
    ("exp_heun_2_x0_sde", {}, lambda m, x, s, g: comfy_seeds(m, x, s, g, 1.0, 1.0)),
    ("res_multistep", {"lower_order_final": False}, lambda m, x, s, g: comfy_res_multistep(m, x, s, g, 0.0)),
    ("res_multistep_ancestral", {"lower_order_final": False}, lambda m, x, s, g: comfy_res_multistep(m, x, s, g, 1.0)),
    ("res_multistep_ancestral", {"lower_order_final": False, "eta": 0.5},
     lambda m, x, s, g: comfy_res_multistep(m, x, s, g, 0.5)),
    ("gradient_estimation", {}, lambda m, x, s, g: comfy_gradient_estimation(m, x, s)),
    ("heunpp2", {}, lambda m, x, s, g: comfy_heunpp2(m, x, s)),
]


@pytest.mark.parametrize("name,options,comfy", VE_CASES, ids=[f"{n}-{o}" for n, o, _ in VE_CASES])
def test_equals_comfyui_update_on_ve_schedule(name, options, comfy):
    """Same grid (Karras, 12 steps, to sigma = 0), same exact model, same step noise: max |diff| < 1e-10."""
    den, x, grid = _ve_setup()
    ours = sz.sample(name, den, x, grid, generator=torch.Generator().manual_seed(7), **options).x
    ref = comfy(lambda y, s: den(y, s).x0, x.clone(), grid, torch.Generator().manual_seed(7))
    assert (ours - ref).abs().max() < 1e-10


# -- SDE noise on flow models -------------------------------------------------------------------------
SDE_CASES = [("er_sde", {}), ("er_sde", {"noise_scaler": "reverse_sde"}), ("seeds_2", {}), ("seeds_3", {}),
             ("exp_heun_2_x0_sde", {}), ("res_multistep_ancestral", {}), ("restart", {"s_min": 0.2, "s_max": 3.0})]


def _flow_case(n=2000, steps=100):
    gmm = GaussianMixture.default(dim=2, seed=3)
    sched = sz.get_schedule("flow")
    grid = sz.get_grid("flow_shift")(sched, steps, final="none")
    x = marginal_sample(gmm, sched, float(grid[0]), n, torch.Generator().manual_seed(0))
    exact = marginal_sample(gmm, sched, float(grid[-1]), n, torch.Generator().manual_seed(2))
    floor = sliced_wasserstein(marginal_sample(gmm, sched, float(grid[-1]), n, torch.Generator().manual_seed(3)), exact)
    return gmm, sched, grid, x, exact, floor


@pytest.mark.parametrize("name,options", SDE_CASES, ids=lambda v: str(v))
def test_sde_samples_exact_marginal_on_flow_model(name, options):
    """From pure noise (t = 1, alpha = 0) on a velocity model, 100 steps, n = 2000: sliced Wasserstein
    to exact samples below 2.5 x the two-sample floor + 0.02 (the conformance suite's criterion,
    there on a VP model; the next test shows it rejects a VE-only noise term)."""
    gmm, sched, grid, x, exact, floor = _flow_case()
    den = gmm.model(sched, "velocity").denoiser()
    out = sz.sample(name, den, x, grid, generator=torch.Generator().manual_seed(1), **options).x
    assert sliced_wasserstein(out, exact) < 2.5 * floor + 0.02


def test_comfyui_ve_only_ancestral_noise_is_wrong_on_flow_models():
    """The check above separates a wrong noise term: ComfyUI's res_multistep_ancestral applies
    get_ancestral_step to the flow time t (as if it were a VE sigma); written out on the same flow
    model it misses the exact marginal by far more than res_multistep_ancestral does."""
    gmm, sched, grid, x, exact, floor = _flow_case()
    den = gmm.model(sched, "velocity").denoiser()
    g = torch.Generator().manual_seed(1)
    t = grid.clone()
    x_c = x.clone()
    for i in range(len(t) - 1):  # ComfyUI's Euler-ancestral part on CONST: to_d with sigma = t, VE split of t
        pred = den(x_c, t[i])
        down, up = ancestral_step(t[i], t[i + 1], 1.0)
        x_c = x_c + pred.lin(-1.0, 1.0) * (down - t[i]) + _noise(g, x_c) * up
    ours = sz.sample("res_multistep_ancestral", den, x, grid, generator=torch.Generator().manual_seed(1)).x
    assert sliced_wasserstein(x_c, exact) > 3 * sliced_wasserstein(ours, exact)


@pytest.mark.parametrize("name,options", SDE_CASES, ids=lambda v: str(v))
def test_stochastic_solvers_see_no_prediction_type(name, options):
    """Same exact model, same step noise: epsilon, x0, v and velocity models give equal samples (1e-7)."""
    gmm = GaussianMixture.default(dim=4, seed=0)
    sched = sz.get_schedule("flow")
    grid = sz.get_grid("flow_shift")(sched, 9, final="none")[1:]
    x = sz.initial_noise(sched, grid[0], (4, 4), sz.generators(range(4)), dtype=torch.float64)
    outs = [sz.sample(name, gmm.model(sched, p).denoiser(), x, grid, generator=torch.Generator().manual_seed(5), **options).x
            for p in ("epsilon", "x0", "v", "velocity")]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-7, rtol=1e-7)


# -- deterministic limits and UniC ----------------------------------------------------------------------
def _vp_case(steps=10):
    gmm = GaussianMixture.default(dim=4, seed=0)
    sched = sz.get_schedule("vp")
    grid = sz.get_grid("logsnr")(sched, steps)
    x = sz.initial_noise(sched, grid[0], (6, 4), sz.generators(range(6)), dtype=torch.float64)
    return gmm.model(sched, "v").denoiser(), x, grid


@pytest.mark.parametrize("a,b", [
    (("restart", {"repeats": 0}), ("heun", {})),
    (("res_multistep_ancestral", {"eta": 0.0}), ("res_multistep", {})),
    (("er_sde", {"eta": 0.0}), ("er_sde", {"noise_scaler": "ode"})),
    (("seeds_2", {"eta": 0.0, "r": 1.0, "solver_type": "phi_2"}), ("exp_heun_2_x0", {})),
    (("gradient_estimation", {"ge_gamma": 1.0}), ("euler", {})),
], ids=lambda v: f"{v[0]}{v[1]}")
def test_deterministic_limits(a, b):
    """eta = 0 / repeats = 0 / gamma = 1 reduce each method to the ODE solver it extends (1e-12)."""
    den, x, grid = _vp_case()
    out_a = sz.sample(a[0], den, x, grid, generator=torch.Generator().manual_seed(0), **a[1]).x
    out_b = sz.sample(b[0], den, x, grid, **b[1]).x
    assert (out_a - out_b).abs().max() < 1e-12


def test_restart_adds_its_evaluations_and_changes_the_sample():
    den, x, grid = _vp_case(20)
    heun = sz.sample("heun", den, x, grid)
    res = sz.sample("restart", den, x, grid, generator=sz.generators(range(6)), s_min=0.1, s_max=2.0, repeats=2)
    sve = [math.exp(-float(v)) for v in sz.get_schedule("vp").lam(grid[:-1])]
    j = min(range(len(sve)), key=lambda i: abs(math.log(sve[i] / 2.0)))
    k = min(range(len(sve)), key=lambda i: abs(math.log(sve[i] / 0.1)))
    assert res.nfe == heun.nfe + 2 * 2 * (k - j)
    assert not torch.allclose(res.x, heun.x)


def test_unic_on_dpmpp_2m_is_unipc_2():
    """UniP-2 (bh2) is DPM-Solver++(2M), so UniC on dpmpp_2m equals the existing UniPC-2 (1e-10)."""
    den, x, grid = _vp_case(15)
    a = sz.sample("unic", den, x, grid, base="dpmpp_2m", base_options={"lower_order_final": False}).x
    b = sz.sample("unipc", den, x, grid, order=2, variant="bh2", lower_order_final=False).x
    assert (a - b).abs().max() < 1e-10


def test_unic_corrects_and_costs_nothing():
    """Same NFE as its base, and closer to the exact ODE solution on a 10-step grid (error ratio < 0.75)."""
    from solverzoo.testing.verify import reference_solve

    den, x, grid = _vp_case(10)
    grid = sz.get_grid("logsnr")(den.schedule, 10, final="none")
    ref = reference_solve(den, x, float(grid[0]), float(grid[-1]))
    base = sz.sample("res_multistep", den, x, grid)
    corr = sz.sample("unic", den, x, grid)
    assert corr.nfe == base.nfe
    assert (corr.x - ref).norm() < 0.75 * (base.x - ref).norm()  # measured: 0.31 vs 0.57


@pytest.mark.parametrize("options,match", [
    ({"base": "unipc"}, "already has the UniC corrector"), ({"base": "euler"}, "no linear multistep plan"),
    ({"base": "er_sde"}, "injects noise"), ({"variant": "bh3"}, "variant"),
])
def test_unic_rejects_bases_it_cannot_correct(options, match):
    den, x, grid = _vp_case(5)
    with pytest.raises(ValueError, match=match):
        sz.sample("unic", den, x, grid, **options)


@pytest.mark.parametrize("name,options,match", [
    ("er_sde", {"noise_scaler": "vp"}, "noise_scaler"), ("er_sde", {"max_stage": 4}, "max_stage"),
    ("seeds_2", {"r": 0.0}, "r must"), ("seeds_3", {"r_1": 0.7, "r_2": 0.5}, "r_1"),
    ("restart", {"s_min": 2.0, "s_max": 1.0}, "s_min"), ("res_multistep_ancestral", {"eta": -1.0}, "eta"),
])
def test_bad_options_raise_clear_errors(name, options, match):
    den, x, grid = _vp_case(5)
    with pytest.raises(ValueError, match=match):
        sz.sample(name, den, x, grid, **options)
