"""Injected noise and the public sampling path do not depend on torch's default dtype, and the
non-finite watch names the first bad denoiser call without reading the device inside the loop."""
from contextlib import contextmanager

import pytest
import torch

import solverzoo as sz
from solverzoo.testbeds import GaussianMixture

SEEDS = [3, 1, 4]
SHAPE = (3, 2, 4, 4)


@contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _noise():
    return {
        "list": sz.randn(SHAPE, sz.generators(SEEDS)),
        "single": sz.randn(SHAPE, torch.Generator().manual_seed(7)),
        "like64": sz.randn_like(torch.zeros(SHAPE, dtype=torch.float64), sz.generators(SEEDS)),
        "initial": sz.initial_noise(sz.get_schedule("edm"), 80.0, SHAPE, sz.generators(SEEDS)),
    }


def test_noise_is_independent_of_the_default_dtype():
    with default_dtype(torch.float32):
        a = _noise()
    with default_dtype(torch.float64):
        b = _noise()
    assert torch.get_default_dtype() == torch.float32
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
    assert a["list"].dtype == torch.float32 and a["like64"].dtype == torch.float64


def test_noise_equals_an_independent_float32_draw():
    """Row i is generator i's float32 draw, whatever the default dtype (expectation built by hand)."""
    expect = torch.stack([torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(s), dtype=torch.float32)
                          for s in SEEDS])
    single = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    for dtype in (torch.float32, torch.float64):
        with default_dtype(dtype):
            assert torch.equal(sz.randn(SHAPE, sz.generators(SEEDS)), expect)
            assert torch.equal(sz.randn(SHAPE, torch.Generator().manual_seed(7)), single)
            as64 = sz.randn(SHAPE, sz.generators(SEEDS), dtype=torch.float64)
            assert as64.dtype == torch.float64 and torch.equal(as64, expect.double())


def _sample(solver, steps=6):
    gmm = GaussianMixture.default(dim=32, components=5, classes=5, seed=1)  # rows of >= 16 values: torch's
    # CPU randn takes its vectorised path there, where float32 and float64 draws differ beyond rounding
    sched = sz.get_schedule("vp")
    den = gmm.model(sched).denoiser()
    grid = sz.get_grid("logsnr")(sched, steps)
    x = sz.initial_noise(sched, float(grid[0]), (3, 32), sz.generators(SEEDS))
    return sz.sample(solver, den, x, grid, generator=sz.generators([s + 100 for s in SEEDS])).x


@pytest.mark.parametrize("solver", ["ddim", "euler", "ddpm", "euler_ancestral"])
def test_sample_is_independent_of_the_default_dtype(solver):
    with default_dtype(torch.float32):
        a = _sample(solver)
    with default_dtype(torch.float64):
        b = _sample(solver)
    assert a.dtype == b.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_the_watch_does_not_read_the_device_inside_the_loop(gmm, monkeypatch):
    """No ``bool``/``int``/``float``/``item`` on a state-dtype tensor while the loop runs (the
    float64 CPU grid is host data); one read after it."""
    sched = sz.get_schedule("vp")
    den = gmm.model(sched).denoiser()
    grid = sz.get_grid("logsnr")(sched, 12)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    reads = []
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _o=orig, _n=name):
            if self.dtype == torch.float32 or self.dtype == torch.bool:
                reads.append(_n)
            return _o(self, *a)
        monkeypatch.setattr(torch.Tensor, name, spy)
    r = sz.sample("dpmpp_2m", den, x, grid)
    assert r.denoiser_calls == 12
    assert reads == ["tolist"], reads


@pytest.mark.parametrize("where", ["out", "x0_coefficient", "start"])
def test_the_first_bad_call_is_named(gmm, where):
    sched = sz.get_schedule("vp")
    inner = gmm.model(sched)
    grid = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    if where == "out":
        def net(x, t, **c):
            return torch.where(t[:, None] < 0.45, torch.full_like(x, float("inf")), inner.net(x, t))
        den, match = sz.Model(net, "epsilon", sched).denoiser(), r"call 6 \(t=0\.4, grid step 6 of 10\)"
    elif where == "x0_coefficient":  # alpha = 0 at t = 1 on a flow schedule: an epsilon model cannot give x0 there
        flow = sz.get_schedule("flow")
        den, match = sz.Model(lambda x, t, **c: x, "epsilon", flow).denoiser(), r"call 0 \(t=1, grid step 0 of 10\)"
    else:
        den, match = inner.denoiser(), r"call 0 \(t=1, grid step 0 of 10\)"
        x[1, 2] = float("nan")
    with pytest.raises(sz.NonFiniteError, match=match):
        sz.sample("ddim", den, x, grid)


def test_guided_predictions_are_watched(gmm):
    sched = sz.get_schedule("vp")
    cond = gmm.conditioner()
    model = gmm.model(sched)
    bad = sz.Model(lambda x, t, **c: torch.where(t[:, None] < 0.45, x * float("nan"), model.net(x, t, **c)),
                   "epsilon", sched)
    den = sz.GuidedDenoiser(bad, sz.get_guidance("cfg", scale=3.0), sz.branch_conds(cond, [0, 1, 2]))
    with pytest.raises(sz.NonFiniteError, match=r"call 6 \(t=0\.4, grid step 6 of 10\)"):
        sz.sample("euler", den, torch.randn(3, 4), torch.linspace(1.0, 0.0, 11, dtype=torch.float64))


def test_finite_runs_pass_and_count(gmm):
    sched = sz.get_schedule("vp")
    r = sz.sample("heun", gmm.model(sched).denoiser(), torch.randn(2, 4), sz.get_grid("logsnr")(sched, 5))
    assert torch.isfinite(r.x).all() and r.denoiser_calls == r.nfe > 5
