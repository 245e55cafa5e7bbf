"""The registry through pluggy: order independence of entry-point discovery and the solver
signature contract enforced at registration."""
import importlib.metadata
import random
import re
import types

import pytest

import solverzoo as sz
from solverzoo.registry import KINDS, PluginError, Registry, SolverSignatureError


def _snapshot(reg: Registry) -> dict:
    reg.load()
    return {"entries": [(e.kind, e.name, e.origin, e.plugin) for e in reg.entries()],
            "load_order": {k: list(reg._entries[k]) for k in KINDS},  # insertion order = loading order
            "failures": [(f.plugin, f.origin, f.error) for f in reg.failures]}


def test_loading_is_identical_for_shuffled_entry_points(monkeypatch):
    expected = _snapshot(Registry())
    original = importlib.metadata.entry_points
    for seed in range(3):
        def shuffled(**kwargs):
            eps = list(original(**kwargs))
            random.Random(seed).shuffle(eps)
            return eps

        monkeypatch.setattr(importlib.metadata, "entry_points", shuffled)
        assert [ep.name for ep in shuffled(group="solverzoo")] != [ep.name for ep in original(group="solverzoo")]
        assert _snapshot(Registry()) == expected


def test_hooks_are_called_through_pluggy():
    """A plugin's hooks are hook implementations of the registry's plugin manager."""
    reg = Registry().load()
    impls = reg._pm.hook.register_solvers.get_hookimpls()
    assert {"ddim", "dpmpp", "runge_kutta"} <= {i.plugin_name for i in impls}


def test_unmarked_hook_function_still_registers():
    class Tiny(sz.Solver):
        name = "tiny_unmarked"

        def plan(self, schedule, grid):
            return None

        def loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
            return x

    mod = types.ModuleType("unmarked")
    mod.register_solvers = lambda register: register(Tiny())
    reg = Registry()
    reg.add_plugin(mod, "unmarked", "unmarked 1.0")
    assert reg.entry("solver", "tiny_unmarked").origin == "unmarked 1.0"


def _module(**hooks) -> types.ModuleType:
    mod = types.ModuleType("bad_plugin")
    for k, v in hooks.items():
        setattr(mod, k, v)
    return mod


def _base_loop(self, denoiser, x, grid, plan, *, generator=None, callback=None):
    return x


class _PositionalOption(sz.Solver):
    name = "positional_option"

    def plan(self, schedule, grid, eta=0.0):
        return None

    loop = _base_loop


class _KwargsPlan(sz.Solver):
    name = "kwargs_plan"

    def plan(self, schedule, grid, **options):
        return None

    loop = _base_loop


class _RequiredOption(sz.Solver):
    name = "required_option"

    def plan(self, schedule, grid, *, eta):
        return None

    loop = _base_loop


class _LoopPositionalGenerator(sz.Solver):
    name = "loop_positional_generator"

    def plan(self, schedule, grid):
        return None

    def loop(self, denoiser, x, grid, plan, generator=None, callback=None):
        return x


class _LoopRenamed(sz.Solver):
    name = "loop_renamed"

    def plan(self, schedule, grid):
        return None

    def loop(self, denoiser, x, grid, plan, *, generator=None, cb=None):
        return x


class _NoLoop(sz.Solver):
    name = "no_loop"

    def plan(self, schedule, grid):
        return None


BAD = [
    (_PositionalOption(), r"plan must take exactly two positional parameters \(schedule, grid\), got 3 "
                          r"\(schedule, grid, eta\); make every option keyword-only"),
    (_KwargsPlan(), r"plan must not take \*\*options"),
    (_RequiredOption(), r"plan option 'eta' has no default"),
    (_LoopPositionalGenerator(), r"loop\(.*\) differs from the base signature; declare it exactly as"),
    (_LoopRenamed(), r"differs from the base signature"),
    (_NoLoop(), r"loop is not implemented"),
    (_NoLoop, r"register an instance, not the class: register\(_NoLoop\(\)\)"),
    (object(), r"must be an instance of solverzoo.Solver"),
]


@pytest.mark.parametrize("solver,message", BAD, ids=lambda v: v if isinstance(v, str) and "\\" not in v else None)
def test_bad_signature_fails_at_registration(solver, message, monkeypatch, capsys):
    monkeypatch.delenv("SOLVERZOO_STRICT_PLUGINS", raising=False)
    reg = Registry()
    reg.add_plugin(_module(register_solvers=lambda register: register(solver)), "bad", "bad-dist 0.3")
    assert "ddim" in reg.names("solver")  # the rest load
    assert [(f.plugin, f.origin) for f in reg.failures] == [("bad", "bad-dist 0.3")]
    assert reg.failures[0].error.startswith("SolverSignatureError: ")
    assert re.search(message, reg.failures[0].error), reg.failures[0].error
    assert "bad-dist 0.3" in capsys.readouterr().err
    assert getattr(solver, "name", None) not in reg.names("solver")


def test_bad_signature_is_fatal_in_strict_mode(monkeypatch):
    monkeypatch.setenv("SOLVERZOO_STRICT_PLUGINS", "1")
    reg = Registry()
    reg.add_plugin(_module(register_solvers=lambda register: register(_PositionalOption())),
                   "bad", "bad-dist 0.3")
    with pytest.raises(PluginError, match=r"bad-dist 0\.3.*keyword-only"):
        reg.load()


def test_signature_error_is_a_plugin_error():
    assert issubclass(SolverSignatureError, PluginError)


def test_every_builtin_solver_passes_the_signature_check():
    from solverzoo.solver import signature_errors

    assert {n: signature_errors(sz.get_solver(n)) for n in sz.registry.names("solver")} == \
        {n: [] for n in sz.registry.names("solver")}
