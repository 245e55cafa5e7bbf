"""Placeholder while this backbone's module is written (registers nothing yet)."""
from solverzoo import hookimpl


@hookimpl
def register_backbones(register):
    return None
