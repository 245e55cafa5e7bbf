"""tcfg, fdg, mambo_g and perp_neg against their papers' formulas written out here, and against
the diffusers 0.42 guiders on the same predictions.

Predictions are float64; tolerances: 1e-10 against our own re-derivation (round-off), 1e-12 / 1e-9
against diffusers (round-off; FDG's pyramid goes through kornia's filters); TCFG's SVD is taken in
float32 inside diffusers' guider (and CFG-Zero*'s s*), so those comparisons are 1e-4 absolute on values up to about 14
(float32 relative precision, measured 1.2e-5).
"""

import math

import pytest
import torch

import solverzoo as sz

SCHED = sz.get_schedule("flow")


@pytest.fixture()
def case(gmm_img):
    """Image-shaped (B, 2, 4, 4) branch predictions of the exact mixture (velocity model)."""
    model = gmm_img.model(SCHED, "velocity")
    lab = [0, 1, 2, 3]
    conds = sz.branch_conds(gmm_img.conditioner(), lab, negative_prompts=[1, 2, 3, 4])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, generator=g, dtype=torch.float64).reshape(4, 2, 4, 4)
    t = torch.tensor(0.55, dtype=torch.float64)

    def net(x, tt, label=None):
        return model.net(x.reshape(x.shape[0], -1), tt, label).reshape(x.shape)

    m = sz.Model(net, "velocity", SCHED)
    preds = {k: m.predict(x, t, c) for k, c in conds.items()}
    return m, conds, x, t, preds


def _run(m, conds, x, t, name, **opts):
    return sz.GuidedDenoiser(m, sz.get_guidance(name, **opts), conds)(x, t)


def _v(p):
    return p.eps - p.x0


def _close(a, b, tol):
    err = float((a - b).abs().max())
    assert err < tol, f"max difference {err:.3e} > {tol:.0e}"


def test_tcfg_formula(case):
    m, conds, x, t, P = case
    out = _run(m, conds, x, t, "tcfg", scale=3.0)
    c, u = _v(P["cond"]).flatten(1), _v(P["uncond"]).flatten(1)
    want = []
    for ci, ui in zip(c, u):  # top right singular vector of [c; u] via the 2x2 Gram matrix's top eigenvector
        M = torch.stack([ci, ui])
        w, V = torch.linalg.eigh(M @ M.T)
        v1 = M.T @ V[:, -1] / math.sqrt(float(w[-1]))
        up = (ui @ v1) * v1
        want.append(up + 3.0 * (ci - up))
    _close(_v(out).flatten(1), torch.stack(want), 1e-10)
    a, s = SCHED.alpha_sigma(t)
    _close(a * out.x0 + s * out.eps, x, 1e-12)  # consistent at x


def test_mambo_g_formula(case):
    m, conds, x, t, P = case
    out = _run(m, conds, x, t, "mambo_g", scale=6.0, alpha=2.0)
    c, u = _v(P["cond"]), _v(P["uncond"])
    r = torch.stack([(ci - ui).norm() / ui.norm() for ci, ui in zip(c, u)]).reshape(-1, 1, 1, 1)
    _close(_v(out), u + (1 + 5.0 * torch.exp(-2.0 * r)) * (c - u), 1e-10)


def test_perp_neg_formula(case):
    m, conds, x, t, P = case
    out = _run(m, conds, x, t, "perp_neg", scale=4.0, neg_scale=1.5)
    for get in (lambda p: p.eps, lambda p: p.x0):
        c, u, n = get(P["cond"]), get(P["uncond"]), get(P["negative"])
        want = []
        for ci, ui, ni in zip(c, u, n):
            dc, dn = (ci - ui).flatten(), (ni - ui).flatten()
            perp = dn - (dn @ dc) / (dc @ dc) * dc
            want.append(ui + 4.0 * (dc - 1.5 * perp).reshape(ui.shape))
        _close(get(out), torch.stack(want), 1e-10)
    dc, dn = (_v(P["cond"]) - _v(P["uncond"])), (_v(P["negative"]) - _v(P["uncond"]))
    upd = _v(out) - _v(P["uncond"]) - 4.0 * dc  # the negative part is orthogonal to the positive update
    assert float((upd * dc).sum(dim=(1, 2, 3)).abs().max()) < 1e-9 and float(upd.abs().max()) > 1e-3
    assert float((dn * dc).sum(dim=(1, 2, 3)).abs().min()) > 1e-6  # (the case has a parallel part to remove)


def _pyr(img, levels):
    """Laplacian pyramid written out with explicit 5-tap binomial kernels and reflect padding."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=img.dtype) / 16
    k2 = (k1[:, None] * k1[None]).expand(img.shape[1], 1, 5, 5)

    def blur(z):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(z, (2, 2, 2, 2), mode="reflect"), k2, groups=z.shape[1])

    def resize(z, f):
        return torch.nn.functional.interpolate(z, scale_factor=f, mode="bilinear", align_corners=False)

    gs = [img]
    for _ in range(levels - 1):
        gs.append(resize(blur(gs[-1]), 0.5))
    bands = [gs[i] - blur(resize(gs[i + 1], 2.0)) for i in range(levels - 1)] + [gs[-1]]
    return bands, lambda b: b[-1] if len(b) == 1 else None, blur, resize


def test_fdg_formula_and_equal_scales_is_cfg(case):
    m, conds, x, t, P = case
    out = _run(m, conds, x, t, "fdg", scales=(7.0, 2.0))
    bc, _, blur, resize = _pyr(_v(P["cond"]), 2)
    bu, *_ = _pyr(_v(P["uncond"]), 2)
    hi, lo = bu[0] + 7.0 * (bc[0] - bu[0]), bu[1] + 2.0 * (bc[1] - bu[1])
    _close(_v(out), blur(resize(lo, 2.0)) + hi, 1e-10)
    same = _run(m, conds, x, t, "fdg", scales=(3.0, 3.0))
    cfg = _run(m, conds, x, t, "cfg", scale=3.0)
    _close(same.x0, cfg.x0, 1e-10)  # the pyramid is inverted exactly: equal scales are CFG
    with pytest.raises(ValueError, match="image-shaped"):
        sz.get_guidance("fdg", scales=(1, 2, 3)).combine(P, x.flatten(1), t, 0.5, 0.5)


# -- against the diffusers guiders (same predictions: the flow-frame velocities) -----------------
def _hf(name):
    guiders = pytest.importorskip("diffusers.guiders")
    return getattr(guiders, name)


@pytest.mark.parametrize("ours,opts,theirs,topts,tol", [
    ("cfg", {"scale": 3.5}, "ClassifierFreeGuidance", {"guidance_scale": 3.5}, 1e-12),
    ("tcfg", {"scale": 3.5}, "TangentialClassifierFreeGuidance", {"guidance_scale": 3.5}, 1e-4),
    ("mambo_g", {"scale": 6.0, "alpha": 2.0}, "MagnitudeAwareGuidance", {"guidance_scale": 6.0, "alpha": 2.0}, 1e-12),
    ("cfg_zero_star", {"scale": 3.5}, "ClassifierFreeZeroStarGuidance", {"guidance_scale": 3.5, "zero_init_steps": 0}, 1e-4),
    ("fdg", {"scales": (6.0, 2.5)}, "FrequencyDecoupledGuidance", {"guidance_scales": [6.0, 2.5]}, 1e-9),
    ("fdg", {"scales": (6.0, 2.5), "parallel_weights": (0.3, 1.0)}, "FrequencyDecoupledGuidance",
     {"guidance_scales": [6.0, 2.5], "parallel_weights": [0.3, 1.0]}, 1e-9),
])
def test_against_diffusers_guider(case, ours, opts, theirs, topts, tol):
    if theirs == "FrequencyDecoupledGuidance":
        pytest.importorskip("kornia")
    m, conds, x, t, P = case
    guider = _hf(theirs)(**topts)
    guider._step = 3  # a mid-sampling step (CFG-Zero*'s zero-init compares it; no start/stop window is set)
    c, u = _v(P["cond"]), _v(P["uncond"])
    if theirs == "MagnitudeAwareGuidance":  # diffusers 0.42's mambo_guidance calls torch.norm over 3 dims, which
        c, u = c.flatten(1), u.flatten(1)  # raises on (B, C, H, W): give it flat rows (same per-sample norms)
    want = guider.forward(c, u).pred.reshape(x.shape)
    _close(_v(_run(m, conds, x, t, ours, **opts)), want, tol)
