"""Every ODE solver's sampling loop traces as one graph under torch.compile(fullgraph=True):
no .item(), no host sync and no Python branching on tensor values inside the loop. The
'eager' backend proves it without compiling kernels.

A second, direct check (DESIGN.md pitfall 6): every host read of a tensor value (``.item()``,
``bool(t)``, ``float(t)``, ``int(t)``, ``if t:``) dispatches ``aten::_local_scalar_dense``, which
is a device-to-host sync on an accelerator; a dispatch mode records the ops each solver's ``loop``
runs (outside the denoiser) and asserts that op never occurs. (``.tolist()`` / ``.numpy()`` of a
CPU tensor dispatch no op; the fullgraph test above catches those.)"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import solverzoo as sz
from solverzoo.kit import table

from .conftest import ode_solvers

HOST_READ = "aten._local_scalar_dense"


@pytest.mark.parametrize("name", ode_solvers())
def test_loop_compiles_fullgraph(gmm, name):
    torch._dynamo.reset()
    sched = sz.get_schedule("ddpm")
    den = gmm.model(sched, "v").denoiser()
    solver = sz.get_solver(name)
    grid = sz.get_grid("karras")(sched, 8)
    plan = solver.plan(sched, grid)

    def run(x):
        return solver.loop(den, x, grid, plan)

    x = torch.randn(3, 4, dtype=torch.float64)
    compiled = torch.compile(run, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), run(x))


# -- no host sync inside the loop ------------------------------------------------------------
class _HostReads(TorchDispatchMode):
    """Records the aten ops dispatched outside the denoiser (``in_denoiser`` > 0 pauses it)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.in_denoiser = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_denoiser:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def host_reads_in_loop(solver, gmm, schedule="ddpm", grid_name="karras", steps=8, generator=None) -> list[str]:
    """The host reads (``aten._local_scalar_dense``) a solver's ``loop`` makes outside the
    denoiser, on ``steps`` steps of ``grid_name`` (plan made first, outside the recording)."""
    sched = sz.get_schedule(schedule)
    inner = gmm.model(sched, "v").denoiser()
    grid = sz.get_grid(grid_name)(sched, steps)
    plan = solver.plan(sched, grid)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mode = _HostReads()

    class Den:  # the model may sync (not the solver's fault); only the solver's own ops count
        schedule = sched

        def __call__(self, x, t):
            mode.in_denoiser += 1
            try:
                return inner(x, t)
            finally:
                mode.in_denoiser -= 1

    with mode:
        out = solver.loop(Den(), x, grid, plan, generator=generator)
    assert torch.isfinite(out).all()
    return [op for op in mode.ops if op.startswith(HOST_READ)]


@pytest.mark.parametrize("grid_name,steps", [("karras", 8), ("logsnr", 3), ("trailing", 1)])
@pytest.mark.parametrize("name", [n for n in sz.registry.names("solver") if not sz.get_solver(n).adaptive])
def test_loop_makes_no_host_sync(gmm, name, grid_name, steps):
    """No .item() / bool() / float() / int() on a tensor inside any solver's loop (SDE samplers
    included, with per-sample generators). Adaptive reference solvers (scipy) are exempt."""
    gens = sz.generators(range(3)) if sz.get_solver(name).stochastic else None
    reads = host_reads_in_loop(sz.get_solver(name), gmm, grid_name=grid_name, steps=steps, generator=gens)
    assert not reads, (f"{name}: its loop reads tensor values on the host {len(reads)} time(s) on {steps} step(s) of "
                       f"{grid_name} ({reads[0]}): precompute per-step numbers in plan() and use torch.where, not .item()")


class _Syncing(sz.Solver):
    """A deliberately bad Euler: branches on a tensor value inside its loop."""

    name = "bad_sync"

    def __init__(self, read):
        self.read = read

    def plan(self, schedule, grid):
        tab = table(schedule, grid)
        return [(tab.alpha[i + 1], tab.sigma[i + 1]) for i in range(tab.n)]

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        for i, (a, s) in enumerate(plan):
            pred = denoiser(x, grid[i])
            x = pred.lin(a, s)
            if self.read(x.abs().max()) > 1e6:  # the host sync under test
                x = x.clamp(-1e6, 1e6)
        return x


@pytest.mark.parametrize("read", [lambda t: t.item(), bool, float, int, lambda t: 1.0 if t else 0.0],
                         ids=["item", "bool", "float", "int", "if"])
def test_host_sync_detector_flags_a_syncing_loop(gmm, read):
    """The detector above can fail: a loop that reads a tensor on the host once per step is flagged
    once per step."""
    reads = host_reads_in_loop(_Syncing(read), gmm, steps=8)
    assert len(reads) == 8, reads
