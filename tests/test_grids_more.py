"""The ComfyUI / k-diffusion grids against their peers, in float64, on every schedule.

Peers: k-diffusion 0.1.1's ``get_sigmas_*`` (its functions are read from the installed
``k_diffusion/sampling.py`` without importing the package, whose ``__init__`` needs torchvision and
scikit-image; if it is not installed, the published formula is written out below), diffusers'
schedulers (``_convert_to_karras / _exponential / _beta`` of ``EulerDiscreteScheduler``, its AYS
tables) and ComfyUI's schedulers (not importable: their published formulas are written out below,
on ComfyUI's own sigma table). Tolerance: relative 1e-12 on sigmas (float64 round trip sigma -> t ->
sigma through the schedule's own inverse), unless stated.
"""
import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import solverzoo as sz
from solverzoo.timegrid import GridError, grid_sigma, is_flow_path

RTOL = 1e-12
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _schedules():
    return {"vp": sz.get_schedule("vp"), "sd": sz.get_schedule("ddpm", **SD), "ddpm": sz.get_schedule("ddpm"),
            "edm": sz.get_schedule("edm"), "flow": sz.get_schedule("flow"), "flow3": sz.get_schedule("flow", shift=3.0)}


def _kdiff():
    """k-diffusion 0.1.1's schedule functions, executed from its source file in float64."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = (Path(list(spec.submodule_search_locations)[0]) / "sampling.py").read_text()
    tree = ast.parse(src)
    keep = [n for n in tree.body
            if isinstance(n, ast.FunctionDef) and (n.name.startswith("get_sigmas_") or n.name == "append_zero")]
    ns = {"math": math, "torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "k_diffusion/sampling.py", "exec"), ns)
    return ns


def _kdiff_formulas():
    """The same formulas written out from the k-diffusion paper code, when the package is absent."""
    z = lambda s: torch.cat([s, s.new_zeros(1)])  # noqa: E731
    lg = math.log
    return {
        "get_sigmas_exponential": lambda n, lo, hi: z(torch.linspace(lg(hi), lg(lo), n).exp()),
        "get_sigmas_polyexponential": lambda n, lo, hi, rho=1.0: z(
            torch.exp(torch.linspace(1, 0, n) ** rho * (lg(hi) - lg(lo)) + lg(lo))),
        "get_sigmas_vp": lambda n, beta_d=19.9, beta_min=0.1, eps_s=1e-3: z(torch.sqrt(torch.exp(
            beta_d * torch.linspace(1, eps_s, n) ** 2 / 2 + beta_min * torch.linspace(1, eps_s, n)) - 1)),
        "get_sigmas_karras": lambda n, lo, hi, rho=7.0: z(
            (hi ** (1 / rho) + torch.linspace(0, 1, n) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho),
    }


@pytest.fixture(scope="module")
def kd():
    ns = _kdiff() or _kdiff_formulas()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion builds its ramps in the default dtype
    yield ns
    torch.set_default_dtype(old)


def _space(s):
    return "flow" if is_flow_path(s) else "ve"


def _range(s, space):
    lo, hi = (float(grid_sigma(s, t, space)) for t in (s.t_min, s.t_max))
    return lo, min(hi, 1e4)


def _close(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)


@pytest.mark.parametrize("sched", ["vp", "sd", "edm", "flow", "flow3"])
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_kdiffusion_sigma_grids(kd, sched, steps):
    s = _schedules()[sched]
    sp = _space(s)
    lo, hi = _range(s, sp)
    cases = [("exponential", {}, kd["get_sigmas_exponential"](steps, lo, hi)),
             ("polyexponential", {"rho": 2.0}, kd["get_sigmas_polyexponential"](steps, lo, hi, 2.0)),
             ("karras", {"space": sp}, kd["get_sigmas_karras"](steps, lo, hi, 7.0))]
    for name, opts, ref in cases:
        g = sz.get_grid(name)(s, steps, **opts)
        _close(grid_sigma(s, g, sp), ref)


@pytest.mark.parametrize("steps", [1, 10, 33])
def test_vp_grid_is_kdiffusion_get_sigmas_vp(kd, steps):
    for name in ("vp", "ddpm", "flow"):  # schedules whose VE sigma_max exceeds the VP's 152.2
        s = _schedules()[name]
        _close(grid_sigma(s, sz.get_grid("vp")(s, steps), "ve"), kd["get_sigmas_vp"](steps))
    # on the zoo's own continuous VP (beta_max - beta_min = 19.9) the times are exactly linspace(1, 1e-3)
    g = sz.get_grid("vp")(sz.get_schedule("vp"), steps)
    np.testing.assert_allclose(g[:-1].numpy(), np.linspace(1, 1e-3, steps), rtol=1e-12)
    # EDM's range ends at sigma 80: the VP ramp starts where its sigma reaches 80
    edm = sz.get_schedule("edm")
    assert float(sz.get_grid("vp")(edm, steps)[0]) == 80.0


def test_exponential_is_logsnr_in_ve_space():
    for s in _schedules().values():
        a = sz.get_grid("exponential")(s, 9, space="ve")
        b = sz.get_grid("logsnr")(s, 9)
        np.testing.assert_allclose(grid_sigma(s, a, "ve").numpy(), grid_sigma(s, b, "ve").numpy(), rtol=1e-12)


# -- diffusers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_diffusers_karras_exponential_beta_sigmas(steps):
    from diffusers import EulerDiscreteScheduler

    s = _schedules()["sd"]
    lo, hi = _range(s, "ve")
    ds = EulerDiscreteScheduler(num_train_timesteps=1000, **SD)
    inp = torch.tensor([hi, lo], dtype=torch.float64)  # diffusers reads sigma_max = in[0], sigma_min = in[-1]
    for name, opts, ref in (("karras", {}, ds._convert_to_karras(inp, steps)),
                            ("exponential", {}, ds._convert_to_exponential(inp, steps)),
                            ("beta", {"variant": "diffusers"}, ds._convert_to_beta(inp, steps))):
        g = sz.get_grid(name)(s, steps, **opts)
        _close(grid_sigma(s, g, "ve")[:-1], ref)
        assert float(g[-1]) == s.t_zero
    # end to end through set_timesteps, on diffusers' own float32 alphas_cumprod (it keeps float32 sigmas:
    # relative 1e-6)
    for flag, name, opts in (("use_karras_sigmas", "karras", {}), ("use_exponential_sigmas", "exponential", {}),
                             ("use_beta_sigmas", "beta", {"variant": "diffusers"})):
        d = EulerDiscreteScheduler(num_train_timesteps=1000, **SD, **{flag: True})
        d.set_timesteps(steps)
        s32 = sz.get_schedule("ddpm", alphas_cumprod=d.alphas_cumprod.double())
        ours = grid_sigma(s32, sz.get_grid(name)(s32, steps, **opts), "ve").numpy()
        np.testing.assert_allclose(ours[:-1], d.sigmas.double().numpy()[:-1], rtol=1e-6)


def test_ays_tables_match_diffusers_and_interpolate_log_linearly():
    from diffusers.schedulers import AysSchedules

    s = _schedules()["sd"]
    for model, key in (("sd15", "StableDiffusionSigmas"), ("sdxl", "StableDiffusionXLSigmas")):
        ours = grid_sigma(s, sz.get_grid("ays")(s, 10, model=model), "ve").numpy()
        # diffusers (and NVIDIA's notes) list the levels to 3 decimals, up to 1.4% off ComfyUI's 10-digit
        # table (SDXL 0.113 vs 0.1114)
        np.testing.assert_allclose(ours, AysSchedules[key], rtol=1.5e-2, atol=1e-12)
    svd = np.array(AysSchedules["StableDiffusionVideoSigmas"])
    ve = sz.get_schedule("ddpm", beta_schedule="linear", beta_start=1e-5, beta_end=0.1)  # a range above 700
    np.testing.assert_allclose(grid_sigma(ve, sz.get_grid("ays")(ve, 10, model="svd"), "ve").numpy(), svd, rtol=2e-6)
    # ComfyUI / NVIDIA: interpolate log sigma linearly over [0, 1], then set the last level to 0
    table = np.array([14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                      0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582])
    for steps in (4, 15, 30):
        x = np.linspace(0, 1, steps + 1)
        ref = np.exp(np.interp(x, np.linspace(0, 1, 11), np.log(table[::-1])))[::-1].copy()
        ref[-1] = 0
        for name in ("sd", "vp", "flow"):
            sc = _schedules()[name]
            ours = grid_sigma(sc, sz.get_grid("ays")(sc, steps), "ve").numpy()
            _close(ours[1:], ref[1:])
            # the table's top is SD's sigma_max to 10 digits: a level within 1e-6 of the schedule's top
            # starts at t_max exactly (here 2.3e-12 relative above the table)
            assert abs(ours[0] / ref[0] - 1) < 1e-9
    with pytest.raises(GridError, match="above this schedule's sigma_max"):
        sz.get_grid("ays")(sz.get_schedule("edm"), 10, model="svd")
    with pytest.raises(GridError, match="model must be one of"):
        sz.get_grid("ays")(s, 10, model="sd3")


# -- ComfyUI (formulas of comfy/samplers.py on ComfyUI's own sigma table) -----------------------------
def _comfy_table(sched):
    """ComfyUI's model_sampling.sigmas: VE sigmas of the discrete table, or flow sigmas at (i + 1) / 1000."""
    if sched.discrete_steps:
        ab = sched.alphas_cumprod.numpy()
        return np.sqrt((1 - ab) / ab)
    shift = sched.shift
    t = np.arange(1, 1001) / 1000
    return shift * t / (1 + (shift - 1) * t)


def _comfy(name, sched, steps):
    sig = _comfy_table(sched)
    T = len(sig)
    if name == "simple":
        ss = T / steps
        return [float(sig[-(1 + int(x * ss))]) for x in range(steps)] + [0.0]
    if name == "ddim_uniform":
        out, x, ss = [0.0], 1, max(T // steps, 1)
        while x < T:
            out.append(float(sig[x]))
            x += ss
        return out[::-1]
    if name == "beta":
        from scipy.stats import beta

        ts = np.rint(beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * (T - 1))
        return [float(sig[int(t)]) for t in ts] + [0.0]
    lo, hi = float(sig[0]), float(sig[-1])
    if name == "kl_optimal":
        w = np.arange(steps) / (steps - 1)
        return list(np.tan(w * math.atan(lo) + (1 - w) * math.atan(hi))) + [0.0]
    if name == "laplace":
        x = np.linspace(0, 1, steps)
        lmb = -0.5 * np.sign(0.5 - x) * np.log(1 - 2 * np.abs(0.5 - x) + 1e-5)
        return list(np.clip(np.exp(lmb), lo, hi)) + [0.0]
    if name == "linear_quadratic":
        ls, thr = steps // 2, 0.025
        diff = ls - thr * steps
        qs = steps - ls
        qc, lc = diff / (ls * qs ** 2), thr / ls - 2 * diff / qs ** 2
        raw = [i * thr / ls for i in range(ls)] + [qc * i ** 2 + lc * i + qc * ls ** 2 for i in range(ls, steps)] + [1.0]
        return [(1 - v) * hi for v in raw]
    raise KeyError(name)


@pytest.mark.parametrize("name", ["simple", "beta", "kl_optimal", "linear_quadratic", "ddim_uniform"])
@pytest.mark.parametrize("sched", ["sd", "ddpm", "flow", "flow3"])
@pytest.mark.parametrize("steps", [4, 10, 20])
def test_comfyui_schedulers(name, sched, steps):
    s = _schedules()[sched]
    opts = {"space": _space(s)} if name == "linear_quadratic" else {}  # ComfyUI: VE sigma on VP models
    ours = grid_sigma(s, sz.get_grid(name)(s, steps, **opts), _space(s)).numpy()
    _close(ours, _comfy(name, s, steps))


def test_comfyui_laplace_in_ve_space():
    s = _schedules()["sd"]
    for steps in (5, 12):
        _close(grid_sigma(s, sz.get_grid("laplace")(s, steps), "ve").numpy(), _comfy("laplace", s, steps))


def test_ddim_uniform_keeps_the_step_count_where_comfyui_adds_one():
    s = _schedules()["sd"]
    ref = _comfy("ddim_uniform", s, 7)  # stride 142 from index 1: ComfyUI returns 8 steps for 7
    ours = grid_sigma(s, sz.get_grid("ddim_uniform")(s, 7), "ve").numpy()
    assert len(ref) == 9 and len(ours) == 8
    _close(ours, ref[1:])


@pytest.mark.parametrize("sched", ["sd", "flow"])
@pytest.mark.parametrize("steps", [3, 10, 17])
def test_sgm_uniform_is_uniform_in_the_training_index(sched, steps):
    # ComfyUI: timesteps linspace(timestep(sigma_max), timestep(sigma_min), steps + 1)[:-1], i.e. indices
    # T - 1 .. 0 on a discrete table and t = 1 .. 1e-3 on an unshifted flow (its timestep(sigma) = 1000 sigma).
    s = _schedules()[sched]
    g = sz.get_grid("sgm_uniform")(s, steps)
    if s.discrete_steps:
        np.testing.assert_allclose(g[:-1].numpy(), np.linspace(999, 0, steps + 1)[:-1], rtol=0, atol=1e-12)
        on_table = g[:-1][g[:-1] == g[:-1].round()]  # at integer indices the sigmas are the table's
        _close(grid_sigma(s, on_table, "ve").numpy(), _comfy_table(s)[on_table.long().numpy()])
    else:
        np.testing.assert_allclose(g[:-1].numpy(), np.linspace(1000, 1, steps + 1)[:-1] / 1000, rtol=1e-13)
    assert float(g[-1]) == s.t_zero


def test_flow_space_maps_through_the_schedules_own_inverse():
    # a flow sigma u is the schedule's sigma on a flow path, whatever the shift; on a VP path it is
    # sigma / (alpha + sigma): both round-trip through t_of_lam
    for name, s in _schedules().items():
        g = sz.get_grid("kl_optimal")(s, 8, space="flow")
        a, sg = s.alpha_sigma(g)
        u = grid_sigma(s, g, "flow")
        np.testing.assert_allclose(u.numpy(), (sg / (a + sg)).numpy(), rtol=1e-15)
        if name.startswith("flow"):
            np.testing.assert_allclose(u.numpy(), sg.numpy(), rtol=1e-15)  # u is the flow sigma itself
    f3 = _schedules()["flow3"]
    u = sz.get_grid("exponential")(f3, 6)  # auto: flow space on a flow path
    lo = math.log(f3.sigma(torch.tensor(1e-3)).item())
    np.testing.assert_allclose(f3.sigma(u)[:-1].numpy(), np.exp(np.linspace(0, lo, 6)), rtol=1e-12)


def test_option_errors_are_clear():
    s = _schedules()["vp"]
    with pytest.raises(GridError, match="space must be one of"):
        sz.get_grid("exponential")(s, 4, space="log")
    with pytest.raises(GridError, match="linear_steps must be in"):
        sz.get_grid("linear_quadratic")(s, 4, linear_steps=4)
    with pytest.raises(GridError, match="variant must be"):
        sz.get_grid("beta")(s, 4, variant="x")
    with pytest.raises(GridError, match="repeat a timestep"):
        sz.get_grid("simple")(sz.get_schedule("ddpm", num_train_timesteps=10), 20)
    with pytest.raises(GridError, match="do not fit"):
        sz.get_grid("ddim_uniform")(sz.get_schedule("ddpm", num_train_timesteps=10), 11)
    # at steps = T the stride-1 indices start at 0; beta falls back to fractional positions, not fewer steps
    ten = sz.get_schedule("ddpm", num_train_timesteps=10)
    assert sz.get_grid("ddim_uniform")(ten, 10)[:-1].tolist() == list(range(9, -1, -1))
    b = sz.get_grid("beta")(ten, 9)
    assert len(b) == 10 and (b[:-1] != b[:-1].round()).any()
    with pytest.raises(GridError, match="need 0 < sigma_min < sigma_max"):
        sz.get_grid("kl_optimal")(s, 4, sigma_min=2.0, sigma_max=1.0)


def test_at_least_eighteen_grids_registered():
    names = set(sz.registry.names("grid"))
    new = {"exponential", "polyexponential", "vp", "beta", "kl_optimal", "linear_quadratic", "simple", "sgm_uniform",
           "ddim_uniform", "laplace", "ays"}
    assert new <= names and len(names) >= 18, sorted(names)
