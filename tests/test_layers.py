"""The three floors stay separate: the library (``solverzoo``) imports neither the embedded models
(``solverzoo.models``) nor the bench (``solverzoo.bench``) nor any heavy or networked dependency;
the package has no import cycles; modules and functions stay small."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("solverzoo", "solverzoo_builtin")
FORBIDDEN = ("hydra", "omegaconf", "pandas", "matplotlib", "transformers", "torchmetrics", "diffusers",
             "solverzoo.models", "solverzoo.bench")
LIBRARY_ENTRY_POINTS = ("solverzoo", "solverzoo.kit", "solverzoo.caching", "solverzoo.backbone", "solverzoo.seeds",
                        "solverzoo.saved_grids", "solverzoo.testing", "solverzoo.testbeds")


def _loaded_after(stmt: str) -> list[str]:
    code = f"import sys, json\n{stmt}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", LIBRARY_ENTRY_POINTS)
def test_library_imports_no_models_bench_or_heavy_dependency(module):
    loaded = _loaded_after(f"import {module}")
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, f"`import {module}` loaded {bad}: the library must not import the models, the bench or these"


def test_loading_the_plugins_imports_no_weights_or_harness():
    """Discovering every built-in plugin (registry.load) stays light: backbones load their weights
    only when asked for."""
    loaded = _loaded_after("import solverzoo; solverzoo.registry.load()")
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in ("solverzoo.bench", "hydra",
                                                                                      "pandas", "matplotlib",
                                                                                      "torchmetrics")))
    assert not bad, f"loading the plugins imported {bad}"


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _top_level_imports(path: Path, name: str, modules: dict) -> set[str]:
    """Package-internal modules imported at module level (imports inside functions are lazy and
    cannot form an import-time cycle)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _top_level_imports(p, m, mods) for m, p in mods.items()}
    # a package importing its own submodule is not a cycle to report; drop parent -> child edges
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles = _find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modules_and_functions_stay_small():
    """No module over 400 lines and no function over 80 (the limits the architecture issue set)."""
    too_big = []
    for name, path in sorted(_modules().items()):
        src = path.read_text()
        if src.count("\n") > 400:
            too_big.append(f"module {name}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    too_big.append(f"function {name}.{node.name}: {n} lines")
    assert not too_big, "split these: " + "; ".join(too_big)


def test_cycle_detector_can_fail(tmp_path):
    """The cycle check sees a real cycle (two modules importing each other at top level)."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from pkg import b\n")
    b.write_text("from pkg.a import x\n")
    mods = {"pkg.a": a, "pkg.b": b}
    assert _top_level_imports(a, "pkg.a", mods) == {"pkg.b"}
    assert _top_level_imports(b, "pkg.b", mods) == {"pkg.a"}
    graph = {m: _top_level_imports(p, m, mods) for m, p in mods.items()}
    assert _find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert _find_cycles({"pkg.a": {"pkg.b"}, "pkg.b": set()}) == []
