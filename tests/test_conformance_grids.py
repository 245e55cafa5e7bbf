"""Grid conformance: every registered grid that runs without options (built-in or from a plugin)
passes the packaged grid checks; a third-party grid added in-process is checked like a built-in, and
a broken one fails with a message naming the case."""
import pytest
import torch

import solverzoo as sz
from solverzoo.testing import conformance as cf
from solverzoo.testing import grid_conformance as gc

GRIDS = [n for n in sz.registry.names("grid") if cf._parametric(sz.get_grid(n))]


@pytest.mark.parametrize("name", GRIDS)
def test_grid_every_schedule(name):
    gc.check_grid_every_schedule(name)


@pytest.mark.parametrize("name", GRIDS)
def test_grid_pure(name):
    gc.check_grid_pure(name)


@pytest.mark.parametrize("name", GRIDS)
def test_grid_converges(name):
    gc.check_grid_converges(name)


def test_grid_checks_are_listed_and_calibrated_grids_are_skipped():
    names = {c.name for c in cf.applicable_checks("kl_optimal")}
    assert {"grid", "grid_every_schedule", "grid_pure", "grid_converges"} <= names
    assert cf.applicable_checks("gits") == [] and cf.applicable_checks("explicit") == []
    assert len(GRIDS) >= 16


class _Plugin:
    @staticmethod
    @sz.hookimpl
    def register_grids(register):
        @sz.time_grid("third_party_uniform")
        def good(schedule, steps):
            """Uniform in time, then sigma = 0."""
            return torch.linspace(schedule.t_max, schedule.t_zero, steps + 1, dtype=torch.float64)

        @sz.time_grid("third_party_broken")
        def broken(schedule, steps):
            """Ignores t_zero: wrong on a discrete schedule (t_zero = -1)."""
            return torch.linspace(schedule.t_max, 0.0, steps + 1, dtype=torch.float64) if schedule.t_zero == 0 else \
                torch.linspace(schedule.t_max, -5.0, steps + 1, dtype=torch.float64)

        register(good)
        register(broken)


@pytest.fixture
def plugin():
    sz.registry.add_plugin(_Plugin, "grid-conformance-test")
    yield
    sz.registry.remove_plugin("grid-conformance-test")


def test_plugin_grids_are_checked(plugin):
    result = cf.run_conformance("third_party_uniform")
    assert result.ok, result.summary()
    bad = cf.run_conformance("third_party_broken")
    assert "grid_every_schedule" in bad.failures and "on ddpm" in bad.failures["grid_every_schedule"]
