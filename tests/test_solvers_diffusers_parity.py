"""solverzoo solvers against diffusers 0.42's own schedulers: same model, same grid, same noise.

Schedulers: ``SASolverScheduler`` (``sa_solver``), ``DPMSolverSinglestepScheduler``
(``dpmpp_singlestep``), ``KDPM2DiscreteScheduler`` (``dpm_2``), ``KDPM2AncestralDiscreteScheduler``
(``dpm_2_ancestral``) and ``DPMSolverSDEScheduler`` (``dpmpp_sde``). Each test runs diffusers' loop
(model output at each timestep, then ``scheduler.step``) and solverzoo's ``sample`` and prints the
largest absolute difference.

How the runs are matched:

* Model: the exact Gaussian-mixture noise prediction (nonlinear in x, so a wrong weight anywhere shows).
* Grid: diffusers builds its grid; solverzoo gets the same times as an ``explicit`` grid.
* Precision: float64 on both sides. SA-Solver and singlestep DPM-Solver (VP frame, timesteps are
  training indices) get their ``sigmas`` table replaced by float64 values of solverzoo's DDPM schedule
  at the same timesteps. The Karras-style schedulers (VE frame, fractional timesteps) run their own
  ``set_timesteps`` with ``np.float32`` read as float64 in their module (:class:`_NumpyF64`), so every
  table they derive (stage sigmas, ancestral splits) is float64; in float32 their ancestral split
  ``sqrt(s'^2 - s_up^2)`` loses two digits to cancellation on a 14.6 -> 0.03 step, which shows as 2e-2
  after a 2-step run. solverzoo runs on the ``edm`` schedule (alpha = 1, t = VE sigma) on exactly those
  sigmas, and the model is evaluated at the sigma the scheduler is at (read from the scheduler, not from
  the timestep it passes). Tolerance ``TIGHT``: atol 1e-10 on samples of scale 1-15, round-off only
  (measured: at most 7e-14); a wrong coefficient or stage time shows as 1e-3 or more.
* Noise. SA-Solver and KDPM2-ancestral draw through ``randn_tensor`` inside their modules; the test
  patches that name with a shim that hands out ``solverzoo.randn_like(x, g)`` from a generator seeded
  like solverzoo's, in solverzoo's order (SA-Solver: only on steps where tau > 0; diffusers draws on
  every step, and its draw is multiplied by 0 elsewhere, so zeros are handed out there).
  ``DPMSolverSDEScheduler`` draws from a torchsde Brownian tree (``BrownianTreeNoiseSampler``); the
  test replaces ``scheduler.noise_sampler`` by the same kind of shim, so both sides get the same
  standard normals. What is matched there is every coefficient and noise scale; the Brownian tree's
  correlation between the two draws of one step (their intervals overlap) is not reproduced by
  solverzoo, which draws them independently (k-diffusion's behaviour with any non-tree noise
  sampler), so with the default tree the two agree in distribution per draw, not sample by sample.
"""
import importlib
import math

import numpy as np
import pytest
import torch

import solverzoo as sz
from solverzoo.testbeds import GaussianMixture

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional test dependency")

TIGHT = dict(rtol=0, atol=1e-10)
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture.default(dim=6, seed=2)


@pytest.fixture(scope="module")
def ddpm():
    return sz.get_schedule("ddpm", **SD)


def _report(name, ours, ref, tol):
    diff = float((ours - ref).abs().max())
    print(f"{name}: max |solverzoo - diffusers| = {diff:.3e} (atol {tol['atol']:g})")
    torch.testing.assert_close(ours, ref, **tol)


def _x(seed=0, n=4):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _Shim:
    """Stands in for diffusers' ``randn_tensor``: the next draw of ``solverzoo.randn_like`` from ``g``
    where solverzoo draws (``draws[k]``), zeros where the draw is multiplied by 0 on both sides."""

    def __init__(self, seed, draws=None):
        self.g, self.draws, self.k = torch.Generator().manual_seed(seed), draws, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, **_):
        use = self.draws is None or self.draws[self.k]
        self.k += 1
        template = torch.empty(shape, dtype=dtype)
        return sz.randn_like(template, self.g) if use else torch.zeros(shape, dtype=dtype)


# -- VP frame: SASolverScheduler, DPMSolverSinglestepScheduler -----------------------------------------
def _vp_run(ds, ddpm, mix, x, final_t, **step_kw):
    """diffusers' loop with its sigma table replaced by float64 values of solverzoo's DDPM schedule."""
    times = [float(t) for t in ds.timesteps] + [final_t]
    a, s = ddpm.alpha_sigma(torch.tensor(times, dtype=torch.float64))
    ds.sigmas = s / a  # VE sigma (0 at t = -1, clean data)
    net = mix.model(ddpm, "epsilon").net
    out = x
    for t in ds.timesteps:
        eps = net(out, torch.full((out.shape[0],), float(t), dtype=out.dtype))
        out = ds.step(eps, t, out, **step_kw).prev_sample
    grid = sz.get_grid("explicit")(ddpm, len(times) - 1, times=tuple(times))
    return out, grid


@pytest.mark.parametrize("steps,pred,corr,lof", [(6, 2, 2, True), (9, 3, 4, True), (11, 1, 3, True),
                                                 (20, 2, 2, False), (18, 3, 4, False)])
@pytest.mark.parametrize("eta,window", [(0.0, (0.2, 0.8)), (1.0, (0.2, 0.8)), (0.7, (0.0, 1.0))])
def test_sa_solver_matches_diffusers(monkeypatch, mix, ddpm, steps, pred, corr, lof, eta, window):
    """SA-Solver (PEC) against ``SASolverScheduler(algorithm_type="data_prediction")`` with its
    ``tau_func`` set to solverzoo's rule (``eta`` where ``t / 999`` lies in ``window``) and
    ``simple_order_2=True`` (diffusers always uses the paper's simplified order-2 weights). diffusers
    lowers final orders on every grid, solverzoo on grids under 15 steps: short grids are compared
    with ``lower_order_final`` on, long ones with it off on both sides."""
    from diffusers.schedulers import scheduling_sasolver

    lo, hi = window
    tau_func = lambda t: eta if lo <= float(t) / 999 <= hi else 0.0  # noqa: E731
    ds = diffusers.SASolverScheduler(**SD, predictor_order=pred, corrector_order=corr, tau_func=tau_func,
                                     lower_order_final=lof)
    ds.set_timesteps(steps)
    draws = [tau_func(t) > 0 for t in ds.timesteps]
    monkeypatch.setattr(scheduling_sasolver, "randn_tensor", _Shim(11, draws))
    x = _x(1)
    ref, grid = _vp_run(ds, ddpm, mix, x, 0.0)  # SA-Solver ends at training index 0 (sigma > 0)
    ours = sz.sample("sa_solver", mix.model(ddpm, "epsilon").denoiser(), x, grid, generator=torch.Generator().manual_seed(11),
                     predictor_order=pred, corrector_order=corr, eta=eta, tau_window=window, simple_order_2=True,
                     lower_order_final=lof).x
    _report(f"sa_solver steps={steps} p={pred} c={corr} eta={eta}", ours, ref, TIGHT)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps,final", [(7, "zero"), (12, "zero"), (10, "sigma_min")])
def test_dpmpp_singlestep_matches_diffusers(mix, ddpm, order, solver_type, steps, final):
    ds = diffusers.DPMSolverSinglestepScheduler(**SD, solver_order=order, solver_type=solver_type,
                                                final_sigmas_type=final)
    ds.set_timesteps(steps)
    x = _x(2)
    ref, grid = _vp_run(ds, ddpm, mix, x, -1.0 if final == "zero" else 0.0)
    # diffusers defaults to lower_order_final=False and switches it on where the blocks do not fit
    ours = sz.sample("dpmpp_singlestep", mix.model(ddpm, "epsilon").denoiser(), x, grid, order=order,
                     solver_type=solver_type, lower_order_final=ds.config.lower_order_final or steps % order != 0).x
    _report(f"dpmpp_singlestep order={order} {solver_type} steps={steps} final={final}", ours, ref, TIGHT)


def test_dpmpp_singlestep_whole_blocks_without_lower_order_final(mix, ddpm):
    ds = diffusers.DPMSolverSinglestepScheduler(**SD, solver_order=3, lower_order_final=False,
                                                final_sigmas_type="sigma_min")
    ds.set_timesteps(12)
    x = _x(3)
    ref, grid = _vp_run(ds, ddpm, mix, x, 0.0)
    ours = sz.sample("dpmpp_singlestep", mix.model(ddpm, "epsilon").denoiser(), x, grid, order=3,
                     lower_order_final=False).x
    _report("dpmpp_singlestep order=3 whole blocks", ours, ref, TIGHT)
    with pytest.raises(ValueError, match="divisible by order"):
        sz.sample("dpmpp_singlestep", mix.model(ddpm, "epsilon").denoiser(), x, grid[:-1], order=3,
                  lower_order_final=False)


# -- VE frame: KDPM2, KDPM2-ancestral, DPMSolverSDE ----------------------------------------------------
class _VEModel:
    """The exact noise prediction at the VE sigma the scheduler is at (diffusers scales the input by
    ``1 / sqrt(sigma^2 + 1)``; this undoes it)."""

    def __init__(self, mix, sigma_of):
        self.edm = sz.get_schedule("edm")
        self.net = mix.model(self.edm, "epsilon").net
        self.sigma_of = sigma_of

    def __call__(self, x_in):
        s = float(self.sigma_of())
        return self.net(x_in * math.sqrt(s * s + 1.0), torch.full((x_in.shape[0],), s, dtype=x_in.dtype))


class _NumpyF64:
    """numpy as seen by a diffusers scheduler module, with ``np.float32`` meaning float64: its own
    ``set_timesteps`` then builds every table (sigmas, stage sigmas, ancestral splits) in float64."""

    float32 = np.float64

    def __getattr__(self, name):
        return getattr(np, name)


def _float64_tables(monkeypatch, module_name):
    module = importlib.import_module(f"diffusers.schedulers.{module_name}")
    monkeypatch.setattr(module, "np", _NumpyF64())
    return module


def _ve_run(ds, model, x):
    out = x
    for t in ds.timesteps:
        eps = model(ds.scale_model_input(out, t))
        out = ds.step(eps, t, out).prev_sample
    return out


def _ve_grid(ds):
    """The distinct VE sigmas of the scheduler's interleaved table: solverzoo's ``edm`` grid."""
    times = list(dict.fromkeys(float(s) for s in ds.sigmas))  # the table repeats each interior sigma
    return sz.get_grid("explicit")(sz.get_schedule("edm"), len(times) - 1, times=tuple(times))


@pytest.mark.parametrize("steps", [2, 5, 12])
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_dpm_2_matches_kdpm2(monkeypatch, mix, steps, spacing):
    _float64_tables(monkeypatch, "scheduling_k_dpm_2_discrete")
    ds = diffusers.KDPM2DiscreteScheduler(**SD, timestep_spacing=spacing)
    ds.set_timesteps(steps)
    grid = _ve_grid(ds)
    model = _VEModel(mix, lambda: (ds.sigmas[ds.step_index] if ds.state_in_first_order
                                   else ds.sigmas_interpol[ds.step_index]))
    x = _x(4) * float(grid[0])
    ref = _ve_run(ds, model, x)
    ours = sz.sample("dpm_2", mix.model(model.edm, "epsilon").denoiser(), x, grid).x
    _report(f"dpm_2 vs KDPM2 steps={steps} {spacing}", ours, ref, TIGHT)


@pytest.mark.parametrize("steps", [2, 6, 11])
def test_dpm_2_ancestral_matches_kdpm2_ancestral(monkeypatch, mix, steps):
    mod = _float64_tables(monkeypatch, "scheduling_k_dpm_2_ancestral_discrete")
    monkeypatch.setattr(mod, "randn_tensor", _Shim(5))
    ds = diffusers.KDPM2AncestralDiscreteScheduler(**SD)
    ds.set_timesteps(steps)
    grid = _ve_grid(ds)
    model = _VEModel(mix, lambda: (ds.sigmas[ds.step_index] if ds.state_in_first_order
                                   else ds.sigmas_interpol[ds.step_index - 1]))
    x = _x(5) * float(grid[0])
    ref = _ve_run(ds, model, x)
    ours = sz.sample("dpm_2_ancestral", mix.model(model.edm, "epsilon").denoiser(), x, grid,
                     generator=torch.Generator().manual_seed(5)).x
    _report(f"dpm_2_ancestral vs KDPM2Ancestral steps={steps}", ours, ref, TIGHT)


@pytest.mark.parametrize("steps", [1, 4, 9])
@pytest.mark.parametrize("s_noise", [0.0, 1.0])
def test_dpmpp_sde_matches_dpmsolver_sde(monkeypatch, mix, steps, s_noise):
    """``s_noise=0``: the deterministic coefficients alone; ``s_noise=1``: the same standard normals on
    both sides in place of diffusers' Brownian tree (see the module docstring)."""
    _float64_tables(monkeypatch, "scheduling_dpmsolver_sde")
    ds = diffusers.DPMSolverSDEScheduler(**SD)
    ds.set_timesteps(steps)
    g = torch.Generator().manual_seed(6)
    x = _x(6) * float(ds.sigmas[0])
    ds.noise_sampler = lambda sigma, sigma_next: sz.randn_like(x, g)
    grid = _ve_grid(ds)
    model = _VEModel(mix, lambda: ds.sigmas[ds.step_index] if ds.state_in_first_order else ds.mid_point_sigma)
    out = x
    for t in ds.timesteps:
        out = ds.step(model(ds.scale_model_input(out, t)), t, out, s_noise=s_noise).prev_sample
    ours = sz.sample("dpmpp_sde", mix.model(model.edm, "epsilon").denoiser(), x, grid,
                     generator=torch.Generator().manual_seed(6), s_noise=s_noise).x
    _report(f"dpmpp_sde vs DPMSolverSDE steps={steps} s_noise={s_noise}", ours, out, TIGHT)


# -- SA-Solver beyond diffusers: its ODE order, every parametrisation, flow noise terms ------------------
@pytest.mark.parametrize("name,options,nfes", [
    ("sa_solver", {}, None),  # predictor 3, corrector 4: declared 4, on its verify_nfes 48-768
    ("sa_solver_pece", {}, None),  # the same with PECE, on its verify_nfes 128-2048
    ("sa_solver", {"predictor_order": 2, "corrector_order": 3}, (16, 32, 64, 128, 256)),
    ("sa_solver_pece", {"predictor_order": 1, "corrector_order": 2}, (16, 32, 64, 128, 256)),
])
def test_sa_solver_at_tau_zero_has_its_order(name, options, nfes):
    """With ``eta = 0`` SA-Solver is a deterministic multistep method of order
    ``min(predictor_order + 1, corrector_order)``: measured against DOP853 on the exact mixture,
    within 0.35 of it."""
    from solverzoo.testing.verify import verify

    rep = verify(name, n=64, nfes=nfes, options={"eta": 0.0, **options})
    print(f"{name} {options}: declared {rep.declared_order}, empirical {rep.empirical_order:.2f} on "
          f"{[r.nfe for r in rep.rows]}")
    assert not rep.stochastic and abs(rep.empirical_order - rep.declared_order) < 0.35


@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_pece"])
@pytest.mark.parametrize("schedule,grid_name", [("vp", "logsnr"), ("flow", "flow_shift"), ("edm", "karras")])
def test_sa_solver_same_samples_on_every_parametrisation(mix, name, schedule, grid_name):
    """An epsilon, x0, v and velocity model of the same data give the same samples from the same noise
    (tau = 1 on the whole grid, so every step injects noise)."""
    sched = sz.get_schedule(schedule)
    grid = sz.get_grid(grid_name)(sched, 9, final="none")[(1 if schedule == "flow" else 0):]
    x = sz.initial_noise(sched, grid[0], (4, 6), sz.generators(range(4)), dtype=torch.float64)
    outs = [sz.sample(name, mix.model(sched, p).denoiser(), x, grid, generator=sz.generators(range(10, 14)),
                      tau_window=(0.0, 1.0)).x for p in ("epsilon", "x0", "v", "velocity")]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-7, atol=1e-7)


def test_sa_solver_noise_terms_on_a_flow_model(mix):
    """From pure noise of a rectified-flow model (alpha = 0) the first step is the exact ancestral step
    ``x1 = (1 - t1) x0 + t1 z``; after it, with an exact model, a step keeps the forward marginal's
    noise level: from ``x = (1 - t) x0 + t e`` the predictor gives ``(1 - t') x0 + t' (c e + s z)`` with
    ``c^2 + s^2 = 1`` (checked on a one-point mixture, where the model is exact and affine)."""
    sched = sz.get_schedule("flow")
    grid = sz.get_grid("flow_shift")(sched, 6)
    x = sz.initial_noise(sched, grid[0], (3, 6), sz.generators(range(3)), dtype=torch.float64)
    den = mix.model(sched, "velocity").denoiser()
    seen = []
    sz.sample("sa_solver", den, x, grid, generator=torch.Generator().manual_seed(3), tau_window=(0.0, 1.0),
              callback=lambda d: seen.append(d["x"]))
    z = sz.randn_like(x, torch.Generator().manual_seed(3))
    t1 = float(grid[1])
    torch.testing.assert_close(seen[0], (1 - t1) * den(x, float(grid[0])).x0 + t1 * z, rtol=1e-12, atol=1e-12)
    # a single clean point x0 = m: every prediction is exact, so the state stays (1 - t) m + t * (unit noise)
    point = GaussianMixture(means=mix.means[:1], stds=torch.full((1,), 1e-9, dtype=torch.float64),
                            weights=torch.ones(1, dtype=torch.float64), labels=torch.zeros(1, dtype=torch.long))
    dpoint = point.model(sched, "velocity").denoiser()
    g = sz.get_grid("flow_shift")(sched, 12, final="none")[1:]
    e = torch.randn(4000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = point.means[0]
    out = sz.sample("sa_solver", dpoint, (1 - g[0]) * m + g[0] * e, g, generator=torch.Generator().manual_seed(1),
                    tau_window=(0.0, 1.0)).x
    t_end = float(g[-1])
    noise = (out - (1 - t_end) * m) / t_end
    assert abs(float(noise.std()) - 1.0) < 0.02 and abs(float(noise.mean())) < 0.02
