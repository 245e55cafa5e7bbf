"""solverzoo: a plugin-based zoo of diffusion solvers and guidance methods with a benchmark harness."""
from __future__ import annotations

__version__ = "0.1.0"

from solverzoo.conditioning import Conditioner, branch_conds
from solverzoo.guidance import Guidance, GuidedDenoiser
from solverzoo.hookspecs import hookimpl  # noqa: E402  (plugins import this first)
from solverzoo.model import Denoiser, Model, ModelDenoiser
from solverzoo.noise import generators, randn, randn_like
from solverzoo.prediction import Prediction
from solverzoo.registry import PluginConflictError, PluginError, UnknownComponentError, registry
from solverzoo.schedules import NoiseSchedule
from solverzoo.solver import Solver
from solverzoo.timegrid import GridError, TimeGrid, time_grid, validate_grid


def get_solver(name: str) -> Solver:
    """The registered solver called ``name``."""
    return registry.get("solver", name)


def get_grid(name: str) -> TimeGrid:
    """The registered time grid called ``name``."""
    return registry.get("grid", name)


def get_schedule(name: str, **options) -> NoiseSchedule:
    """A new noise schedule of the registered family ``name``."""
    return registry.get("schedule", name)(**options)


def schedule_from_spec(spec: dict) -> NoiseSchedule:
    """A new noise schedule from a saved spec ``{"name": family, **options}`` (the form kept in
    shipped weights' metadata and training configs): the one place that turns one into a schedule."""
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"schedule spec {spec!r} needs a 'name' (a registered schedule family)")
    return get_schedule(spec.pop("name"), **spec)


def get_guidance(name: str, **options) -> Guidance:
    """A new guidance method of the registered kind ``name`` with ``options`` (``scale`` ...)."""
    return registry.get("guidance", name)(**options)


from solverzoo.sampling import NonFiniteError, SampleResult, initial_noise, sample  # noqa: E402

__all__ = [
    "Conditioner", "Denoiser", "GridError", "GuidedDenoiser", "Guidance", "Model", "ModelDenoiser",
    "NoiseSchedule", "NonFiniteError", "PluginConflictError", "PluginError", "Prediction", "SampleResult",
    "Solver", "TimeGrid", "UnknownComponentError", "branch_conds", "generators", "get_grid", "get_guidance",
    "get_schedule", "get_solver", "schedule_from_spec", "hookimpl", "initial_noise", "randn", "randn_like", "registry", "sample",
    "time_grid", "validate_grid",
]
