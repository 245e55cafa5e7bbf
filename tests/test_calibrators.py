"""Grid calibrators (GITS, OSS, the Powell optimiser) on any model, judged against the exact solution.

Testbed: the analytic Gaussian mixture (exact model in every parametrisation); "exact solution" is a
DOP853 solve (rtol 1e-10) of the same ODE from the same noise to t_min plus the final jump. Grids are
calibrated on one seed set and judged on held-out seeds, paired per sample against the time-uniform
grid and the mixture backbone's default grid (logsnr) at equal NFE, for the first-order DDIM solver.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import solverzoo as sz
from solverzoo.calibrate import EvaluationBudgetError, Problem, calibration_set, optimise, save_calibrated
from solverzoo.calibrate_dp import gits, oss
from solverzoo.testbeds import GaussianMixture
from solverzoo.timegrid import GridError


def _sets(schedule, prediction, n_cal=48, n_hold=160):
    mix = GaussianMixture.default(dim=4, seed=0)
    model = mix.model(schedule, prediction)
    g = torch.Generator().manual_seed(3)
    cal = calibration_set(model, (4,), seeds=range(n_cal), cond={"label": torch.randint(0, 3, (n_cal,), generator=g)},
                          exact=True)
    hold = calibration_set(model, (4,), seeds=range(50_000, 50_000 + n_hold),
                           cond={"label": torch.randint(0, 3, (n_hold,), generator=g)}, exact=True)
    return model, cal, hold


def _assert_beats(e_new, e_base, what):
    d = e_new - e_base  # paired over held-out samples
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert np.median(d) < 0 and d.mean() + 3 * se < 0 and np.mean(d < 0) > 0.6, (
        f"{what}: median paired difference {np.median(d):.4g}, mean {d.mean():.4g} +- {3 * se:.3g} (3 SE), "
        f"better on {np.mean(d < 0):.0%} of samples")


@pytest.mark.parametrize("schedule, prediction, steps", [("vp", "epsilon", 5), ("vp", "epsilon", 8), ("edm", "x0", 6)])
def test_calibrated_grids_beat_uniform_and_default_at_equal_nfe(schedule, prediction, steps):
    sched = sz.get_schedule(schedule)
    _, cal, hold = _sets(sched, prediction)
    problem, judge = Problem(cal, "ddim"), Problem(hold, "ddim")
    uniform = sz.get_grid("flow_shift")(sched, steps, shift=1.0).numpy()  # uniform in the schedule's time
    default = sz.get_grid("logsnr")(sched, steps).numpy()
    grids = {"gits": gits(problem, steps, fine_steps=40)["times"], "oss": oss(problem, steps, fine_steps=30)["times"]}
    if schedule == "vp" and steps == 5:
        grids["optimise"] = optimise(problem, default, max_evals=80)["times"]
    e_uni, e_def = judge.errors(uniform), judge.errors(default)
    for name, times in grids.items():
        assert len(times) == steps + 1 and times[-1] == sched.t_zero
        e = judge.errors(times)
        _assert_beats(e, e_uni, f"{name} vs uniform ({schedule}, {prediction}, {steps} NFE)")
        _assert_beats(e, e_def, f"{name} vs logsnr ({schedule}, {prediction}, {steps} NFE)")


def test_any_model_form_criterion_and_view():
    sched = sz.get_schedule("flow")
    mix = GaussianMixture.default(dim=4, seed=0)
    model = mix.model(sched, "velocity")
    # a guided denoiser (not a Model, not a backbone) with median criterion on a decoded view
    conds = sz.branch_conds(mix.conditioner(), prompts=[0, 1, 2] * 6)
    den = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=2.0), conds)
    mat = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    cal = calibration_set(den, (4,), seeds=range(18), decode=lambda z: z.double() @ mat, exact=True)
    p = Problem(cal, "dpmpp_2m", criterion="median")
    t = gits(p, 4, fine_steps=20)["times"]
    assert cal.space == "decoded" and len(t) == 5 and np.all(np.diff(t) < 0)
    # an orthogonal decoder preserves RMS distances: the same errors as on latents
    q = Problem(calibration_set(den, (4,), seeds=range(18), exact=True), "dpmpp_2m", criterion="median")
    np.testing.assert_allclose(p.errors(t), q.errors(t), rtol=1e-9)
    with pytest.raises(ValueError, match="criterion must be one of"):
        Problem(cal, "ddim", criterion="max")
    with pytest.raises(ValueError, match="deterministic fixed-step solver"):
        Problem(cal, "euler_ancestral")
    with pytest.raises(TypeError, match="Model or a denoiser"):
        calibration_set(object(), (4,))


def test_reference_never_evaluates_sigma_zero_and_has_a_budget():
    sched = sz.get_schedule("vp")
    model, cal, _ = _sets(sched, "x0", n_cal=8, n_hold=1)
    seen = []

    class Spy:
        schedule, evals_per_call = sched, 1

        def __call__(self, x, t):
            seen.append(float(t))
            return den(x, t)

    den = model.denoiser({"label": torch.zeros(8, dtype=torch.long)})
    p = Problem(calibration_set(Spy(), (4,), seeds=range(8), exact=True), "ddim")
    p.reference_endpoints(1.0, 0.0)
    assert min(seen) == sched.t_min and len(seen) < 5000  # stops at t_min, then one jump
    tight = Problem(calibration_set(Spy(), (4,), seeds=range(8), exact=True), "ddim", max_reference_evals=20)
    with pytest.raises(EvaluationBudgetError, match="budget of 20 model evaluations"):
        tight.reference_endpoints(1.0, 0.0)


_X0_BACKBONE = textwrap.dedent('''
    import solverzoo as sz
    from solverzoo import hookimpl
    from solverzoo.backbone import Backbone
    from solverzoo.testbeds import GaussianMixture
    from solverzoo_builtin.backbones import MixtureWorld

    def gmm_x0(device="cpu"):
        mix = GaussianMixture.default(dim=4, seed=0)
        return Backbone("gmm-x0", mix.model(sz.get_schedule("vp"), "x0"), mix.conditioner(), (4,), lambda z: z,
                        "logsnr", {}, None, world=MixtureWorld(mix), weights_id="x0")

    class Plugin:
        @hookimpl
        def register_backbones(register):
            register(gmm_x0, name="gmm-x0")

    sz.registry.add_plugin(Plugin, "x0-backbone")
    from solverzoo.bench.grid_optimiser import optimise_grid
    import sys
    optimise_grid("gmm-x0", "dpmpp_2m", [4], n=8, max_evals=5, key="x0", out_dir=sys.argv[1], base_grid="logsnr",
                  log=lambda *a: None)
    print("finished")
''')


def test_optimise_grid_on_an_x0_model_finishes(tmp_path):
    """Regression: the reference solve used to integrate into sigma = 0, where an x0 model's eps is 0/0;
    DOP853 then shrank its step for ~37,000 evaluations (78 s for 8 samples) before failing."""
    try:
        out = subprocess.run([sys.executable, "-c", _X0_BACKBONE, str(tmp_path)], capture_output=True, text=True,
                             timeout=180, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    except subprocess.TimeoutExpired:
        pytest.fail("optimise-grid on an x0-predicting model did not finish in 180 s")
    assert out.returncode == 0 and "finished" in out.stdout, out.stderr[-2000:]


def test_grid_plugins_serve_saved_and_backbone_calibrations(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLVERZOO_GRIDS", str(tmp_path))
    sched = sz.get_schedule("vp")
    times = np.array([1.0, 0.5, 0.2, 0.05, 0.0])
    save_calibrated("my-gits", sched, {4: times}, method="gits", solver="ddim", out_dir=tmp_path)
    np.testing.assert_array_equal(sz.get_grid("gits")(sched, 4, key="my-gits").numpy(), times)
    with pytest.raises(GridError, match="pass backbone=NAME"):
        sz.get_grid("oss")(sched, 4)
    with pytest.raises(GridError, match="not both"):
        sz.get_grid("gits")(sched, 4, key="my-gits", backbone="gmm")
    with pytest.raises(GridError, match="has schedule"):
        sz.get_grid("gits")(sz.get_schedule("flow"), 4, backbone="gmm")
    g = sz.get_grid("oss")(sched, 3, backbone="gmm", n=16, fine_steps=12)
    assert len(g) == 4 and float(g[-1]) == sched.t_zero
