"""How a kind is declared: the public declaration API of gradsweep and of its plugins.

A *kind* is one thing a spec names with ``kind:`` (or with a name-valued key such as an STE's
``variant``): a problem, an estimator, an experiment, an activation (quantiser), a surrogate
derivative, an optimizer, or a model / dataset factory of the ``torch_module`` problem. Each is
declared once, as data, by a :class:`Kind`: its parameters (type, default, bounds, when they
apply, doc), where its implementation lives, how ``plan`` sizes it and how figures label it.
Everything else is derived from the declarations: the spec catalog (:mod:`gradsweep.catalog`),
the registries that build implementations, ``plan``'s cost model, ``gradsweep kinds``,
``docs/specs.md`` and the result columns.

Built-in kinds and plugins use this one API (pytest / pluggy style): a module holds a list
``KINDS`` of declarations and is found by the entry-point group ``gradsweep.plugins`` (built-in
modules through the same loader). Declarations import neither torch nor Ray; an implementation
is named by ``"module:attribute"`` and imported only when a cell runs, so ``gradsweep plan``
stays light. Example (a plugin's ``gradsweep_plugin.py``)::

    from gradsweep.declare import Param, estimator

    KINDS = [
        estimator(
            "tanh_ste",
            impl="my_package.tanh_ste:TanhSte",
            params={"beta": Param("float", 2.0, "sharpness b", low=0.0, low_open=True)},
            doc="STE with the derivative of tanh(b x)",
            label="tanh-STE b={beta}",
        ),
    ]

This module imports only the standard library.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = [
    "REQUIRED", "ORIGINAL", "without_introduced", "TYPES", "LAYER_PATTERN", "ROLES", "Param", "Group", "Union", "Choice", "OneOf",
    "Kind", "ProblemCost", "problem", "estimator", "experiment", "activation", "surrogate",
    "optimizer", "model", "dataset", "did_you_mean", "positive_int", "positive_float",
    "selected_sizes",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class _Original:
    def __repr__(self) -> str:
        return "ORIGINAL"


#: ``Param.introduced`` of a parameter that existed from the start
ORIGINAL: Any = _Original()

# Types a Param may have. "number_list": a list of numbers or a range mapping ({linspace: ...},
# {logspace: ...}, {arange: ...}); "layers": "all" or a list of layer selectors (module names,
# "linear:K", "conv:K"); "int_list": a list of integers (or a range); "x0": a list of numbers or
# {randint: [lo, hi]}; "str_list": a list of strings.
TYPES = ("int", "float", "bool", "str", "number_list", "int_list", "str_list", "layers", "x0")

LAYER_PATTERN = r"^(all|[A-Za-z_][A-Za-z0-9_.]*|(linear|conv):-?[1-9][0-9]*)$"

#: what a kind can be, in the order ``gradsweep kinds`` lists them
ROLES = ("experiment", "problem", "estimator", "activation", "surrogate", "optimizer", "model", "dataset")

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def did_you_mean(word: Any, names: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``names``, or ``""``: the one helper every
    message about an unknown name uses."""
    near = difflib.get_close_matches(str(word), [str(n) for n in names], n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


# ---------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class Param:
    """One leaf parameter.

    ``low``/``high`` bound numbers (``low_open`` makes the lower bound strict, e.g. epsilon > 0).
    ``when`` maps a sibling key to the values for which this parameter applies.
    ``nullable`` lets the spec write ``null`` (meaning "none").
    ``introduced``: for a parameter added after results existed, the value that reproduces the
    behaviour from before it existed. A cell whose value equals it hashes as if the key were
    absent, so cells computed before the parameter keep their ids (the canonical config and the
    result rows still carry the value; readers fill an old file's null column with it).
    ``inert``: why this parameter cannot change a cell's result (non-empty: ``plan`` warns when a
    sweep varies it, instead of silently computing identical cells).
    """

    type: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    when: Mapping[str, tuple] | None = None
    nullable: bool = False
    even: bool = False
    pattern: str | None = None
    introduced: Any = ORIGINAL
    inert: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown Param type {self.type!r} (known: {', '.join(TYPES)})")


@dataclass(frozen=True)
class Group:
    """A mapping of named parameters and nested groups.

    ``nullable``: the whole group may be ``null`` (``default=None`` makes null the default, as for
    ``pretrain``). ``when`` as for :class:`Param`. ``checks``: rules across fields, each a
    function of the concrete group (a dict) returning an error message or None.
    """

    fields: Mapping[str, "Param | Group | Union | Choice | OneOf"]
    doc: str = ""
    nullable: bool = False
    default: Any = REQUIRED  # REQUIRED: the group is filled from its fields' defaults; None: null
    when: Mapping[str, tuple] | None = None
    checks: tuple[Callable[[Mapping[str, Any]], "str | None"], ...] = ()


@dataclass(frozen=True)
class Union:
    """A mapping discriminated by its ``kind`` key: one of ``kinds`` (e.g. the estimator).

    ``many``: a list of such mappings is allowed, and each entry expands on its own (the spec's
    estimator union). ``nullable``/``default`` as for :class:`Group`. ``hint``: appended to the
    message about an unknown kind (the registry names plugins that failed to load there).
    """

    kinds: Mapping[str, Group]
    doc: str = ""
    many: bool = False
    nullable: bool = False
    default: Any = REQUIRED
    when: Mapping[str, tuple] | None = None
    hint: str = ""


@dataclass(frozen=True)
class Choice:
    """A string parameter that names a kind of ``role``: an STE's ``variant`` names a surrogate.

    The registry resolves it into a :class:`Param` whose choices are the registered kinds of that
    role (built-in and plugins); with ``with_params`` each such kind's own parameters join the
    enclosing group, applying ``when`` this key names that kind (``threshold`` only for
    ``variant: clipped``). ``only`` restricts the choices (a network that supports some).
    """

    role: str
    default: Any = REQUIRED
    doc: str = ""
    with_params: bool = True
    only: tuple[str, ...] | None = None
    nullable: bool = False


@dataclass(frozen=True)
class OneOf:
    """A mapping with ``kind:`` naming a kind of ``role``, with that kind's parameters (a
    :class:`Union` over every registered kind of the role, resolved by the registry)."""

    role: str
    doc: str = ""
    many: bool = False
    nullable: bool = False
    default: Any = REQUIRED
    when: Mapping[str, tuple] | None = None


def _same(a: Any, b: Any) -> bool:
    """Equal as canonical values: ``True`` is not ``1``, but ``1`` is ``1.0`` (a float parameter's
    canonical value is a float whatever the declaration wrote)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def without_introduced(node: "Param | Group | Union", value: Any) -> Any:
    """``value`` (a canonical config of a resolved ``node``) without the keys that sit at their
    ``introduced`` value: what a cell's id and a cache key hash, so that adding a parameter
    leaves the ids and keys of everything computed before it unchanged."""
    if isinstance(node, Union):
        if isinstance(value, Mapping) and value.get("kind") in node.kinds:
            return without_introduced(node.kinds[value["kind"]], value)
        return value
    if not isinstance(node, Group) or not isinstance(value, Mapping):
        return value
    out = {}
    for key, item in value.items():
        child = node.fields.get(key)
        if isinstance(child, Param) and child.introduced is not ORIGINAL and _same(item, child.introduced):
            continue
        out[key] = without_introduced(child, item) if child is not None else item
    return out


def positive_int(doc: str, default: Any = REQUIRED, **kw: Any) -> Param:
    """An integer >= 1."""
    return Param("int", default, doc, low=1, **kw)


def positive_float(doc: str, default: Any = REQUIRED, **kw: Any) -> Param:
    """A number > 0."""
    return Param("float", default, doc, low=0.0, low_open=True, **kw)


# ---------------------------------------------------------------------------------------------
# Cost


@dataclass(frozen=True)
class ProblemCost:
    """What ``plan`` needs to know of a problem without building it.

    ``eval_flops``: one loss evaluation on one batch. ``batches``: the probe's batches.
    ``layers``: weights per layer by selector kind (``{"linear": [...]}``, from the input), so
    ``plan`` can cost ``params: [linear:2]`` and refuse ``linear:9``; ``names``: weights per
    layer by module name where known. ``cap``: at most this many coordinates per layer are
    estimated (a seeded subset). ``memory_bytes``: the cell's peak memory, roughly.
    """

    eval_flops: float
    params: int
    batches: int = 1
    layers: Mapping[str, Sequence[int]] = field(default_factory=dict)
    names: Mapping[str, int] | None = None
    cap: int | None = None
    pretrain_flops: float = 0.0
    memory_bytes: float = 0.0


def selected_sizes(cost: ProblemCost, selection: Any) -> list[int]:
    """Weights of each layer a ``params:`` selection names, by the declared layer sizes.

    Raises ``ValueError`` naming a selector that selects nothing (``linear:9`` of 3 linear
    layers; an unknown module name where the names are known). Layers the declaration does not
    describe count as an equal share of all parameters.
    """
    if selection == "all" or selection is None:
        sizes = [s for v in cost.layers.values() for s in v] if cost.layers else [cost.params]
        return [min(s, cost.cap) if cost.cap else s for s in sizes]
    out: list[int] = []
    share = max(1, cost.params // max(1, sum(len(v) for v in cost.layers.values()) or 1))
    for sel in [selection] if isinstance(selection, str) else selection:
        m = re.fullmatch(r"(linear|conv):(-?\d+)", str(sel))
        if m:
            kind, k = m.group(1), int(m.group(2))
            sizes = list(cost.layers.get(kind, ()))
            if cost.layers and (k == 0 or abs(k) > len(sizes)):
                raise ValueError(f"params: {sel!r} selects no layer: this problem has {len(sizes)} {kind} layers")
            size = sizes[k - 1 if k > 0 else k] if sizes else share
        elif cost.names is not None:
            if sel not in cost.names:
                raise ValueError(
                    f"params: unknown layer {sel!r}{did_you_mean(sel, cost.names)}; "
                    f"valid layers: {', '.join(cost.names)}"
                )
            size = cost.names[sel]
        else:
            size = share
        out.append(min(size, cost.cap) if cost.cap else size)
    return out


# ---------------------------------------------------------------------------------------------
# Kinds


@dataclass(frozen=True)
class Kind:
    """The one declaration of a kind.

    - ``role``/``name``: what it is and the name a spec uses (unique within its role across
      gradsweep and every installed plugin).
    - ``params``: its parameters (:class:`Param`, :class:`Group`, :class:`Choice`, ...).
    - ``impl``: ``"module:attribute"`` (imported when a cell needs it) or the object itself.
      Problems: ``build(cfg, *, seed, dtype, device, cache_dir) -> Problem``; estimators: an
      :class:`~gradsweep.estimators.base.Estimator` subclass; experiments:
      ``run(problem, estimator, config, *, generator_for) -> DataFrame``; activations: a function
      ``q(x)``; surrogates: a :class:`~gradsweep.problems.base.Surrogate` class taking its params
      as keywords; optimizers: a class ``(lr, **params)`` with ``step(params, grads)``; models /
      datasets: factories taking their params as keywords.
    - ``label``: a display label, a format string over the parameters (``"CDG eps={epsilon}"``)
      or a function of the config.
    - ``cost``: problems: ``cost(cfg) -> ProblemCost``; estimators: ``cost(cfg, coords) ->``
      loss evaluations per estimate (``coords``: coordinates estimated); experiments:
      ``cost(config, problem_cost, evaluations) -> flops``.
    - ``options``: role-specific facts (a problem's default ``dtype``; an experiment's top-level
      ``sections``; the parameters that cannot change its result, ``inert``).
    - ``package``/``version``/``source``: set by the registry (the distribution that provides it).
    """

    role: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    impl: Any = None
    doc: str = ""
    label: "str | Callable[[Mapping[str, Any]], str] | None" = None
    cost: Callable[..., Any] | None = None
    checks: tuple[Callable[[Mapping[str, Any]], "str | None"], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    package: str = "gradsweep"
    version: str = ""
    source: str = ""

    def problems(self) -> list[str]:
        """What is wrong with this declaration (empty when it is well formed)."""
        out = []
        if self.role not in ROLES:
            out.append(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            out.append(f"name {self.name!r} must be letters, digits and '_'")
        if self.impl is None:
            out.append("no implementation (impl=...)")
        elif isinstance(self.impl, str) and not re.fullmatch(r"[\w.]+:[\w.]+", self.impl):
            out.append(f"impl {self.impl!r} must be 'module:attribute'")
        if not isinstance(self.params, Mapping):
            out.append("params must be a mapping of names to Param/Group/Choice")
        else:
            for key, node in self.params.items():
                if key == "kind":
                    out.append("a parameter may not be called 'kind'")
                if not isinstance(node, (Param, Group, Union, Choice, OneOf)):
                    out.append(f"parameter {key!r} is a {type(node).__name__}, not a Param/Group/Choice")
        return out

    def describe(self, config: Mapping[str, Any]) -> str:
        """The display label of one concrete config of this kind."""
        if callable(self.label):
            return str(self.label(config))
        if isinstance(self.label, str):
            try:
                return self.label.format(**{k: v for k, v in config.items() if k != "kind"})
            except (KeyError, IndexError, ValueError):
                return self.label
        args = ", ".join(f"{k}={v}" for k, v in config.items() if k != "kind")
        return f"{self.name}({args})" if args else self.name

    def with_source(self, package: str, version: str, source: str) -> "Kind":
        return replace(self, package=package, version=version, source=source)


def _kind(role: str, name: str, **kw: Any) -> Kind:
    return Kind(role=role, name=name, **kw)


def problem(
    name: str, *, impl: Any, params: Mapping[str, Any] | None = None, doc: str = "",
    cost: Callable[[Mapping[str, Any]], ProblemCost] | None = None,
    checks: tuple = (), dtype: str | None = None, label: Any = None, inert: Mapping[str, str] | None = None,
) -> Kind:
    """A problem: a loss over named layers (``impl``: ``build(cfg, *, seed, dtype, device,
    cache_dir)``). ``dtype``: its default precision when the spec leaves ``dtype`` null."""
    return _kind("problem", name, impl=impl, params=dict(params or {}), doc=doc, cost=cost, checks=checks,
                 label=label, options={"dtype": dtype, "inert": dict(inert or {})})


def estimator(
    name: str, *, impl: Any, params: Mapping[str, Any] | None = None, doc: str = "",
    label: Any = None, cost: Callable[[Mapping[str, Any], float], float] | None = None,
    checks: tuple = (), inert: Mapping[str, str] | None = None,
) -> Kind:
    """A gradient estimator (``impl``: an ``Estimator`` subclass). ``cost(cfg, coords)``: loss
    evaluations per estimate; the default counts a forward and a backward (3)."""
    return _kind("estimator", name, impl=impl, params=dict(params or {}), doc=doc, label=label, cost=cost,
                 checks=checks, options={"inert": dict(inert or {})})


def experiment(
    name: str, *, impl: Any, doc: str = "", sections: Mapping[str, Group] | None = None,
    cost: Callable[..., float] | None = None,
) -> Kind:
    """What one cell does (``impl``: ``run(problem, estimator, config, *, generator_for)``).
    ``sections``: the top-level spec groups it reads (``measure``, ``step``)."""
    return _kind("experiment", name, impl=impl, doc=doc, cost=cost, options={"sections": dict(sections or {})})


def activation(name: str, *, impl: Any, doc: str = "", label: Any = None) -> Kind:
    """An activation forward ``q(x)`` (a quantiser); its gradient comes from a surrogate."""
    return _kind("activation", name, impl=impl, doc=doc, label=label)


def surrogate(name: str, *, impl: Any, params: Mapping[str, Any] | None = None, doc: str = "", label: Any = None) -> Kind:
    """A surrogate derivative g'(x) of the step activations, for the STE family."""
    return _kind("surrogate", name, impl=impl, params=dict(params or {}), doc=doc, label=label)


def optimizer(name: str, *, impl: Any, params: Mapping[str, Any] | None = None, doc: str = "") -> Kind:
    """An update rule (``impl``: a class ``(lr, **params)`` with ``step(params, grads)``)."""
    return _kind("optimizer", name, impl=impl, params=dict(params or {}), doc=doc)


def model(name: str, *, impl: Any, params: Mapping[str, Any] | None = None, doc: str = "",
          cost: Callable[[Mapping[str, Any]], ProblemCost] | None = None) -> Kind:
    """A ``torch.nn.Module`` factory for the ``torch_module`` problem (``impl(**params)``)."""
    return _kind("model", name, impl=impl, params=dict(params or {}), doc=doc, cost=cost)


def dataset(name: str, *, impl: Any, params: Mapping[str, Any] | None = None, doc: str = "") -> Kind:
    """A data factory for the ``torch_module`` problem (``impl(**params, seed=...)``)."""
    return _kind("dataset", name, impl=impl, params=dict(params or {}), doc=doc)
