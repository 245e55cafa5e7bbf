"""What every ``solverzoo`` command shares: the user-error type (one line, exit 2), warnings, and
``-o key=value`` option parsing."""
from __future__ import annotations

import ast
import sys


def parse_options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"solverzoo: error: option {p!r} must look like name=value")
        k, v = p.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


class UsageError(ValueError):
    """A command line a user got wrong: one line, exit 2."""


def warn(msg: str) -> None:
    print(f"solverzoo: warning: {msg}", file=sys.stderr)
