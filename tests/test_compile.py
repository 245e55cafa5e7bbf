"""Every ODE solver's sampling loop traces as one graph under torch.compile(fullgraph=True):
no .item(), no host sync and no Python branching on tensor values inside the loop. The
'eager' backend proves it without compiling kernels."""
import pytest
import torch

import solverzoo as sz

from .conftest import ode_solvers


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
