"""Plugin hooks. A plugin is a module exposing any of these functions, marked with
``@solverzoo.hookimpl`` and listed under the ``solverzoo`` entry-point group::

    [project.entry-points.solverzoo]
    my_solver = "my_package.my_module"

Each hook receives ``register(obj, name=None)``; ``name`` defaults to ``obj.name``.
"""
import pluggy

hookspec = pluggy.HookspecMarker("solverzoo")
hookimpl = pluggy.HookimplMarker("solverzoo")


@hookspec
def register_solvers(register):
    """Register :class:`solverzoo.Solver` instances."""


@hookspec
def register_grids(register):
    """Register :class:`solverzoo.TimeGrid` objects (see :func:`solverzoo.time_grid`)."""


@hookspec
def register_schedules(register):
    """Register noise-schedule factories: callables ``(**options) -> NoiseSchedule``."""


@hookspec
def register_guidance(register):
    """Register guidance factories: callables ``(**options) -> Guidance``."""


@hookspec
def register_backbones(register):
    """Register backbone factories: callables ``(device="cpu") -> solverzoo.backbone.Backbone``."""


@hookspec
def register_caches(register):
    """Register cache factories: :class:`solverzoo.caching.Cache` subclasses (or callables
    ``(**options) -> Cache``)."""


@hookspec
def register_cache_stacks(register):
    """Register how caches reach a network's transformer block stack:
    :class:`solverzoo.caching.StackSpec` objects whose ``name`` is the network class's name (a
    network may instead carry the spec itself as a ``cache_stack`` attribute)."""


@hookspec
def register_perturb_specs(register):
    """Register where attention-perturbation guidance (pag, seg, sag, slg) reaches a network:
    :class:`solverzoo.perturb.PerturbSpec` objects whose ``name`` is the network class's name (a
    network may instead carry the spec itself as a ``perturb_spec`` attribute)."""


HOOKS = {
    "solver": "register_solvers",
    "grid": "register_grids",
    "schedule": "register_schedules",
    "guidance": "register_guidance",
    "backbone": "register_backbones",
    "cache": "register_caches",
    "cache_stack": "register_cache_stacks",
    "perturb_spec": "register_perturb_specs",
}
