"""Guidance methods against their defining formulas on the exact class-conditional mixture,
one batched model call per step, and honest NFE."""

import pytest
import torch

import solverzoo as sz


@pytest.fixture()
def world(gmm):
    sched = sz.get_schedule("vp")
    calls = []
    inner = gmm.model(sched)

    def net(x, t, **c):
        calls.append(x.shape[0])
        return inner.net(x, t, **c)

    model = sz.Model(net, "epsilon", sched)
    conds = sz.branch_conds(gmm.conditioner(), [0, 1, 2], negative_prompts=[1, 2, 0])
    return sched, model, conds, calls


def _branch(model, conds, name, x, t):
    return model.predict(x, t, conds[name])


def test_cfg_formula_and_batched_forward(world):
    sched, model, conds, calls = world
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    g = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), conds)
    calls.clear()
    out = g(x, t)
    assert calls == [6]  # one forward for both branches
    c, u = _branch(model, conds, "cond", x, t), _branch(model, conds, "uncond", x, t)
    torch.testing.assert_close(out.eps, u.eps + 3.0 * (c.eps - u.eps))
    torch.testing.assert_close(out.x0, u.x0 + 3.0 * (c.x0 - u.x0))
    assert sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=1.0), conds)(x, t).x0.allclose(c.x0)


def test_negative_prompt_formula(world):
    sched, model, conds, _ = world
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    out = sz.GuidedDenoiser(model, sz.get_guidance("negative_prompt", scale=2.0), conds)(x, t)
    p, n = _branch(model, conds, "cond", x, t), _branch(model, conds, "negative", x, t)
    torch.testing.assert_close(out.eps, p.eps + 2.0 * (p.eps - n.eps))


def test_nfe_counts_every_branch(world):
    sched, model, conds, calls = world
    grid = sz.get_grid("logsnr")(sched, 10)
    g = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=2.0), conds)
    res = sz.sample("dpmpp_2m", g, torch.randn(3, 4), grid)
    assert res.nfe == 20 and res.denoiser_calls == 10
    res = sz.sample("heun", g, torch.randn(3, 4), grid)
    assert res.nfe == 2 * (2 * 9 + 1)  # 9 Heun steps and a final Euler step to sigma = 0, 2 branches


def test_interval_guidance_is_cfg_inside_and_conditional_outside(world):
    sched, model, conds, _ = world
    x = torch.randn(3, 4, dtype=torch.float64)
    iv = sz.GuidedDenoiser(model, sz.get_guidance("interval", scale=3.0, sigma_lo=0.5, sigma_hi=2.0), conds)
    cfg = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), conds)
    for sve, inside in [(1.0, True), (0.1, False), (5.0, False)]:
        t = sched.t_of_sigma_ve(torch.tensor(sve, dtype=torch.float64))
        want = cfg(x, t) if inside else _branch(model, conds, "cond", x, t)
        torch.testing.assert_close(iv(x, t).x0, want.x0)


def test_cfg_rescale_matches_conditional_std(world):
    sched, model, conds, _ = world
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    out = sz.GuidedDenoiser(model, sz.get_guidance("cfg_rescale", scale=5.0, phi=1.0), conds)(x, t)
    c = _branch(model, conds, "cond", x, t)
    torch.testing.assert_close(out.x0.std(dim=1), c.x0.std(dim=1))
    a, s = sched.alpha_sigma(t)
    torch.testing.assert_close(a * out.x0 + s * out.eps, x)  # consistent prediction
    zero = sz.GuidedDenoiser(model, sz.get_guidance("cfg_rescale", scale=5.0, phi=0.0), conds)(x, t)
    torch.testing.assert_close(zero.x0, sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=5.0), conds)(x, t).x0)


def test_apg_reduces_to_cfg_without_projection(world):
    sched, model, conds, _ = world
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    apg = sz.GuidedDenoiser(model, sz.get_guidance("apg", scale=4.0, eta=1.0), conds)(x, t)
    cfg = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=4.0), conds)(x, t)
    torch.testing.assert_close(apg.x0, cfg.x0)
    ortho = sz.GuidedDenoiser(model, sz.get_guidance("apg", scale=4.0, eta=0.0), conds)(x, t)
    c = _branch(model, conds, "cond", x, t).x0
    upd = ortho.x0 - c
    assert (upd * c).sum(dim=1).abs().max() < 1e-9  # the update is orthogonal to the conditional x0


def test_cfg_zero_star_formula(world):
    sched, model, conds, _ = world
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    out = sz.GuidedDenoiser(model, sz.get_guidance("cfg_zero_star", scale=3.0), conds)(x, t)
    c, u = _branch(model, conds, "cond", x, t), _branch(model, conds, "uncond", x, t)
    vc, vu = c.eps - c.x0, u.eps - u.x0
    s = (vc * vu).sum(1, keepdim=True) / (vu * vu).sum(1, keepdim=True)
    torch.testing.assert_close(out.eps - out.x0, s * vu + 3.0 * (vc - s * vu))
    zi = sz.GuidedDenoiser(model, sz.get_guidance("cfg_zero_star", scale=3.0, zero_init_t=0.5), conds)(x, t)
    torch.testing.assert_close(zi.eps - zi.x0, torch.zeros_like(x))


def test_cfg_sharpens_class_membership(gmm):
    """Guided samples land in their class's components more often than unguided ones, on a
    mixture whose classes overlap (the default mixture with its means pulled in 4x) so that the
    unguided conditional model misses its class about 1 time in 8 and guidance has room to help."""
    from solverzoo.testbeds import GaussianMixture

    overlap = GaussianMixture(gmm.means * 0.25, gmm.stds, gmm.weights, gmm.labels)
    sched = sz.get_schedule("vp")
    n = 90
    labels = torch.tensor([i % 3 for i in range(n)])
    conds = sz.branch_conds(overlap.conditioner(), labels.tolist())
    grid = sz.get_grid("logsnr")(sched, 20)
    x = sz.initial_noise(sched, grid[0], (n, 4), sz.generators(range(n)), dtype=torch.float64)

    def hit(scale):  # scale 1 is the conditional model unguided, scale 0 the unconditional one
        g = sz.GuidedDenoiser(overlap.model(sched), sz.get_guidance("cfg", scale=scale), conds)
        out = sz.sample("dpmpp_2m", g, x, grid).x
        return float((overlap.labels[overlap.component(out)] == labels).double().mean())

    uncond, unguided, guided = hit(0.0), hit(1.0), hit(4.0)
    assert unguided < 0.95, f"unguided accuracy {unguided:.3f}: the case is too easy to show guidance helping"
    assert guided > unguided + 0.05, f"guided (scale 4) accuracy {guided:.3f} vs unguided {unguided:.3f}"
    assert guided > 0.97, f"guided (scale 4) accuracy {guided:.3f} (unguided {unguided:.3f})"
    assert uncond < unguided, f"unconditional accuracy {uncond:.3f} vs unguided conditional {unguided:.3f}"
