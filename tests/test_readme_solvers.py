"""The solver code in the README's "Write your own solver" section runs and passes conformance."""
import re
import types
from pathlib import Path

import pytest

import solverzoo as sz
from solverzoo.testing import run_conformance

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_snippets() -> list[str]:
    text = README.read_text()
    start = text.index("## Write your own solver")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.fixture(scope="module")
def readme_plugin():
    """Execute the snippets in order as one module and register it in-process."""
    snippets = _section_snippets()
    assert len(snippets) == 3, "expected the tableau, the multistep method and the hook"
    module = types.ModuleType("readme_solvers")
    for code in snippets:
        exec(compile(code, str(README), "exec"), module.__dict__)
    sz.registry.add_plugin(module, "readme_solvers", "readme 0.0")
    yield module
    sz.registry.remove_plugin("readme_solvers")


@pytest.mark.parametrize("name", ["ralston", "ab2"])
def test_readme_solver_passes_conformance(readme_plugin, name):
    assert sz.registry.entry("solver", name).origin == "readme 0.0"
    result = run_conformance(name)
    assert result.ok, result.summary()
    assert len(result.passed) == 9
