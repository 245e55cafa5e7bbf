"""Bad input gets a clear error that says what was wrong and what to do."""

import pytest
import torch

import solverzoo as sz
from solverzoo.cli import main


@pytest.fixture()
def setup(gmm):
    sched = sz.get_schedule("vp")
    return sched, gmm.model(sched).denoiser()


def test_unknown_names_list_close_matches():
    with pytest.raises(sz.UnknownComponentError, match=r"unknown solver 'dpmpp2m'.*'dpmpp_2m'"):
        sz.get_solver("dpmpp2m")
    with pytest.raises(sz.UnknownComponentError, match=r"unknown grid 'karas'.*'karras'"):
        sz.get_grid("karas")
    with pytest.raises(sz.UnknownComponentError, match=r"unknown guidance 'cgf'.*'cfg'"):
        sz.get_guidance("cgf")
    with pytest.raises(sz.UnknownComponentError, match="Registered schedules: ddpm, edm, flow, vp"):
        sz.get_schedule("nope")


def test_cli_unknown_solver(capsys):
    assert main(["verify", "eulr"]) == 2
    assert "Did you mean 'euler'" in capsys.readouterr().err


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_below_one(steps):
    with pytest.raises(sz.GridError, match="steps must be a positive integer"):
        sz.get_grid("karras")(sz.get_schedule("vp"), steps)


@pytest.mark.parametrize("times,msg", [
    ([0.5, 0.8, 0.0], "strictly decreasing"),
    ([0.9, 0.9, 0.1], "strictly decreasing"),
    ([0.9, float("nan"), 0.0], "NaN or inf"),
    ([1.5, 0.5, 0.0], "range"),
    ([0.5], "at least 2"),
])
def test_bad_grids(setup, times, msg):
    sched, den = setup
    with pytest.raises(sz.GridError, match=msg):
        sz.sample("ddim", den, torch.randn(2, 4), torch.tensor(times))


def test_too_many_steps_for_a_discrete_schedule():
    with pytest.raises(sz.GridError, match="exceed the 1000 training timesteps"):
        sz.get_grid("leading")(sz.get_schedule("ddpm"), 1001)


def test_nan_from_the_model_names_the_first_bad_step(gmm):
    sched = sz.get_schedule("vp")
    inner = gmm.model(sched)

    def net(x, t, **c):
        out = inner.net(x, t, **c)
        return torch.where(t[:, None] < 0.25, torch.full_like(out, float("nan")), out)

    den = sz.Model(net, "epsilon", sched).denoiser()
    grid = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    with pytest.raises(sz.NonFiniteError, match=r"call 8 \(t=0\.2, grid step 8 of 10\)"):
        sz.sample("dpmpp_2m", den, torch.randn(3, 4), grid)


def test_nan_check_does_not_sync_per_step(gmm, monkeypatch):
    """The watch keeps its flags as tensors; a host read happens once, after the loop."""
    sched = sz.get_schedule("vp")
    reads = []
    orig = torch.Tensor.__int__
    monkeypatch.setattr(torch.Tensor, "__int__", lambda self: reads.append(1) or orig(self))
    sz.sample("ddim", gmm.model(sched).denoiser(), torch.randn(2, 4), sz.get_grid("logsnr")(sched, 25))
    assert len(reads) <= 1


@pytest.mark.parametrize("name,kw", [("cfg", {"scale": float("nan")}), ("cfg", {"scale": float("inf")}),
                                     ("apg", {"scale": "4"}), ("cfg_rescale", {"phi": float("nan")})])
def test_nan_guidance_scale(name, kw):
    with pytest.raises(ValueError, match="must be a finite number"):
        sz.get_guidance(name, **kw)


def test_mismatched_shapes(gmm):
    sched = sz.get_schedule("vp")
    bad = sz.Model(lambda x, t, **c: x[:, :2], "epsilon", sched).denoiser()
    with pytest.raises(ValueError, match=r"model output has shape \(2, 2\) but the input has shape \(2, 4\)"):
        sz.sample("ddim", bad, torch.randn(2, 4), sz.get_grid("logsnr")(sched, 3))
    den = gmm.model(sched).denoiser()
    with pytest.raises(ValueError, match="got 3 generators for a batch of 2"):
        sz.sample("ddpm", den, torch.randn(2, 4), sz.get_grid("logsnr")(sched, 3), generator=sz.generators([1, 2, 3]))
    with pytest.raises(ValueError, match="floating-point tensor"):
        sz.sample("ddim", den, torch.zeros(2, 4, dtype=torch.long), sz.get_grid("logsnr")(sched, 3))


def test_unknown_and_bad_solver_options(setup):
    sched, den = setup
    grid = sz.get_grid("logsnr")(sched, 4)
    with pytest.raises(TypeError, match=r"solver 'ddim' has no option\(s\) \['etta'\]; valid options: \{'eta': 0.0\}"):
        sz.sample("ddim", den, torch.randn(2, 4), grid, etta=0.5)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        sz.sample("ddim", den, torch.randn(2, 4), grid, eta=2.0)
    with pytest.raises(ValueError, match="variance must be 'small'"):
        sz.sample("ddpm", den, torch.randn(2, 4), grid, variance="medium")
    with pytest.raises(ValueError, match="frame='ve' cannot start where alpha = 0"):
        sz.sample("heun", gmm_flow(den), torch.randn(2, 4), sz.get_grid("flow_shift")(sz.get_schedule("flow"), 4), frame="ve")


def gmm_flow(den):
    from solverzoo.testbeds import GaussianMixture
    return GaussianMixture.default().model(sz.get_schedule("flow"), "velocity").denoiser()


def test_unknown_prediction_and_time_input(gmm):
    with pytest.raises(ValueError, match="unknown prediction type 'eps'"):
        sz.Model(lambda x, t: x, "eps", sz.get_schedule("vp"))
    with pytest.raises(ValueError, match="unknown time_input 'sigmas'"):
        sz.Model(lambda x, t: x, "epsilon", sz.get_schedule("vp"), time_input="sigmas")


def test_guidance_without_the_branches_it_needs(gmm):
    sched = sz.get_schedule("vp")
    cond = gmm.conditioner()
    with pytest.raises(ValueError, match=r"needs conditioning for branches \['cond', 'negative'\]; missing \['negative'\]"):
        sz.GuidedDenoiser(gmm.model(sched), sz.get_guidance("negative_prompt"), sz.branch_conds(cond, [0, 1]))
    with pytest.raises(ValueError, match="class label 7 is out of range"):
        cond.encode([7])


# ---- the command line: every user error is one line, exit 2, before any expensive work, and
# nothing already written changes (the results directory's files hashed before and after) ----

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.test_records import make_record  # noqa: E402


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture()
def results(tmp_path):
    """A results directory holding one valid record, its table and a report."""
    from solverzoo.bench.records import build_table, write_record

    r = tmp_path / "res"
    write_record(r, make_record())
    build_table(r)
    (r / "report").mkdir()
    (r / "report" / "index.md").write_text("# report\n")
    return r


def no_load(monkeypatch):
    """Fail loudly if a case gets as far as loading a backbone (the expensive part)."""
    import solverzoo.backbone as backbone_mod
    import solverzoo.bench.sweep as sweep_mod

    def boom(*a, **k):
        raise AssertionError("the backbone was loaded before the input was checked")
    monkeypatch.setattr(backbone_mod, "load_backbone", boom)
    monkeypatch.setattr(sweep_mod, "load_backbone", boom)


BENCH = ["backbone=gmm", "sweep=quick"]
BENCH_CASES = [
    (["sweep.solvers=[]"], "sweep.solvers is empty"),
    (["sweep.solvers=[nosuch]"], "unknown solver 'nosuch'"),
    (["sweep.grids=[karas]"], "unknown grid 'karas'"),
    (["sweep.steps=[0]"], "sweep.steps: 0 is not a positive integer"),
    (["sweep.steps=[five]"], "sweep.steps: 'five' is not a positive integer"),
    (["sweep.steps=[2.5]"], "sweep.steps: 2.5 is not a positive integer"),
    (["sweep.n_samples=0"], "sweep.n_samples=0 must be a positive integer"),
    (["batch_size=0"], "batch_size=0 must be a positive integer"),
    (["sweep.guidance=[{name:cgf,scale:4}]"], "unknown guidance 'cgf'"),
    (["sweep.guidance=[{name:cfg,scale:.nan}]"], "is not a finite number"),
    (["sweep.caches=[nocache]"], "unknown cache 'nocache'"),
    (["+sweep.solver_options={ddim:{etta:1}}"], "solver 'ddim' has no option(s) ['etta']"),
    (["device=cuda"] if not __import__("torch").cuda.is_available() else ["device=cuda:99"], "device=cuda"),
    (["device=banana"], "is not a torch device"),
    (["metrics.ci=1.5"], "metrics.ci=1.5 must lie in (0, 1)"),
    (["metrics.inception_weights=/no/such.pth"], "metrics.inception_weights='/no/such.pth' is not a file"),
    (["metrics.clip_model=/no/such/clip"], "metrics.clip_model=/no/such/clip does not exist"),
    (["metrics.reference.kind=npz"], "needs metrics.reference.path=FILE.npz"),
    (["sweep.foo=1"], "Could not override 'sweep.foo'"),
    (["backbone=nosuch"], "Could not find 'backbone/nosuch'"),
]


@pytest.mark.parametrize("extra,fragment", BENCH_CASES, ids=[" ".join(c[0]) for c in BENCH_CASES])
def test_bench_user_errors(results, monkeypatch, capsys, extra, fragment):
    no_load(monkeypatch)
    before = snapshot(results)
    args = (BENCH if not extra[0].startswith("backbone=") else []) + extra
    assert main(["bench", *args, f"results_dir={results}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("solverzoo: error: ") and fragment in err[0], err
    assert snapshot(results) == before


def test_bench_results_dir_a_file_or_unwritable(tmp_path, monkeypatch, capsys):
    no_load(monkeypatch)
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["bench", *BENCH, f"results_dir={f}"]) == 2
    assert f"results_dir {f} is a file, not a directory" in capsys.readouterr().err
    assert main(["bench", *BENCH, f"results_dir={f}/sub"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["bench", *BENCH, "results_dir=/proc/solverzoo-results"]) == 2
    assert "is not writable" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder only binds other users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        assert main(["bench", *BENCH, f"results_dir={ro}/r"]) == 2
        assert "is not writable" in capsys.readouterr().err
    assert f.read_text() == "x" and not (tmp_path / "hydra").exists()


def test_bench_refuses_a_locked_results_dir(results, monkeypatch, capsys):
    from solverzoo.bench.lock import ResultsLock

    no_load(monkeypatch)
    before = snapshot(results)
    code = ("import sys, time; from solverzoo.bench.lock import ResultsLock\n"
            f"ResultsLock({str(results)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["bench", *BENCH, f"results_dir={results}"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another solverzoo process" in err and f"pid {holder.pid} " in err
        assert main(["report", str(results)]) == 2  # writing the table into it: the same lock
        assert "is in use" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    before.pop(".lock", None)
    after = snapshot(results)
    after.pop(".lock", None)
    assert after == before
    ResultsLock(results).acquire().release()


SAMPLE_CASES = [
    (["--n", "0"], "--n 0: the number of samples must be at least 1"),
    (["--n", "100000"], "over the limit of 100"),
    (["--seed", "100000000000000000000"], "--seed 100000000000000000000 is out of range"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--seed", "1e20"], "invalid int value: '1e20'"),
    (["--steps", "0"], "--steps 0 must lie in [1, 10000]"),
    (["--steps", "100000"], "--steps 100000 must lie in [1, 10000]"),
    (["--scale", "1e30"], "--scale 1e+30 must be a finite number"),
    (["--scale", "nan"], "--scale nan must be a finite number"),
    (["--negative-prompt", "a blue square", "--guidance", "none"], "--negative-prompt needs guidance"),
    (["--solver", "dpmpp2m"], "unknown solver 'dpmpp2m'"),
    (["--guidance", "cgf"], "unknown guidance 'cgf'"),
    (["--grid", "karas"], "unknown grid 'karas'"),
    (["--cache", "nocache"], "unknown cache 'nocache'"),
    (["--backbone", "nosuch"], "unknown backbone 'nosuch'"),
    (["--device", "cuda:7" if __import__("torch").cuda.is_available() else "cuda"], "device=cuda"),
    (["--out", "/proc/x.png"], "is not writable"),
    (["--out", "OUTDIR/grid"], "needs an image extension"),
    (["--out", "OUTDIR"], "is a directory"),
    (["--backbone", "gmm", "--prompt", "a red circle"], "backbone gmm is conditioned on class labels"),
    (["--backbone", "digits", "--prompt", "a red circle"], "must name one digit 0-9"),
    (["--prompt", "a red \udcff circle"], "--prompt is not valid UTF-8 text"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize("extra,fragment", SAMPLE_CASES, ids=[" ".join(c[0]) for c in SAMPLE_CASES])
def test_sample_user_errors(tmp_path, monkeypatch, capsys, extra, fragment):
    no_load(monkeypatch)
    extra = [a.replace("OUTDIR", str(tmp_path)) for a in extra]
    args = ["sample", "--prompt", "a red circle", "--out", str(tmp_path / "g.png"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("solverzoo: error: ") and fragment in err[0], err
    assert not (tmp_path / "g.png").exists() and os.listdir(tmp_path) == []


def test_prompts_outside_a_worlds_vocabulary_are_warned_about(capsys):
    from solverzoo.cli_sample import _check_prompt

    _check_prompt("shapes-flow", "three yellow squares", "--prompt")
    err = capsys.readouterr().err
    assert "outside the shapes world's grammar" in err and "'three'" in err and "'squares'" in err
    _check_prompt("shapes-flow", "a large red circle at the top left", "--prompt")
    _check_prompt("shapes-eps", "a small blue square beside a green triangle", "--prompt")
    assert capsys.readouterr().err == ""


def test_no_traceback_without_debug_and_one_with_it(tmp_path, capsys):
    assert main(["sample", "--prompt", "x", "--n", "0"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="--n 0"):
        main(["--debug", "sample", "--prompt", "x", "--n", "0"])


def test_report_out_elsewhere_leaves_the_results_dir_untouched(results, tmp_path, capsys):
    before = snapshot(results)
    assert main(["report", str(results), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "index.md").is_file()
    assert snapshot(results) == before
    assert main(["report", str(results), "--out", "/proc/rep"]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert snapshot(results) == before


def test_report_on_invalid_records_only(tmp_path, capsys):
    r = tmp_path / "r"
    (r / "records").mkdir(parents=True)
    rec = make_record()
    (r / "records" / f"{rec['config_hash']}.json").write_text(json.dumps({"config_hash": rec["config_hash"], "status": "ok"}))
    assert main(["report", str(r)]) == 2
    err = capsys.readouterr().err
    assert "invalid record" in err and "holds no valid records" in err and "Traceback" not in err


def test_sample_i_is_bit_identical_whatever_n(monkeypatch, tmp_path, capsys):
    """`solverzoo sample` computes sample i in a fixed batch (seeds seed + 8*(i//8) ... + 7,
    decoded on its own), so --n 3 and --n 11 give bit-identical samples 0-2. (Batching them
    differently changes the latents by ~1e-6 relative, from matmul reduction order, which can flip
    an 8-bit pixel by one level.)"""
    import solverzoo.models.images as images

    grids = []
    monkeypatch.setattr(images, "save_grid", lambda x, path, **k: grids.append(x.clone()) or Path(path))
    for n in ("3", "11"):
        assert main(["sample", "--backbone", "digits", "--prompt", "a handwritten 7", "--steps", "4", "--n", n,
                     "--seed", "5", "--out", str(tmp_path / "g.png")]) == 0
    assert grids[0].shape[0] == 3 and grids[1].shape[0] == 11
    assert torch.equal(grids[0], grids[1][:3])
    assert "11 samples in 2 batches of 8; about" in capsys.readouterr().err  # the estimate
