"""The plugin system: discovery through entry points, isolation of broken plugins, strict
mode, name conflicts, in-process registration, and a real third-party package end to end."""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import solverzoo as sz
from solverzoo.registry import PluginConflictError, PluginError, Registry

ROOT = Path(__file__).resolve().parents[1]


def test_builtins_come_from_entry_points():
    """Built-ins are found through the 'solverzoo' entry-point group of the installed
    distribution, exactly like a third-party package."""
    entries = {(e.kind, e.name): e for e in sz.registry.entries()}
    for name in ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                 "unipc", "lms", "midpoint", "rk4", "dop853"]:
        assert entries[("solver", name)].origin.startswith("solverzoo ")
    for g in ["leading", "linspace", "trailing", "karras", "logsnr", "flow_shift", "explicit"]:
        assert ("grid", g) in entries
    for g in ["cfg", "negative_prompt", "cfg_rescale", "interval", "apg", "cfg_zero_star"]:
        assert ("guidance", g) in entries
    assert {"ddpm", "vp", "edm", "flow"} <= set(sz.registry.names("schedule"))


def test_loading_is_deterministic_and_idempotent():
    a, b = Registry(), Registry()
    assert [(e.kind, e.name, e.origin) for e in a.entries()] == [(e.kind, e.name, e.origin) for e in b.entries()]
    n = len(a.entries())
    a.load()
    assert len(a.entries()) == n


def _plugin(**hooks):
    mod = types.ModuleType("fake_plugin")
    for k, v in hooks.items():
        setattr(mod, k, v)
    return mod


class _Tiny(sz.Solver):
    name = "tiny_test_solver"

    def plan(self, schedule, grid):
        return None

    def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
        return x


def test_in_process_plugin_register_and_unregister():
    reg = Registry()
    reg.add_plugin(_plugin(register_solvers=lambda register: register(_Tiny())), "tiny", "tiny-dist 1.0")
    assert reg.entry("solver", "tiny_test_solver").origin == "tiny-dist 1.0"
    reg.remove_plugin("tiny")
    with pytest.raises(sz.UnknownComponentError):
        reg.get("solver", "tiny_test_solver")


def _raise(register):
    raise RuntimeError("boom in hook")


def test_broken_plugin_is_reported_and_the_rest_load(capsys, monkeypatch):
    monkeypatch.delenv("SOLVERZOO_STRICT_PLUGINS", raising=False)
    reg = Registry()
    reg.add_plugin(_plugin(register_solvers=_raise), "broken", "broken-dist 0.1")
    assert "ddim" in reg.names("solver")
    assert [(f.plugin, f.origin) for f in reg.failures] == [("broken", "broken-dist 0.1")]
    assert "boom in hook" in reg.failures[0].error
    assert "broken" in capsys.readouterr().err


def test_strict_mode_makes_a_broken_plugin_fatal(monkeypatch):
    monkeypatch.setenv("SOLVERZOO_STRICT_PLUGINS", "1")
    reg = Registry()
    reg.add_plugin(_plugin(register_solvers=_raise), "broken", "broken-dist 0.1")
    with pytest.raises(PluginError, match="broken-dist 0.1.*boom in hook"):
        reg.load()


def test_duplicate_names_name_both_distributions(monkeypatch):
    monkeypatch.delenv("SOLVERZOO_STRICT_PLUGINS", raising=False)
    reg = Registry()
    reg.add_plugin(_plugin(register_solvers=lambda register: register(_Tiny())), "one", "dist-one 1.0")
    reg.add_plugin(_plugin(register_solvers=lambda register: register(_Tiny())), "two", "dist-two 2.0")
    with pytest.raises(PluginConflictError, match=r"dist-one 1\.0.*dist-two 2\.0"):
        reg.get("solver", "tiny_test_solver")
    assert "ddim" in reg.names("solver")  # everything else still works
    monkeypatch.setenv("SOLVERZOO_STRICT_PLUGINS", "1")
    strict = Registry()
    strict.add_plugin(_plugin(register_solvers=lambda register: register(_Tiny())), "one", "dist-one 1.0")
    strict.add_plugin(_plugin(register_solvers=lambda register: register(_Tiny())), "two", "dist-two 2.0")
    with pytest.raises(PluginConflictError):
        strict.load()


def test_duplicate_of_a_builtin_is_a_conflict(monkeypatch):
    monkeypatch.delenv("SOLVERZOO_STRICT_PLUGINS", raising=False)
    reg = Registry()

    class FakeDDIM(_Tiny):
        name = "ddim"

    reg.add_plugin(_plugin(register_solvers=lambda register: register(FakeDDIM())), "impostor", "impostor 9.9")
    with pytest.raises(PluginConflictError, match=r"solverzoo .*impostor 9\.9"):
        reg.get("solver", "ddim")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "solverzoo.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_plugins_json_lists_every_component():
    out = _cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    by = {(r["kind"], r["name"]): r for r in rows}
    assert by[("solver", "dpmpp_2m")]["order"] == 2
    assert by[("solver", "ddpm")]["stochastic"] is True
    assert by[("solver", "heun")]["evals_per_step"] == 2
    assert all({"kind", "name", "origin"} <= set(r) for r in rows)
    assert {r["kind"] for r in rows} >= {"solver", "grid", "schedule", "guidance"}
    table = _cli("plugins")
    assert table.returncode == 0 and "dpmpp_2m" in table.stdout and "solverzoo 0.1.0" in table.stdout


@pytest.fixture(scope="module")
def installed_examples(tmp_path_factory):
    """Install the example package and a deliberately broken one with pip into a temporary
    target directory: a real distribution with real entry points, outside the venv."""
    target = tmp_path_factory.mktemp("site")
    broken = tmp_path_factory.mktemp("broken_src")
    (broken / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "solverzoo-broken-example"
        version = "6.6.6"
        [project.entry-points.solverzoo]
        broken = "solverzoo_broken_example"
        [tool.setuptools]
        packages = ["solverzoo_broken_example"]
    """))
    (broken / "solverzoo_broken_example").mkdir()
    (broken / "solverzoo_broken_example" / "__init__.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    for src in (ROOT / "examples" / "solverzoo-ralston", broken):
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    return target


def test_third_party_package_end_to_end(installed_examples):
    env = {"PYTHONPATH": str(installed_examples)}
    rows = json.loads(_cli("plugins", "--json", env=env).stdout)
    by = {(r["kind"], r["name"]): r for r in rows}
    assert by[("solver", "ralston")]["origin"] == "solverzoo-ralston 0.1.0"
    assert by[("solver", "ralston")]["order"] == 2
    failed = by[("plugin", "broken")]
    assert failed["origin"] == "solverzoo-broken-example 6.6.6" and "broken on purpose" in failed["error"]
    # verify works on it the moment it is installed, and measures its order
    out = _cli("verify", "ralston", "--json", "--n", "32", env=env)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["solver"] == "ralston" and rep["declared_order"] == 2
    assert abs(rep["empirical_order"] - 2) < 0.5
    assert {"nfe", "median_error", "mode_flip_rate"} <= set(rep["rows"][0])
    strict = _cli("plugins", env={**env, "SOLVERZOO_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0 and "solverzoo-broken-example 6.6.6" in strict.stderr


def test_conformance_command_passes_the_installed_example(installed_examples):
    """`solverzoo conformance` runs the packaged checks on a third-party solver the moment it is installed."""
    out = _cli("conformance", "ralston", env={"PYTHONPATH": str(installed_examples)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ralston: 9/9 checks passed" in out.stdout


def _broken_solvers():
    from solverzoo.kit import EULER_TABLEAU, RungeKutta, Solver, table

    class FakeSecondOrder(RungeKutta):
        """Euler claiming second order."""

        name, order = "fake_second_order", 2
        tableau = EULER_TABLEAU

    class Overshoot(Solver):
        """DDIM that ignores the grid's last time: its last step always goes to clean data."""

        name = "overshoot"

        def plan(self, schedule, grid):
            tab = table(schedule, grid)
            return [(tab.alpha[i + 1], tab.sigma[i + 1]) if i < tab.n - 1 else (1.0, 0.0) for i in range(tab.n)]

        def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
            for i, (a, s) in enumerate(plan):
                pred = denoiser(x, grid[i])
                x = pred.lin(a, s)
                if callback is not None:
                    callback({"i": i, "t": grid[i + 1], "x": x, "x0": pred.x0})
            return x

    return FakeSecondOrder(), Overshoot()


def test_conformance_command_fails_broken_solvers(capsys):
    from solverzoo.cli import main

    def register_solvers(register):
        for solver in _broken_solvers():
            register(solver)

    sz.registry.add_plugin(_plugin(register_solvers=register_solvers), "broken_solvers", "broken-solvers 0.0")
    try:
        assert main(["conformance", "fake_second_order", "overshoot", "euler"]) == 1
    finally:
        sz.registry.remove_plugin("broken_solvers")
    lines = capsys.readouterr().out.splitlines()
    summaries = [line for line in lines if not line.startswith("  ")]
    assert summaries[0] == "fake_second_order: 8/9 checks passed" and summaries[2] == "euler: 9/9 checks passed"
    assert summaries[1].startswith("overshoot: ") and summaries[1] != "overshoot: 9/9 checks passed"
    failed = [line.split(":")[0].strip() for line in lines if line.startswith("  FAILED")]
    assert failed[0] == "FAILED empirical_order" and "FAILED reaches_grid_end" in failed[1:]
    assert "declares order 2 but converges at order 1" in "\n".join(lines)


def test_conformance_command_names_unknown_components(capsys):
    from solverzoo.cli import main

    assert main(["conformance", "eulr"]) == 2
    assert "no solver or grid is registered as 'eulr'. Did you mean 'euler'" in capsys.readouterr().err
