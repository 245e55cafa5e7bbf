"""Low-bias estimators (solverzoo.bench.estimators) and the converged solve (solverzoo.bench.converged).

Fast (well under a minute on one core): small feature dimensions, a 4-d Gaussian mixture."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

import solverzoo as sz
from solverzoo.bench import converged as cv
from solverzoo.bench import estimators as est
from solverzoo.bench import resampling
from solverzoo.bench.metrics import (
    Reference,
    frechet,
    paired_delta,
    stats,
)
from solverzoo.testbeds import GaussianMixture


def _analytic_fd(mu1, s1, mu2, s2) -> float:
    """The closed form with scipy's sqrtm on the true parameters."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_cov(rng, d, scale=1.0):
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    return scale * (a @ a.T + 0.3 * np.eye(d))


# -- batched Fréchet distances agree with metrics.frechet -----------------------------------------
@pytest.mark.parametrize("n", [6, 40])  # n < d and n > d
def test_batched_fd_matches_frechet(n):
    rng = np.random.default_rng(0)
    d = 12
    s = _random_cov(rng, d)
    mu = rng.normal(size=d)
    x1, x2 = rng.normal(size=(3, n, d)), rng.normal(size=(3, n + 5, d)) + 0.2
    want = [frechet(*stats(a), mu, s) for a in x1]
    np.testing.assert_allclose(est.fd_batch(x1, mu, s), want, rtol=1e-8, atol=1e-8)
    want = [frechet(*stats(a), *stats(b)) for a, b in zip(x1, x2)]
    np.testing.assert_allclose(est.fd_pair_batch(x1, x2), want, rtol=1e-6, atol=1e-6)


# -- FID-infinity ----------------------------------------------------------------------------------
def test_fid_infinity_same_gaussian_is_near_zero():
    rng = np.random.default_rng(1)
    d, n = 16, 1000
    feats = rng.normal(size=(n, d))  # N(0, I), reference = the true parameters
    out = est.fid_infinity(feats, np.zeros(d), np.eye(d), rng=rng)
    # E FID_N = tr(S)/N (the mean) + E tr(E^2)/4 (the covariance, S = I + E) ~ d/N + d(d+1)/(4N)
    bias = d / n + d * (d + 1) / (4 * n)
    assert 0.5 * bias < out["fid_n"] < 2 * bias, (out["fid_n"], bias)
    assert abs(out["fid_inf"]) < 0.25 * out["fid_n"], out
    assert out["slope"] > 0


def test_fid_infinity_recovers_analytic_distance():
    rng = np.random.default_rng(2)
    d, n = 8, 2000
    mu1, s1 = np.zeros(d), _random_cov(rng, d)
    mu2, s2 = np.full(d, 0.25), _random_cov(rng, d, 1.3)
    truth = _analytic_fd(mu1, s1, mu2, s2)
    feats = rng.multivariate_normal(mu1, s1, n)
    out = est.fid_infinity(feats, mu2, s2, rng=rng)
    # tolerance: 10 % of the distance (the estimate's sampling SD here is about 3 %); FID at N is
    # biased upward by the slope / N the extrapolation removes
    assert abs(out["fid_inf"] - truth) < 0.1 * truth, (out, truth)
    assert out["slope"] > 0  # FID at N sits above FID_inf by slope / N


def test_fid_infinity_ci_contains_estimate_and_truth():
    rng = np.random.default_rng(3)
    d, n = 6, 600
    mu1, s1 = np.zeros(d), np.eye(d)
    mu2, s2 = np.full(d, 0.2), 1.2 * np.eye(d)
    truth = _analytic_fd(mu1, s1, mu2, s2)
    out = est.fid_infinity_ci(rng.multivariate_normal(mu1, s1, n), mu2, s2, boot=60, rng=rng)
    assert out["fid_inf_ci_low"] <= out["fid_inf"] <= out["fid_inf_ci_high"]
    assert out["fid_inf_ci_low"] <= truth <= out["fid_inf_ci_high"], (out, truth)


def test_fid_infinity_two_sided_removes_reference_bias():
    # one draw's FID_inf scatters by about half the (tiny) full FID; its mean over draws is ~0
    d, outs = 8, []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(1500, d)), rng.normal(size=(800, d))  # the same distribution
        outs.append(est.fid_infinity_two_sided(x, y, rng=rng))
    full = np.mean([o["fid_full"] for o in outs])
    assert full == pytest.approx((1 / 1500 + 1 / 800) * (d + d * (d + 1) / 4), rel=0.3)  # both sides' 1/N bias
    assert abs(np.mean([o["fid_inf"] for o in outs])) < 0.2 * full, outs
    assert all(o["slope_samples"] > 0 and o["slope_reference"] > 0 for o in outs)


def test_fid_infinity_rejects_bad_sizes():
    f = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(ValueError, match="outside 2..50"):
        est.fid_infinity(f, np.zeros(4), np.eye(4), sizes=[20, 60], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="two distinct"):
        est.fid_infinity(f, np.zeros(4), np.eye(4), sizes=[50], rng=np.random.default_rng(0))


# -- KID ---------------------------------------------------------------------------------------------
def _naive_mmd2(x, y):
    k = lambda a, b: (float(a @ b) / len(a) + 1) ** 3
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd2_matches_brute_force_and_is_unbiased():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5
    assert est.mmd2_unbiased(x, y) == pytest.approx(_naive_mmd2(x, y), rel=1e-12)
    # exact expectation over every draw of 2 points per side from two 3-point distributions
    p, q = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) + 0.7
    mean_est = np.mean([est.mmd2_unbiased(p[list(i)], q[list(j)])
                        for i in itertools.product(range(3), repeat=2) for j in itertools.product(range(3), repeat=2)])
    k = est.polynomial_kernel
    population = k(p, p).mean() + k(q, q).mean() - 2 * k(p, q).mean()
    assert mean_est == pytest.approx(population, rel=1e-12, abs=1e-12)


def test_kid_standardised_scale_and_intervals():
    rng = np.random.default_rng(6)
    d, n = 16, 400
    scale, loc = 300.0, 1000.0  # raw features at a large scale: standardisation makes KID O(1e-3..1e-1)
    ref = loc + scale * rng.normal(size=(n, d))
    same = est.kid_unbiased(loc + scale * rng.normal(size=(n, d)), ref, subset_size=200, subsets=20, rng=rng, boot=300)
    diff = est.kid_unbiased(loc + scale * (1.15 * rng.normal(size=(n, d)) + 0.3), ref, subset_size=200, subsets=20,
                            rng=rng, boot=300)
    assert same["kid_ci_low"] <= 0 <= same["kid_ci_high"], same
    assert diff["kid_ci_low"] > 0, diff
    assert 1e-3 < diff["kid"] < 1.0, diff
    assert abs(same["kid"]) < 0.05
    raw = est.kid_unbiased(loc + scale * rng.normal(size=(n, d)), ref, subset_size=200, subsets=5, rng=rng, boot=10,
                           standardise=False)
    assert abs(raw["kid"]) > 100 * abs(same["kid_ci_high"])  # unstandardised: the scale of the features, cubed


# -- paired bootstraps ---------------------------------------------------------------------------------
def test_paired_bootstrap_is_narrower_than_unpaired():
    rng = np.random.default_rng(7)
    base = rng.lognormal(size=500)  # shared per-sample difficulty (same noise and prompt)
    a, b = base + 0.05 * rng.normal(size=500), base + 0.1 + 0.05 * rng.normal(size=500)
    p = resampling.paired_bootstrap(a, b, reps=1000, rng=np.random.default_rng(0))
    u = resampling.unpaired_bootstrap(a, b, reps=1000, rng=np.random.default_rng(0))
    assert p["ci_low"] <= p["delta"] <= p["ci_high"] < 0
    assert p["ci_high"] - p["ci_low"] < 0.5 * (u["ci_high"] - u["ci_low"]), (p, u)
    hits_a = (rng.random(500) < 0.7).astype(float)
    hits_b = np.where(rng.random(500) < 0.9, hits_a, 1 - hits_a)
    h = resampling.paired_bootstrap(hits_a, hits_b, stat=np.mean, reps=500, rng=rng)
    assert h["delta"] == pytest.approx(hits_a.mean() - hits_b.mean())


def test_paired_fd_difference_reuses_paired_delta():
    rng = np.random.default_rng(8)
    d, n = 6, 300
    base = rng.normal(size=(n, d))
    fa, fb = base + 0.05 * rng.normal(size=(n, d)), 1.1 * base + 0.1 + 0.05 * rng.normal(size=(n, d))
    mu, s = np.zeros(d), np.eye(d)
    out = resampling.paired_fd_difference(fa, fb, mu, s, reps=100, rng=np.random.default_rng(1))
    seed = int(np.random.default_rng(1).integers(0, 2 ** 63 - 1))
    want = paired_delta({"features": fa}, {"features": fb}, Reference({}, mu, s, 0), 100, 0.95, seed=seed)
    assert out == want
    assert out["delta_fid_ci_low"] <= out["delta_fid"] <= out["delta_fid_ci_high"] < 0


def test_median_ci():
    v = np.random.default_rng(9).normal(3.0, 1.0, 400)
    m, lo, hi = resampling.median_ci(v, 500, np.random.default_rng(0))
    assert lo < m < hi and lo < 3.0 < hi and hi - lo < 0.4
    with pytest.raises(ValueError, match="NaN"):
        resampling.median_ci(np.array([1.0, math.nan]), 10)


# -- the converged solve ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ode():
    gmm = GaussianMixture.default(dim=4, seed=0)
    sched = sz.get_schedule("vp")
    den = gmm.model(sched, "epsilon").denoiser()
    grid = sz.get_grid("logsnr")
    probe = grid(sched, 2, final="none")
    t0, t1 = float(probe[0]), float(probe[-1])
    x = sz.initial_noise(sched, t0, (32, 4), [torch.Generator().manual_seed(i) for i in range(32)], dtype=torch.float64)
    ref, info = cv.solve(den, x, t0, t1, method="dop853")
    return {"sched": sched, "den": den, "grid": grid, "t0": t0, "t1": t1, "x": x, "ref": ref, "info": info}


def test_dop853_converged_solve_orders_dpmpp_2m(ode):
    assert ode["info"]["own_error_rms"] < 1e-6 and ode["info"]["nfe"] > 50
    errs = []
    for steps in (8, 16, 32):
        res = sz.sample("dpmpp_2m", ode["den"], ode["x"].clone(), ode["grid"](ode["sched"], steps, final="none"))
        errs.append(float(np.median(cv.per_sample_rmse(res.x, ode["ref"]))))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[1] / errs[2] > 3  # about second order (2^2)


@pytest.mark.parametrize("method,steps", [("heun", 16), ("rk4", 8)])
def test_step_doubling_estimate_matches_dop853_truth(ode, method, steps):
    x, info = cv.solve(ode["den"], ode["x"], ode["t0"], ode["t1"], method=method, steps=steps)
    true = float(((x - ode["ref"]) ** 2).mean().sqrt())
    assert info["steps"] == 2 * steps and info["order"] == sz.get_solver(method).order
    assert 1 / 3 < info["own_error_rms"] / true < 3, (info, true)


def test_solve_rejects_stochastic_and_infinite_logsnr(ode):
    with pytest.raises(ValueError, match="stochastic or adaptive"):
        cv.solve(ode["den"], ode["x"], ode["t0"], ode["t1"], method="euler_ancestral", steps=4)
    with pytest.raises(ValueError, match="log-SNR is not finite"):
        cv.step_grid(ode["sched"], ode["t0"], float(ode["sched"].t_zero), 4)


def _identity(shape=(32, 4), **kw):
    base = {"backbone": "gmm-4d", "weights_id": "analytic", "guidance": None, "guidance_scale": None,
            "schedule": {"name": "vp"}, "t_start": 1.0, "t_end": 1e-3, "seeds": tuple(range(shape[0])),
            "prompts": cv.prompts_hash([-1] * shape[0]), "shape": shape}
    base.update(kw)
    return cv.ConvergedSolve(**base)


def test_cache_round_trip_and_corrupt_file(tmp_path, ode):
    calls = []

    def fn():
        calls.append(1)
        return ode["ref"].clone(), {"method": "dop853", "own_error_rms": 1e-9, "wall_s": 0.1}

    ident = _identity()
    assert _identity().key == ident.key and _identity(guidance_scale=2.0).key != ident.key
    x1, i1 = cv.load_or_solve(ident, tmp_path, fn)
    x2, i2 = cv.load_or_solve(ident, tmp_path, fn)
    assert (i1["cache"], i2["cache"], len(calls)) == ("miss", "hit", 1)
    assert x2.dtype == torch.float64 and torch.equal(x1, x2) and torch.equal(x2, ode["ref"])
    assert i2["own_error_rms"] == 1e-9
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed into place
    path = ident.path(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncate it
    with pytest.warns(RuntimeWarning, match="unusable"):
        x3, i3 = cv.load_or_solve(ident, tmp_path, fn)
    assert len(calls) == 2 and i3["cache"].startswith("recomputed") and torch.equal(x3, ode["ref"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cv.load_or_solve(ident, tmp_path, fn)[1]["cache"] == "hit"
    # a file whose shape disagrees with its identity is recomputed too
    bad = _identity(shape=(16, 4))
    cv._write(bad.path(tmp_path), torch.zeros(3, 4), {"identity": bad.identity(), "info": {}})
    with pytest.warns(RuntimeWarning, match="shape"):
        cv.load_or_solve(bad, tmp_path, lambda: (torch.zeros(16, 4), {}))


def test_psnr_cap_and_value():
    img = torch.rand(4, 3, 8, 8) * 2 - 1
    assert np.all(cv.per_sample_psnr(img, img.clone()) == cv.PSNR_CAP_DB)
    a = torch.zeros(2, 1, 4, 4)
    np.testing.assert_allclose(cv.per_sample_psnr(a + 0.2, a), 20.0)  # 0.1 on [0, 1]: MSE 0.01
    with pytest.raises(ValueError, match="differ in shape"):
        cv.per_sample_psnr(a, a[:1])


def test_converged_metrics_fields(ode):
    res = sz.sample("dpmpp_2m", ode["den"], ode["x"].clone(), ode["grid"](ode["sched"], 8, final="none"))
    img, ref_img = torch.tanh(res.x).reshape(32, 1, 2, 2), torch.tanh(ode["ref"]).reshape(32, 1, 2, 2)
    rng = np.random.default_rng(0)
    m = cv.converged_metrics(res.x, ode["ref"], images=img, ref_images=ref_img, feats=res.x.numpy(),
                             ref_feats=ode["ref"].numpy(), reps=300, fd_reps=50, rng=rng)
    for k in ("err_converged", "psnr_converged", "fd_converged"):
        assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"], (k, m)
    assert m["err_converged"] > 0 and 10 < m["psnr_converged"] < cv.PSNR_CAP_DB and m["fd_converged"] > 0
    same = cv.converged_metrics(ode["ref"], ode["ref"], images=ref_img, ref_images=ref_img, feats=ode["ref"].numpy(),
                                ref_feats=ode["ref"].numpy(), reps=50, fd_reps=10, rng=rng)
    assert (same["err_converged"], same["psnr_converged"], same["fd_converged"]) == (0.0, cv.PSNR_CAP_DB, 0.0)
    sto = cv.converged_metrics(res.x, ode["ref"], feats=res.x.numpy(), ref_feats=ode["ref"].numpy(), stochastic=True,
                               fd_reps=20, rng=rng)
    assert math.isnan(sto["err_converged"]) and math.isnan(sto["psnr_converged"]) and "stochastic" in sto["err_converged_note"]
    assert sto["fd_converged"] == pytest.approx(m["fd_converged"])


def test_steps_to_converge():
    rows = [
        {"solver": "a", "nfe": 8, "psnr_converged": 28.0, "psnr_converged_ci_low": 27.0},
        {"solver": "a", "nfe": 16, "psnr_converged": 36.0, "psnr_converged_ci_low": 31.0},
        {"solver": "a", "nfe": 32, "psnr_converged": 45.0, "psnr_converged_ci_low": 41.0},
        {"solver": "a", "nfe": 64, "psnr_converged": 52.0, "psnr_converged_ci_low": 48.0},
        {"solver": "b", "nfe": 4, "psnr_converged": 33.0, "psnr_converged_ci_low": 30.5},
        {"solver": "b", "nfe": 2, "psnr_converged": 31.0, "psnr_converged_ci_low": 29.0},
        {"solver": "c", "nfe": 8, "psnr_converged": math.nan, "psnr_converged_ci_low": math.nan},
    ]
    out = cv.steps_to_converge(rows)
    assert out["a"] == {"nfe_to_30db": 16, "nfe_to_40db": 32, "nfe_to_50db": "not distinguishable at this N"}
    assert out["b"] == {"nfe_to_30db": 4, "nfe_to_40db": "not reached", "nfe_to_50db": "not reached"}
    assert out["c"]["nfe_to_30db"] == "not reached"
