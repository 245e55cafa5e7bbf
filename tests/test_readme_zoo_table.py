"""The README's zoo table is the one the registry generates (`solverzoo plugins --markdown`)."""
import re
from pathlib import Path

import pytest

from solverzoo.cli import main
from solverzoo.cli_components import TABLE_END, TABLE_START, replace_table, zoo_table
from solverzoo.registry import registry

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "solverzoo plugins --markdown --readme README.md"


def test_readme_zoo_table_is_current():
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text, (
        f"README.md has no zoo table between {TABLE_START} and {TABLE_END}; add the two marker lines and run `{REGENERATE}`")
    current = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n")
    assert current == zoo_table().strip("\n"), f"README.md's zoo table is stale: run `{REGENERATE}`"


def _cells(row: str) -> list[str]:
    return re.split(r"(?<!\\)\|", row)  # an escaped \| inside a cell is not a column break


def test_table_lists_every_builtin_solver_grid_and_guidance():
    rows = zoo_table().splitlines()
    assert rows[0].startswith("| name | kind | order | evals/step | stochastic |") and len(_cells(rows[1])) == 11
    names = {_cells(r)[1].strip().strip("`") for r in rows[2:]}
    builtin = {e.name for e in registry.entries()
               if e.kind in ("solver", "grid", "guidance") and e.origin.split(" ")[0] == "solverzoo"}
    assert names == builtin
    heun = _cells(next(r for r in rows if r.startswith("| `heun` |")))
    assert [c.strip() for c in heun[2:6]] == ["solver", "2", "2", "no"] and "Karras et al. 2022" in heun[7]
    assert heun[8].strip() == "k-diffusion, diffusers, ComfyUI"  # the peers column (solverzoo/peers.py)
    restart = _cells(next(r for r in rows if r.startswith("| `restart` |")))
    assert restart[8].strip() == "solverzoo only"
    assert all(len(_cells(r)) == 11 for r in rows), "a docstring broke the table (an unescaped '|')"


def test_readme_option_rewrites_between_markers(tmp_path, capsys):
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n{TABLE_START}\nold\n{TABLE_END}\n\nafter\n")
    assert main(["plugins", "--readme", str(doc)]) == 0
    assert doc.read_text() == f"# x\n\n{TABLE_START}\n{zoo_table()}{TABLE_END}\n\nafter\n"
    assert main(["plugins", "--markdown"]) == 0 and capsys.readouterr().out.endswith(zoo_table())
    with pytest.raises(ValueError, match="needs exactly one"):
        replace_table("no markers here", zoo_table())
