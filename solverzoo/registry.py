"""The component registry, filled by plugins discovered through entry points.

Loading is lazy (on first lookup), idempotent and deterministic: entry points are sorted by
(distribution, entry-point name). A plugin that fails to import or whose hook raises is
recorded with its distribution, version and error, and the rest load; with
``SOLVERZOO_STRICT_PLUGINS=1`` that failure is fatal. Two plugins registering one name make
that name ambiguous: looking it up raises an error naming both distributions.

Hooks are called through pluggy, one plugin at a time (``subset_hook_caller``), so that every
component keeps the distribution and version of the plugin that registered it. A solver is
checked when registered (:func:`solverzoo.solver.signature_errors`): a ``plan`` with positional
options or a ``loop`` whose signature differs from the base class's is a plugin failure.
"""
from __future__ import annotations

import difflib
import inspect
import os
import sys
import traceback
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from solverzoo import hookspecs
from solverzoo.solver import signature_errors

ENTRY_POINT_GROUP = "solverzoo"
KINDS = tuple(hookspecs.HOOKS)


class PluginError(RuntimeError):
    """A plugin failed to load or to register (fatal only in strict mode)."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name for the same kind."""


class SolverSignatureError(PluginError):
    """A registered solver's ``plan`` or ``loop`` breaks the signature contract."""


class UnknownComponentError(KeyError):
    """No component of that kind has that name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    origin: str  # "distribution version"
    plugin: str  # entry-point name


@dataclass
class Failure:
    plugin: str
    origin: str
    error: str
    detail: str = field(repr=False, default="")


def strict_mode() -> bool:
    """True when ``SOLVERZOO_STRICT_PLUGINS`` is set (1, true, yes, on): plugin failures are fatal."""
    return os.environ.get("SOLVERZOO_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, also accepting unmarked module functions named like a hook (the
    registry always did; a plugin that forgets ``@solverzoo.hookimpl`` still works)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in _HOOK_NAMES and isinstance(inspect.getattr_static(plugin, name, None), _FUNCTIONS):
            return {}  # pluggy fills in the defaults
        return opts


_HOOK_NAMES = frozenset(hookspecs.HOOKS.values())
_FUNCTIONS = (types.FunctionType, types.MethodType, staticmethod, classmethod)


def _solver_check(obj: Any) -> None:
    """Raise :class:`SolverSignatureError` when a registered solver breaks the signature contract."""
    errors = signature_errors(obj)
    if errors:
        name = getattr(obj, "name", None) or getattr(obj, "__name__", type(obj).__name__)
        raise SolverSignatureError(f"solver {name!r} ({type(obj).__module__}.{getattr(type(obj), '__qualname__', '')}) "
                                   "breaks the solver contract: " + "; ".join(errors))


class Registry:
    """Components by kind and name, filled from the ``solverzoo`` entry-point group and from
    plugins added in-process; loaded on first lookup."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._conflicts: dict[tuple[str, str], list[Entry]] = {}
        self.failures: list[Failure] = []
        self._loaded = False
        self._pm: pluggy.PluginManager | None = None
        self._extra: list[tuple[Any, str, str]] = []  # plugins added in-process (tests, notebooks)

    # -- loading ---------------------------------------------------------------------------
    def _entry_points(self) -> list[tuple[str, str, Any]]:
        """``(origin, name, entry point)`` sorted by (distribution, entry-point name), each once."""
        out = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "unknown"
            out.append((origin, ep.name, ep))
        out.sort(key=lambda r: (r[0].split(" ")[0].lower(), r[1], r[0], r[2].value))
        # one distribution may be visible twice (e.g. an editable install next to a checkout)
        seen, unique = set(), []
        for origin, name, ep in out:
            if (name, ep.value) not in seen:
                seen.add((name, ep.value))
                unique.append((origin, name, ep))
        return unique

    def load(self) -> Registry:
        """Discover and register every plugin (once): entry points first, in sorted order, then
        in-process plugins in the order they were added."""
        if self._loaded:
            return self
        self._loaded = True
        self._pm = _PluginManager(ENTRY_POINT_GROUP)
        self._pm.add_hookspecs(hookspecs)
        for origin, name, ep in self._entry_points():
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._fail(name, origin, exc)
                continue
            self._load_plugin(module, name, origin)
        for obj, name, origin in self._extra:
            self._load_plugin(obj, name, origin)
        return self

    def _load_plugin(self, obj: Any, plugin: str, origin: str) -> None:
        """Register one plugin with the plugin manager and call each of its hooks through it."""
        try:
            self._pm.register(obj, name=plugin)
        except Exception as exc:  # noqa: BLE001 - e.g. a hook with parameters the spec lacks
            self._fail(plugin, origin, exc)
            return
        others = [p for p in self._pm.get_plugins() if p is not obj]
        for kind, hook in hookspecs.HOOKS.items():
            if not any(impl.plugin is obj for impl in getattr(self._pm.hook, hook).get_hookimpls()):
                continue
            call = self._pm.subset_hook_caller(hook, remove_plugins=others)  # this plugin's impl only
            try:
                call(register=self._registrar(kind, plugin, origin))
            except PluginConflictError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._fail(plugin, origin, exc)

    def _registrar(self, kind: str, plugin: str, origin: str):
        """The ``register(obj, name=None)`` callback handed to one plugin's hook of one kind."""

        def register(obj: Any, name: str | None = None) -> None:
            if kind == "solver":
                _solver_check(obj)
            self._add(Entry(kind, name or getattr(obj, "name"), obj, origin, plugin))

        return register

    def _fail(self, plugin: str, origin: str, exc: BaseException) -> None:
        failure = Failure(plugin, origin, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        self.failures.append(failure)
        if strict_mode():
            raise PluginError(f"plugin {plugin!r} from {origin} failed: {failure.error} "
                              "(SOLVERZOO_STRICT_PLUGINS is set, so this is fatal)") from exc
        print(f"solverzoo: warning: plugin {plugin!r} from {origin} failed and was skipped: {failure.error}",
              file=sys.stderr)

    def _add(self, entry: Entry) -> None:
        table = self._entries[entry.kind]
        key = (entry.kind, entry.name)
        if key in self._conflicts:
            self._conflicts[key].append(entry)
            return
        if entry.name in table:
            first = table.pop(entry.name)
            self._conflicts[key] = [first, entry]
            msg = self._conflict_message(entry.kind, entry.name)
            if strict_mode():
                raise PluginConflictError(msg)
            print(f"solverzoo: warning: {msg}", file=sys.stderr)
            return
        table[entry.name] = entry

    def _conflict_message(self, kind: str, name: str) -> str:
        who = " and ".join(f"plugin {e.plugin!r} ({e.origin})" for e in self._conflicts[(kind, name)])
        return (f"{kind} name {name!r} is registered by {who}; uninstall one of the distributions "
                "or rename the component")

    # -- in-process plugins (tests, notebooks) ---------------------------------------------
    def add_plugin(self, obj: Any, name: str, origin: str = "<in-process>") -> None:
        """Register a plugin object (a module or any hashable object with hook functions) in-process.

        Args:
            obj: the plugin: its attributes named like hooks are called (marked with
                ``@solverzoo.hookimpl`` or not).
            name: the plugin's name (unique; :meth:`remove_plugin` takes it).
            origin: what failures and conflicts name as its distribution and version.

        Raises:
            TypeError: an unhashable object (pluggy keys plugins by identity and hash).
        """
        try:
            hash(obj)
        except TypeError:
            raise TypeError(f"plugin {name!r}: a plugin must be hashable (a module, a class or an ordinary "
                            f"object), got an unhashable {type(obj).__name__}") from None
        self._extra.append((obj, name, origin))
        if self._loaded:
            self._load_plugin(obj, name, origin)

    def remove_plugin(self, name: str) -> None:
        """Forget the in-process plugin called ``name`` (the next lookup reloads everything)."""
        self._extra = [e for e in self._extra if e[1] != name]
        self.reset()

    def reset(self) -> None:
        """Forget everything loaded; the next lookup rediscovers plugins."""
        self._entries = {k: {} for k in KINDS}
        self._conflicts = {}
        self.failures = []
        self._loaded = False
        self._pm = None

    # -- lookup ----------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def entry(self, kind: str, name: str) -> Entry:
        if kind not in self._entries:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {list(KINDS)}")
        self.load()
        if (kind, name) in self._conflicts:
            raise PluginConflictError(self._conflict_message(kind, name))
        table = self._entries[kind]
        if name not in table:
            names = sorted(table)
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownComponentError(f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(names) or 'none'}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        self.load()
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        self.load()
        return [e for k in KINDS for _, e in sorted(self._entries[k].items())]

    def conflicts(self) -> dict[tuple[str, str], list[Entry]]:
        self.load()
        return dict(self._conflicts)


registry = Registry()
