"""``sz.sample`` calls a plain ``Model.denoiser()`` through a fast path (solverzoo.sampling._Watch):
time inputs made once per distinct time of the call (the grid's step starts in one tensor op),
no per-call wrappers. It must be bit-identical to calling ``Model.predict`` per step: same
samples, same NFE, same network inputs, same errors."""
import pytest
import torch

import solverzoo as sz
from solverzoo.sampling import NonFiniteError


class _Slow:
    """The same model called the straightforward way (``Model.predict`` per call), which the
    watch does not fast-path."""

    evals_per_call = 1

    def __init__(self, model, cond=None):
        self.model, self.cond, self.schedule = model, cond, model.schedule

    def __call__(self, x, t):
        return self.model.predict(x, t, self.cond)


def _recording():
    """A network whose output depends on ``x`` and its time input (finite for any time input),
    recording every time input it receives."""
    seen = []

    def net(x, t, **cond):
        seen.append((t.clone(), t.dtype, t.device, tuple(t.shape), t.is_contiguous()))
        return torch.tanh(x + 1e-3 * torch.tanh(t).view((-1,) + (1,) * (x.ndim - 1)))
    return net, seen


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("solver,grid,schedule,pred,time_input,dtype", [
    ("ddim", "leading", "ddpm", "epsilon", "t", torch.float32),
    ("euler", "karras", "ddpm", "v", "t1000", torch.float32),
    ("dpmpp_2m", "logsnr", "vp", "epsilon", "lambda", torch.float64),
    ("unipc", "leading", "ddpm", "epsilon", "t", torch.float32),
    ("heun", "karras", "edm", "epsilon", "c_noise", torch.float32),  # interior stage times: memo misses
    ("euler", "flow_shift", "flow", "velocity", "t1000", torch.float32),
    ("ddim", "leading", "ddpm", "epsilon", "t", torch.float16),  # no priming for half states
    ("euler_ancestral", "karras", "ddpm", "epsilon", "sigma", torch.bfloat16),
])
def test_fast_path_is_bit_identical(gmm, solver, grid, schedule, pred, time_input, dtype):
    sched = sz.get_schedule(schedule)
    g = sz.get_grid(grid)(sched, 12)
    results = []
    for slow in (False, True):
        net, seen = _recording()
        model = sz.Model(net, pred, sched, time_input)
        den = _Slow(model) if slow else model.denoiser()
        x = sz.initial_noise(sched, g[0], (5, 4), sz.generators(range(5)), dtype=dtype)
        r = sz.sample(solver, den, x, g, generator=sz.generators(range(5)))
        results.append((r, seen))
    (fast, seen_f), (slow, seen_s) = results
    assert fast.nfe == slow.nfe and len(seen_f) == len(seen_s) == fast.denoiser_calls
    assert fast.x.dtype == slow.x.dtype == dtype
    assert torch.equal(_bits(fast.x), _bits(slow.x))
    for (tf, *meta_f), (ts, *meta_s) in zip(seen_f, seen_s):
        assert meta_f == meta_s
        assert torch.equal(_bits(tf), _bits(ts))


def test_time_input_tensors_are_not_shared_between_calls(gmm):
    """The memo lives in one sampling call: a second call builds its own time inputs."""
    sched = sz.get_schedule("ddpm")
    net, _ = _recording()
    objs = []  # the time-input tensors themselves (held, so no id is reused)
    den = sz.Model(lambda x, t, **c: (objs.append(t), net(x, t, **c))[1], "epsilon", sched).denoiser()
    g = sz.get_grid("leading")(sched, 6)
    x = sz.initial_noise(sched, g[0], (2, 4), sz.generators(range(2)))
    first = sz.sample("ddim", den, x, g).x
    n = len(objs)
    second = sz.sample("ddim", den, x, g).x
    assert torch.equal(first, second)
    assert not {id(t) for t in objs[:n]} & {id(t) for t in objs[n:]}


@pytest.mark.parametrize("bad_call", [0, 3, 7])
@pytest.mark.parametrize("solver", ["ddim", "euler", "dpmpp_2m"])
def test_nonfinite_errors_match_the_straightforward_path(gmm, solver, bad_call):
    sched = sz.get_schedule("ddpm")
    g = sz.get_grid("leading")(sched, 10)
    msgs = []
    for slow in (False, True):
        base = gmm.model(sched, "epsilon")
        calls = []

        def net(x, t, **c):
            calls.append(None)
            out = base.net(x, t, **c)
            return out * float("nan") if len(calls) - 1 == bad_call else out
        model = sz.Model(net, "epsilon", sched)
        den = _Slow(model) if slow else model.denoiser()
        x = sz.initial_noise(sched, g[0], (3, 4), sz.generators(range(3)))
        with pytest.raises(NonFiniteError) as exc:
            sz.sample(solver, den, x, g)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]
    assert f"denoiser call {bad_call} " in msgs[0]


def test_wrong_output_shape_message_matches(gmm):
    sched = sz.get_schedule("ddpm")
    g = sz.get_grid("leading")(sched, 4)
    model = sz.Model(lambda x, t, **c: x[:, :2], "epsilon", sched)
    msgs = []
    for den in (model.denoiser(), _Slow(model)):
        with pytest.raises(ValueError) as exc:
            sz.sample("ddim", den, torch.randn(2, 4), g)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]
