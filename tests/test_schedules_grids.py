"""Schedules and grids against closed forms."""
import math

import pytest
import torch

import solverzoo as sz
from solverzoo.prediction import Prediction, from_output, to_output

SCHEDULES = [("ddpm", {}), ("ddpm", {"beta_schedule": "cosine"}), ("ddpm", {"rescale_zero_terminal_snr": True}),
             ("vp", {}), ("edm", {}), ("flow", {}), ("flow", {"shift": 3.0})]


def _ts(s, n=37):
    lo = s.t_min if s.name != "ddpm" else 0.0
    return torch.linspace(lo, s.t_max, n, dtype=torch.float64)[1:-1]


@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_lambda_inverse_and_derivatives(name, kw):
    s = sz.get_schedule(name, **kw)
    t = _ts(s) + (0.37 if name == "ddpm" else 0.0)  # fractional discrete times too
    t = t[t < s.t_max]
    torch.testing.assert_close(s.t_of_lam(s.lam(t)), t, atol=1e-7 * max(1.0, s.t_max), rtol=1e-7)
    h = 1e-6 * max(1.0, s.t_max)
    a_dot, s_dot = s.alpha_sigma_dot(t)
    fd_a = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    fd_s = (s.sigma(t + h) - s.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(a_dot, fd_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s_dot, fd_s, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,kw", [x for x in SCHEDULES if x[0] in ("ddpm", "vp")])
def test_vp_is_variance_preserving(name, kw):
    s = sz.get_schedule(name, **kw)
    a, sg = s.alpha_sigma(_ts(s))
    torch.testing.assert_close(a ** 2 + sg ** 2, torch.ones_like(a))


def test_clean_endpoints():
    for name, kw in SCHEDULES:
        s = sz.get_schedule(name, **kw)
        a, sg = s.alpha_sigma(torch.tensor(s.t_zero, dtype=torch.float64))
        assert float(sg) == 0.0 and float(a) == 1.0
    zt = sz.get_schedule("ddpm", rescale_zero_terminal_snr=True)
    assert float(zt.alpha(torch.tensor(999.0, dtype=torch.float64))) < 1e-12


@pytest.mark.parametrize("kind", ["epsilon", "x0", "v", "velocity"])
def test_prediction_roundtrip(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    s = sz.get_schedule("flow", shift=2.0)
    t = torch.tensor(0.35, dtype=torch.float64)
    a, sg = s.alpha_sigma(t)
    ad, sd = s.alpha_sigma_dot(t)
    x = a * x0 + sg * eps
    out = to_output(kind, Prediction(x0, eps), a, sg, ad, sd)
    back = from_output(kind, out, x, a, sg, ad, sd)
    torch.testing.assert_close(back.x0, x0)
    torch.testing.assert_close(back.eps, eps)


def test_karras_grid_matches_the_formula():
    s = sz.get_schedule("edm")
    g = sz.get_grid("karras")(s, 5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    want = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(g[:-1], want)
    assert g[-1] == 0.0


def test_logsnr_grid_is_uniform_in_lambda():
    s = sz.get_schedule("vp")
    g = sz.get_grid("logsnr")(s, 9, final="none")
    d = torch.diff(s.lam(g))
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])), atol=1e-8, rtol=0)


def test_flow_shift_grid():
    s = sz.get_schedule("flow")
    g = sz.get_grid("flow_shift")(s, 4, shift=3.0)
    u = torch.linspace(1, 0, 5, dtype=torch.float64)
    torch.testing.assert_close(g, 3 * u / (1 + 2 * u))
    none = sz.get_grid("flow_shift")(s, 4, shift=3.0, final="none")
    assert math.isclose(float(none[-1]), s.t_min) and float(none[0]) == 1.0
