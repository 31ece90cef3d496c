"""Every kind, from gradsweep's own declaration modules and from installed plugins.

Built-in kinds and plugin kinds come through one loader (pytest's way): a *declaration module*
holds ``KINDS``, a list of :class:`~gradsweep.declare.Kind`. gradsweep's own modules are listed
in :data:`BUILTIN`; a plugin's are found through the entry-point group ``gradsweep.plugins``
(see ``docs/plugins.md``). Loading imports declaration modules only: implementations are
imported by :func:`implementation` when a cell needs them.

A plugin that fails (its module does not import, a declaration is malformed, a name clashes with
another package's) is set aside with a message naming the plugin and its package: specs that do
not use it work as before, and a spec that names one of its kinds is told why it is missing.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping

from gradsweep.declare import (
    ROLES, Choice, Group, Kind, OneOf, Param, Union, did_you_mean,
)

__all__ = [
    "ENTRY_POINT_GROUP", "BUILTIN", "Plugin", "Registry", "registry", "kinds", "kind",
    "implementation", "resolve", "label", "reload", "builtin",
]

ENTRY_POINT_GROUP = "gradsweep.plugins"

#: gradsweep's own declaration modules, loaded exactly as a plugin's are
BUILTIN = ("gradsweep.experiments", "gradsweep.problems", "gradsweep.estimators")


@dataclass
class Plugin:
    """One declaration module: where it came from and what it declared (or why it failed)."""

    name: str  # the entry point's name ("builtin" for gradsweep's own modules)
    module: str
    package: str
    version: str
    kinds: list[Kind] = field(default_factory=list)
    error: str | None = None

    @property
    def where(self) -> str:
        return f"plugin {self.name!r} (module {self.module}, package {self.package} {self.version})"


class Registry:
    """Kinds by role and name, and the plugins they came from."""

    def __init__(self) -> None:
        self.by_role: dict[str, dict[str, Kind]] = {role: {} for role in ROLES}
        self.plugins: list[Plugin] = []
        self._impls: dict[tuple[str, str], Any] = {}
        self._resolved: dict[tuple[str, str], Group] = {}

    # -- loading ---------------------------------------------------------------------------
    def add_module(self, module: Any, plugin: Plugin) -> None:
        """Register a declaration module's ``KINDS`` all together, or none with ``plugin.error``."""
        declared = getattr(module, "KINDS", None)
        if callable(declared):
            declared = declared()
        problems: list[str] = []
        if not isinstance(declared, (list, tuple)):
            problems.append(f"{plugin.module} has no list KINDS of gradsweep.declare kinds")
            declared = []
        seen: set[tuple[str, str]] = set()
        for item in declared:
            if not isinstance(item, Kind):
                problems.append(f"KINDS holds {item!r}, not a gradsweep.declare kind")
                continue
            for issue in item.problems():
                problems.append(f"{item.role} {item.name!r}: {issue}")
            key = (item.role, item.name)
            if key in seen:
                problems.append(f"{item.role} {item.name!r} is declared twice")
            seen.add(key)
            other = self.by_role.get(item.role, {}).get(item.name)
            if other is not None:
                problems.append(
                    f"{item.role} {item.name!r} clashes with the one of package {other.package} ({other.source})"
                )
        if problems:
            plugin.error = "; ".join(problems)
            self.plugins.append(plugin)
            return
        for item in declared:
            kind = item.with_source(plugin.package, plugin.version, plugin.module)
            self.by_role[kind.role][kind.name] = kind
            plugin.kinds.append(kind)
        self.plugins.append(plugin)

    def load_builtin(self) -> None:
        from gradsweep import __version__

        for name in BUILTIN:
            plugin = Plugin("builtin", name, "gradsweep", __version__)
            self.add_module(importlib.import_module(name), plugin)
            if plugin.error:  # a broken built-in is a bug, not a user's plugin
                raise RuntimeError(f"gradsweep's own declarations are broken: {plugin.error}")

    def load_plugins(self) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else ""
            plugin = Plugin(ep.name, ep.value, package, version)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any failure of a plugin's import is reported
                plugin.error = f"import failed: {type(exc).__name__}: {exc}"
                self.plugins.append(plugin)
                continue
            self.add_module(module, plugin)

    # -- queries ---------------------------------------------------------------------------
    @property
    def broken(self) -> list[Plugin]:
        return [p for p in self.plugins if p.error]

    def broken_hint(self) -> str:
        """A sentence naming the plugins that failed to load (for unknown-kind messages)."""
        if not self.broken:
            return ""
        return " (not loaded: " + "; ".join(f"{p.where}: {p.error}" for p in self.broken) + ")"

    def kind(self, role: str, name: str) -> Kind:
        table = self.by_role.get(role)
        if table is None:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        if name not in table:
            raise ValueError(
                f"{role}: unknown kind {name!r}{did_you_mean(name, table)} "
                f"(known: {', '.join(table)}){self.broken_hint()}"
            )
        return table[name]

    def implementation(self, role: str, name: str) -> Any:
        """The implementation object of a kind, imported on first use."""
        key = (role, name)
        if key not in self._impls:
            kind = self.kind(role, name)
            impl = kind.impl
            if isinstance(impl, str):
                module_name, _, attr = impl.partition(":")
                try:
                    obj: Any = importlib.import_module(module_name)
                    for part in attr.split("."):
                        obj = getattr(obj, part)
                except (ImportError, AttributeError) as exc:
                    raise RuntimeError(
                        f"{role} {name!r} (package {kind.package}): its implementation {impl!r} "
                        f"could not be loaded: {type(exc).__name__}: {exc}"
                    ) from exc
                impl = obj
            self._impls[key] = impl
        return self._impls[key]

    # -- resolution of declarations into catalog nodes --------------------------------------
    def group(self, role: str, name: str) -> Group:
        """The catalog group of a kind: its parameters with every Choice/OneOf resolved."""
        key = (role, name)
        if key not in self._resolved:
            k = self.kind(role, name)
            self._resolved[key] = self.resolve(Group(dict(k.params), doc=k.doc, checks=tuple(k.checks)))
        return self._resolved[key]

    def union(self, role: str, **kw: Any) -> Union:
        """A union over every kind of ``role``."""
        return Union({n: self.group(role, n) for n in self.by_role[role]}, hint=self.broken_hint(), **kw)

    def resolve(self, node: Any) -> Any:
        """A declaration node with its :class:`Choice` and :class:`OneOf` parts made concrete."""
        if isinstance(node, OneOf):
            return self.union(node.role, doc=node.doc, many=node.many, nullable=node.nullable,
                              default=node.default, when=node.when)
        if isinstance(node, Union):
            return Union({n: self.resolve(g) for n, g in node.kinds.items()}, doc=node.doc, many=node.many,
                         nullable=node.nullable, default=node.default, when=node.when,
                         hint=node.hint or self.broken_hint())
        if isinstance(node, Group):
            fields: dict[str, Any] = {}
            for key, child in node.fields.items():
                if isinstance(child, Choice):
                    names = [n for n in self.by_role[child.role] if child.only is None or n in child.only]
                    fields[key] = Param("str", child.default, child.doc, choices=tuple(names), nullable=child.nullable)
                    if child.with_params:
                        for name in names:
                            for pkey, pnode in self.group(child.role, name).fields.items():
                                if pkey in fields or pkey in node.fields:
                                    continue  # one parameter shared by several kinds (declared alike)
                                fields[pkey] = _with_when(pnode, key, self._applying(child, names, pkey))
                else:
                    fields[key] = self.resolve(child)
            return Group(fields, doc=node.doc, nullable=node.nullable, default=node.default, when=node.when,
                         checks=node.checks)
        return node

    def _applying(self, choice: Choice, names: list[str], pkey: str) -> tuple[str, ...]:
        return tuple(n for n in names if pkey in self.group(choice.role, n).fields)


def _with_when(node: Any, key: str, values: tuple[str, ...]) -> Any:
    from dataclasses import replace

    when = dict(node.when or {})
    when[key] = values
    return replace(node, when=when)


_LOCK = threading.RLock()
_REGISTRY: Registry | None = None
_LOADING: Registry | None = None  # the registry being loaded (seen by a plugin's own imports)


def registry() -> Registry:
    """The registry of this process: built-in kinds, then installed plugins (loaded once).

    A plugin module may itself use gradsweep while it is imported (``gradsweep.nn`` looks up its
    quantisers): that nested call, in the loading thread, gets the registry as loaded so far.
    """
    global _REGISTRY, _LOADING
    if _REGISTRY is None:
        with _LOCK:
            if _REGISTRY is None:
                if _LOADING is not None:
                    return _LOADING
                reg = _LOADING = Registry()
                try:
                    reg.load_builtin()
                    reg.load_plugins()
                finally:
                    _LOADING = None
                _REGISTRY = reg
    return _REGISTRY


def reload() -> Registry:
    """Forget the loaded registry and the catalog derived from it (after installing a plugin)."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None
    from gradsweep import catalog, results_schema

    catalog.reset()
    results_schema.reset()
    return registry()


def builtin() -> Registry:
    """A registry of gradsweep's own kinds only (the generated docs describe these)."""
    reg = Registry()
    reg.load_builtin()
    return reg


def kinds(role: str) -> Mapping[str, Kind]:
    """Name -> declaration of every kind of ``role``."""
    return dict(registry().by_role[role])


def kind(role: str, name: str) -> Kind:
    """One declaration; a ``ValueError`` with "did you mean" for an unknown name."""
    return registry().kind(role, name)


def implementation(role: str, name: str) -> Any:
    """The implementation of a kind (imported on first use)."""
    return registry().implementation(role, name)


def resolve(node: Any) -> Any:
    return registry().resolve(node)


def label(role: str, config: Mapping[str, Any]) -> str:
    """The display label of a concrete config of a kind (``{"kind": "cdg", "epsilon": 0.1}``)."""
    try:
        return registry().kind(role, str(config["kind"])).describe(config)
    except (ValueError, KeyError):
        return str(config.get("kind"))
