"""The component registry, filled by plugins discovered through entry points.

Loading is lazy (on first lookup), idempotent and deterministic: entry points are sorted by
(distribution, entry-point name). A plugin that fails to import or whose hook raises is
recorded with its distribution, version and error, and the rest load; with
``SOLVERZOO_STRICT_PLUGINS=1`` that failure is fatal. Two plugins registering one name make
that name ambiguous: looking it up raises an error naming both distributions.
"""
from __future__ import annotations

import difflib
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from solverzoo import hookspecs

ENTRY_POINT_GROUP = "solverzoo"
KINDS = tuple(hookspecs.HOOKS)


class PluginError(RuntimeError):
    """A plugin failed to load or to register (fatal only in strict mode)."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name for the same kind."""


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
    return os.environ.get("SOLVERZOO_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._conflicts: dict[tuple[str, str], list[Entry]] = {}
        self.failures: list[Failure] = []
        self._loaded = False
        self._extra: list[tuple[Any, str, str]] = []  # plugins added in-process (tests, notebooks)

    # -- loading ---------------------------------------------------------------------------
    def _entry_points(self) -> list[tuple[str, str, Any]]:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        out = []
        for ep in eps:
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "unknown"
            out.append((origin, ep.name, ep))
        out.sort(key=lambda r: (r[0].split(" ")[0].lower(), r[1]))
        # one distribution may be visible twice (e.g. an editable install next to a checkout)
        seen, unique = set(), []
        for origin, name, ep in out:
            if (name, ep.value) not in seen:
                seen.add((name, ep.value))
                unique.append((origin, name, ep))
        return unique

    def load(self) -> "Registry":
        """Discover and register every plugin (once)."""
        if self._loaded:
            return self
        self._loaded = True
        pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        plugins: list[tuple[str, str, Any]] = []
        for origin, name, ep in self._entry_points():
            try:
                module = ep.load()
                pm.register(module, name=name)
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._fail(name, origin, exc)
                continue
            plugins.append((origin, name, module))
        for obj, name, origin in self._extra:
            pm.register(obj, name=name)
            plugins.append((origin, name, obj))
        for origin, name, module in plugins:
            self._register_plugin(module, name, origin)
        return self

    def _fail(self, plugin: str, origin: str, exc: BaseException) -> None:
        failure = Failure(plugin, origin, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        self.failures.append(failure)
        if strict_mode():
            raise PluginError(f"plugin {plugin!r} from {origin} failed: {failure.error} "
                              "(SOLVERZOO_STRICT_PLUGINS is set, so this is fatal)") from exc
        print(f"solverzoo: warning: plugin {plugin!r} from {origin} failed and was skipped: {failure.error}",
              file=sys.stderr)

    def _register_plugin(self, module: Any, plugin: str, origin: str) -> None:
        for kind, hook in hookspecs.HOOKS.items():
            fn = getattr(module, hook, None)
            if fn is None:
                continue

            def register(obj: Any, name: str | None = None, _kind: str = kind) -> None:
                self._add(Entry(_kind, name or getattr(obj, "name"), obj, origin, plugin))

            try:
                fn(register=register)
            except PluginConflictError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._fail(plugin, origin, exc)

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
        """Register a plugin object (a module or any object with hook functions) in-process."""
        self._extra.append((obj, name, origin))
        if self._loaded:
            self._register_plugin(obj, name, origin)

    def remove_plugin(self, name: str) -> None:
        self._extra = [e for e in self._extra if e[1] != name]
        self.reset()

    def reset(self) -> None:
        """Forget everything loaded; the next lookup rediscovers plugins."""
        self._entries = {k: {} for k in KINDS}
        self._conflicts = {}
        self.failures = []
        self._loaded = False

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
