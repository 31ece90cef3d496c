"""Validation and expansion of spec values against :mod:`gradsweep.catalog`: one general engine.

Every catalog node (:class:`~gradsweep.catalog.Param`, :class:`~gradsweep.catalog.Group`,
:class:`~gradsweep.catalog.Union`) turns a raw YAML value into its list of *alternatives*: the
concrete canonical values it can take, each with its canonical JSON text. A plain value has one
alternative; ``{grid: [...]}`` has one per item; a group's alternatives are the product of its
fields' (``zip`` bundles pair keys instead of crossing them), with parameters that do not apply
(``when``) left out and defaults filled in; a ``many`` union (the estimator list) concatenates
its entries'. The canonical JSON of a group is built from its children's texts, so a sweep of
200,000 cells costs a string join and a hash per cell, not a validation per cell.

Problems are collected, not raised one by one: each names its key path, its line and what was
expected, and :class:`SpecError` carries them all.

Rules beyond types:

- a parameter set explicitly must apply to at least one of the values it is crossed with
  (``threshold`` with ``variant: {grid: [clipped, steep2]}`` is used for ``clipped`` and absent for
  ``steep2``; with ``variant: steep2`` alone it is an error);
- a ``kind`` may itself be a grid; each key must then belong to at least one of those kinds;
- a union entry may be written as a bare kind name (``estimator: ste``).
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from gradsweep import catalog
from gradsweep.catalog import REQUIRED, Group, Param, Union
from gradsweep.declare import did_you_mean
from gradsweep.spec.errors import Issue, SpecError
from gradsweep.spec.yamlload import line_of

__all__ = [
    "validate_estimator", "validate_kind", "complete_sections", "validate_value", "Alt", "Context", "expand_node",
    "expand_group", "count_node", "list_length", "range_length", "MAX_LIST", "describe", "Crossed",
]

Alt = tuple[Any, str]  # (canonical value, its canonical JSON text)

MAX_LIST = 1_000_000  # longest list a range may produce
RANGE_KEYS = ("linspace", "logspace", "arange")
_MISSING: Any = object()
_NULL: Alt = (None, "null")
_UNSET: Any = object()  # a required parameter with a ``when``, not given: an error where it applies
_UNSET_ALT: tuple = (_UNSET, "")
_LIST_TYPES = ("number_list", "int_list", "str_list", "layers", "x0")


class Context:
    """The issues found so far (each once, in order) and an optional cap on group products.

    ``cap`` is set when a spec is too large to expand: validation then still visits every key
    but crosses at most ``cap`` combinations per group.
    """

    def __init__(self, cap: int | None = None) -> None:
        self.issues: list[Issue] = []
        self._seen: set[Issue] = set()
        self.cap = cap

    def add(self, path: str, message: str, line: int | None = None) -> None:
        issue = Issue(path, message, line)
        if issue not in self._seen:
            self._seen.add(issue)
            self.issues.append(issue)

    def raise_if_any(self, source: str | None = None) -> None:
        if self.issues:
            raise SpecError(self.issues, source=source)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _got(value: Any) -> str:
    """How an arriving value is shown in a message: its repr and, for containers, its type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return f"a mapping {_short(dict(value))}"
    if isinstance(value, list):
        return f"a list {_short(list(value))}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


_suggest = did_you_mean

def _bound_text(p: Param) -> str:
    parts = []
    if p.low is not None:
        parts.append(f"{'>' if p.low_open else '>='} {_num(p.low)}")
    if p.high is not None:
        parts.append(f"<= {_num(p.high)}")
    return " and ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def describe(p: Param) -> str:
    """What a parameter expects, in words (used in every message about it)."""
    base = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "number_list": "a list of numbers and ranges ({linspace|logspace|arange: [...]})",
        "int_list": "a list of integers and ranges ({arange: [start, stop, step]})",
        "str_list": "a list of strings",
        "layers": "'all' or a list of layer selectors (module names, linear:K, conv:K)",
        "x0": "a list of numbers or {randint: [lo, hi]}",
    }[p.type]
    if p.choices is not None and p.type == "str":
        base = "one of " + ", ".join(p.choices)
    elif p.choices is not None:
        base += " from " + ", ".join(p.choices)
    bound = _bound_text(p)
    if bound:
        base += (" with every item " if p.type in _LIST_TYPES else " ") + bound
    if p.even:
        base += ", even"
    if p.pattern:
        base += f" matching {p.pattern}"
    if p.nullable:
        base += ", or null"
    return base


# ---------------------------------------------------------------------------------------------
# Leaves


class _Bad(Exception):
    """A leaf value that does not fit; the message says what arrived."""


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"got {_got(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"got {value!r}")
        return int(value)
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"got {_got(value)}")
    out = float(value)
    if not math.isfinite(out):
        raise _Bad(f"got {value!r}")
    return out + 0.0  # -0.0 -> 0.0


def _check_bounds(p: Param, x: float, raw: Any = None) -> None:
    shown = raw if isinstance(raw, (int, float)) and not isinstance(raw, bool) else x
    if p.low is not None and (x < p.low or (p.low_open and x == p.low)):
        raise _Bad(f"got {shown!r}")
    if p.high is not None and x > p.high:
        raise _Bad(f"got {shown!r}")
    if p.even and int(x) % 2:
        raise _Bad(f"got odd {shown!r}")


def _clean(x: float) -> float:
    """A computed range value without float noise (0.030000000000000002 -> 0.03)."""
    return float(f"{x:.15g}") + 0.0


def range_length(key: str, args: Sequence[float]) -> int:
    """How many values a range makes, computed without making them."""
    if key == "arange":
        start, stop, step = args
        if step == 0:
            raise _Bad("arange step is 0")
        span = (stop - start) / step
        if not math.isfinite(span):
            raise _Bad(f"arange {list(args)!r} would make too many values (at most {MAX_LIST:,})")
        return max(0, math.ceil(span - 1e-9))
    count = args[2]
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise _Bad(f"{key} count must be an integer >= 1, got {count!r}")
    return count


def list_length(raw: Any) -> int:
    """How many values a list of numbers and ranges holds, computed without making them
    (tolerant: anything malformed counts as one value; validation reports it)."""
    items = [raw] if isinstance(raw, Mapping) else raw if isinstance(raw, list) else [raw]
    n = 0
    for item in items:
        if isinstance(item, Mapping) and len(item) == 1:
            key, args = next(iter(item.items()))
            if (key in RANGE_KEYS and isinstance(args, list) and len(args) == 3
                    and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
                try:
                    n += range_length(key, args)
                    continue
                except (_Bad, ValueError, OverflowError):
                    pass
        n += 1
    return max(1, n)


def _range_values(raw: Mapping) -> list[float]:
    """The numbers of ``{linspace|logspace|arange: [a, b, c]}``, or _Bad."""
    if len(raw) != 1 or next(iter(raw)) not in RANGE_KEYS:
        raise _Bad(f"got {_got(raw)}; a range is one of {{linspace: [start, stop, count]}}, "
                   "{logspace: [start_exp, stop_exp, count]}, {arange: [start, stop, step]}")
    key, args = next(iter(raw.items()))
    what = {"linspace": "[start, stop, count]", "logspace": "[start_exp, stop_exp, count]",
            "arange": "[start, stop, step]"}[key]
    if not isinstance(args, list) or len(args) != 3:
        raise _Bad(f"{key} expects {what}, got {_got(args)}")
    try:
        a, b, c = (_to_float(v) if i < 2 or key == "arange" else v for i, v in enumerate(args))
    except _Bad:
        raise _Bad(f"{key} expects {what} of numbers, got {_got(args)}") from None
    n = range_length(key, (a, b, c))
    if n > MAX_LIST:
        count = f"{n:,}" if n < 10**15 else f"about {float(n):.1e}"
        raise _Bad(f"{key} would make {count} values (at most {MAX_LIST:,})")
    if n == 0:
        raise _Bad(f"arange {args!r} makes no values")
    if key == "arange":
        return [_clean(a + i * c) for i in range(n)]
    if n == 1:
        values = [a]
    else:
        values = [a + (b - a) * i / (n - 1) for i in range(n)]
    if key == "logspace":
        if max(values) > 300:
            raise _Bad(f"logspace exponent {max(values)!r} is out of range (at most 300)")
        values = [10.0 ** v for v in values]
    return [_clean(v) for v in values]


def _list_of(raw: Any, convert: Callable[[Any], Any], *, ranges: bool = False,
             checked: Callable[[float], None] | None = None) -> list:
    """A list of converted items. With ``ranges``, range mappings may stand for the whole list
    or for some of its items (``[{logspace: [-5, 0, 6]}, {arange: [0.01, 1, 0.02]}]``): they are
    expanded in place and a value already present is not repeated."""
    if ranges and isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise _Bad(f"got {_got(raw)}")
    if not raw:
        raise _Bad("got an empty list")
    if convert is _to_float and set(map(type, raw)) == {float} and all(map(math.isfinite, raw)):
        # the fast path for long lists already in canonical form (a 50,000-lr scan)
        out = [v + 0.0 for v in raw]
        if checked is not None:
            for v in out:
                checked(v)
        return list(dict.fromkeys(out)) if ranges else out
    out = []
    for i, item in enumerate(raw):
        try:
            if ranges and isinstance(item, Mapping):
                values = [convert(v) for v in _range_values(item)]
            else:
                values = [convert(item)]
            if checked is not None:
                for x in values:
                    checked(x)
            out += values
        except _Bad as exc:
            raise _Bad(f"item {i}: {exc}" if len(raw) > 1 else str(exc)) from None
        if len(out) > MAX_LIST:
            raise _Bad(f"the list would hold more than {MAX_LIST:,} values")
    return list(dict.fromkeys(out)) if ranges else out


def validate_value(p: Param, raw: Any) -> Any:
    """The canonical value of one concrete leaf, or ``_Bad`` saying what arrived."""
    if raw is None:
        if p.nullable:
            return None
        raise _Bad("got null")
    t = p.type
    if t == "int":
        x = _to_int(raw)
        _check_bounds(p, x, raw)
        return x
    if t == "float":
        x = _to_float(raw)
        _check_bounds(p, x, raw)
        return x
    if t == "bool":
        if not isinstance(raw, bool):
            raise _Bad(f"got {_got(raw)}")
        return raw
    if t == "str":
        if not isinstance(raw, str):
            raise _Bad(f"got {_got(raw)}")
        if p.choices is not None and raw not in p.choices:
            raise _Bad(f"got {raw!r}{_suggest(raw, p.choices)}")
        if p.pattern is not None and not re.fullmatch(p.pattern, raw):
            raise _Bad(f"got {raw!r}")
        return raw
    if t in ("number_list", "int_list"):
        convert = _to_float if t == "number_list" else _to_int

        bounded = p.low is not None or p.high is not None or p.even

        def item(v: Any) -> Any:
            x = convert(v)
            if bounded:
                _check_bounds(p, x, v)
            return x

        if t == "number_list":
            return _list_of(raw, _to_float, ranges=True,
                            checked=(lambda x: _check_bounds(p, x)) if bounded else None)
        return _list_of(raw, item, ranges=True)
    if t in ("str_list", "layers"):
        if t == "layers" and raw == "all":
            return "all"

        def text(v: Any) -> str:
            if not isinstance(v, str):
                raise _Bad(f"got {_got(v)}")
            if p.choices is not None and v not in p.choices:
                raise _Bad(f"got {v!r}{_suggest(v, p.choices)}")
            if t == "layers" and (v == "all" or not re.fullmatch(catalog.LAYER_PATTERN, v)):
                raise _Bad(f"got {v!r}")
            return v

        if isinstance(raw, Mapping):
            raise _Bad(f"got {_got(raw)}")
        return _list_of(raw, text)
    if t == "x0":
        if isinstance(raw, Mapping):
            if set(raw) != {"randint"}:
                raise _Bad(f"got {_got(raw)}")
            bounds = raw["randint"]
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise _Bad(f"randint expects [lo, hi], got {_got(bounds)}")
            lo, hi = (_to_int(v) for v in bounds)
            if lo > hi:
                raise _Bad(f"randint expects lo <= hi, got [{lo}, {hi}]")
            return {"randint": [lo, hi]}
        return _list_of(raw, _to_float)
    raise AssertionError(f"unhandled Param type {t}")  # catalog.TYPES is closed


_DEFAULTS: dict[int, tuple[Param, list[Alt]]] = {}


def _leaf(p: Param, raw: Any, path: str, line: int | None, ctx: Context) -> list[Alt]:
    if raw is _MISSING:
        if p.default is REQUIRED and p.when:
            return [_UNSET_ALT]  # required only where it applies: _combine decides
        if p.default is REQUIRED:
            ctx.add(path, f"required: expected {describe(p)}", line)
            return []
        # keyed by id, the Param kept beside it: a catalog derived again (a plugin installed, the
        # registry reloaded) may reuse a freed Param's id, which must not find its default
        entry = _DEFAULTS.get(id(p))
        if entry is None or entry[0] is not p:
            value = validate_value(p, p.default)  # the catalog's own defaults are valid
            entry = _DEFAULTS[id(p)] = (p, [(value, _dumps(value))])
        return entry[1]
    try:
        value = validate_value(p, raw)
    except _Bad as exc:
        ctx.add(path, f"expected {describe(p)}, {exc}", line)
        return []
    return [(value, _dumps(value))]


# ---------------------------------------------------------------------------------------------
# Nodes


def _is_grid(node: Any, raw: Any) -> bool:
    if not isinstance(raw, Mapping) or "grid" not in raw:
        return False
    return not (isinstance(node, Group) and "grid" in node.fields)


def _dedup(alts: Iterable[Alt]) -> list[Alt]:
    seen: set[str] = set()
    out = []
    for alt in alts:
        if alt[1] not in seen:
            seen.add(alt[1])
            out.append(alt)
    return out


def expand_node(node: Param | Group | Union, raw: Any, path: str, line: int | None, ctx: Context) -> list[Alt]:
    """Every canonical value ``raw`` stands for (``_MISSING``: the default), problems to ``ctx``."""
    if _is_grid(node, raw):
        items = raw["grid"]
        gline = line_of(raw, "grid") or line
        extra = [k for k in raw if k != "grid"]
        if extra:
            ctx.add(path, f"a grid mapping holds only 'grid', got also {extra}", gline)
        if not isinstance(items, list):
            ctx.add(_join(path, "grid"), f"expected a list of values, got {_got(items)}", gline)
            return []
        if not items:
            ctx.add(_join(path, "grid"), "empty grid: expected at least one value", gline)
            return []
        out: list[Alt] = []
        for i, item in enumerate(items):
            out += expand_node(node, item, f"{path}.grid[{i}]", line_of(items, i) or gline, ctx)
        return _dedup(out)
    if isinstance(node, Param):
        return _leaf(node, raw, path, line, ctx)
    if raw is _MISSING:
        if node.default is None:
            return [_NULL]
        if isinstance(node, Union):
            ctx.add(path, f"required: expected a mapping with kind: one of {', '.join(node.kinds)}", line)
            return []
        return expand_group(node, {}, path, line, ctx)
    if raw is None:
        if node.nullable:
            return [_NULL]
        ctx.add(path, "expected a mapping, got null", line)
        return []
    if isinstance(node, Union):
        return _expand_union(node, raw, path, line, ctx)
    return expand_group(node, raw, path, line, ctx)


def _expand_union(u: Union, raw: Any, path: str, line: int | None, ctx: Context) -> list[Alt]:
    if isinstance(raw, list):
        if not u.many:
            ctx.add(path, f"expected one mapping with kind: one of {', '.join(u.kinds)}, got {_got(raw)}", line)
            return []
        if not raw:
            ctx.add(path, "empty list: expected at least one entry", line)
            return []
        out: list[Alt] = []
        for i, entry in enumerate(raw):
            out += _expand_entry(u, entry, f"{path}[{i}]", line_of(raw, i) or line, ctx)
        return _dedup(out)
    return _expand_entry(u, raw, path, line, ctx)


def _expand_entry(u: Union, raw: Any, path: str, line: int | None, ctx: Context) -> list[Alt]:
    names = ", ".join(u.kinds)
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, Mapping):
        ctx.add(path, f"expected a mapping with kind: one of {names}, got {_got(raw)}", line)
        return []
    line = getattr(raw, "line", None) or line
    if "kind" not in raw:
        ctx.add(path, f"missing 'kind': expected one of {names}", line)
        return []
    kline = line_of(raw, "kind")
    kinds_raw = raw["kind"]
    kind_path = _join(path, "kind")
    if _is_grid(None, kinds_raw):
        items = kinds_raw["grid"]
        if not isinstance(items, list) or not items:
            ctx.add(_join(kind_path, "grid"), f"empty grid: expected a list of kinds ({names})", kline)
            return []
    else:
        items = [kinds_raw]
    kinds = []
    for item in items:
        if not isinstance(item, str) or item not in u.kinds:
            ctx.add(kind_path, f"unknown kind {_short(item)}{_suggest(item, u.kinds)}; expected one of {names}{u.hint}",
                    kline)
        else:
            kinds.append(item)
    if len(kinds) < len(items):
        return []
    rest = {k: v for k, v in raw.items() if k != "kind"}
    known = set().union(*(u.kinds[k].fields for k in kinds))
    elsewhere = {key: [name for name, g in u.kinds.items() if key in g.fields] for key in rest if key not in known}
    elsewhere = {key: names for key, names in elsewhere.items() if names}
    unknown: set[Any] = set()
    if len(kinds) > 1:
        # With a grid of kinds a key needs to belong to only one of them; one that belongs to
        # none is reported here, once, rather than once per kind.
        unknown = {k for k in rest if k not in known and k != "zip"}
        names = sorted(known) + ["kind"]
        for key in unknown:
            hint = _suggest(key, names)
            ctx.add(_join(path, key), f"unknown key {key!r}{hint} (valid keys for any of "
                    f"{', '.join(kinds)}: {', '.join(names)})", line_of(raw, key))
    out: list[Alt] = []
    for kind in kinds:
        group = u.kinds[kind]
        ignore = {k for k in rest if k in known and k not in group.fields} | unknown
        fixed = {"kind": (kind, _dumps(kind))}
        out += expand_group(group, raw, path, line, ctx, skip={"kind"} | ignore, fixed=fixed,
                            what=repr(kind), elsewhere=elsewhere)
    return [] if unknown else _dedup(out)


def _applies(key: str, when_of: Mapping[str, Mapping[str, tuple]], merged: Mapping[str, Alt],
             memo: dict[str, bool]) -> bool:
    if key in memo:
        return memo[key]
    ok = True
    for sibling, values in (when_of.get(key) or {}).items():
        if sibling not in merged or not _applies(sibling, when_of, merged, memo) or merged[sibling][0] not in values:
            ok = False
            break
    memo[key] = ok
    return ok


def expand_group(
    group: Group,
    raw: Any,
    path: str,
    line: int | None,
    ctx: Context,
    *,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
    fixed: Mapping[str, Alt] | None = None,
    factors: Sequence[list[dict[str, Alt]]] = (),
    resolve: Callable[[dict[str, Alt]], None] | None = None,
    what: str = "",
    elsewhere: Mapping[str, list[str]] | None = None,
    lazy: bool = False,
) -> list[Alt]:
    """The alternatives of a group: the product of its fields' (zip bundles paired).

    ``lazy=True`` returns a :class:`Crossed` instead of a list: the same alternatives in the same
    order, made one at a time when iterated (the sweep's top level: millions of cells).

    ``skip``: raw keys handled by the caller (a union's ``kind``); ``fixed``: entries added to
    every alternative; ``factors``: extra outer axes (the sweep's seeds); ``resolve``: a hook that
    may rewrite a combination before it is written (dtype resolution); ``elsewhere``: keys that
    belong to other kinds of a union (for the message).
    """
    elsewhere = elsewhere or {}
    if not isinstance(raw, Mapping):
        ctx.add(path, f"expected a mapping{' of ' + ', '.join(group.fields) if group.fields else ''}, got {_got(raw)}", line)
        return []
    line = getattr(raw, "line", None) or line
    fields = group.fields
    given_lines: dict[str, int | None] = {}
    ok = True
    for key in raw:
        if key in skip:
            continue
        if key == "zip" and "zip" not in fields:
            continue
        if key not in fields:
            names = [*fields, *sorted(k for k in skip if isinstance(k, str))]
            valid = ", ".join(names) or "none"
            where = f" for {what}" if what else ""
            if key in elsewhere:
                head = f"{key!r} does not apply to {what} (it is a parameter of {', '.join(elsewhere[key])})"
            else:
                head = f"unknown key {key!r}{_suggest(key, names)}"
            ctx.add(_join(path, key), f"{head} (valid keys{where}: {valid})", line_of(raw, key))
            ok = False
        else:
            given_lines[key] = line_of(raw, key)

    outer: list[list[dict[str, Alt]]] = list(factors)
    zipped: set[str] = set()
    zip_raw = raw.get("zip", _MISSING) if "zip" not in fields and "zip" not in skip else _MISSING
    if zip_raw is not _MISSING:
        bundle = _expand_zip(group, raw, zip_raw, path, ctx, given_lines)
        if bundle is None:
            ok = False
        else:
            zipped = set(bundle[0]) if bundle else set()
            outer.append(bundle)
    explicit_lines = dict(given_lines)
    if isinstance(zip_raw, Mapping):
        explicit_lines.update({k: line_of(zip_raw, k) for k in zip_raw if k in fields})

    for key, child in fields.items():
        if key in zipped:
            continue
        value = raw[key] if key in given_lines else _MISSING
        alts = expand_node(child, value, _join(path, key), given_lines.get(key, line), ctx)
        if not alts:
            ok = False
        outer.append([{key: a} for a in alts])
    if not ok:
        return []

    return _combine(group, outer, dict(fixed or {}), explicit_lines, path, line, ctx, resolve, lazy=lazy)


def _introduced_parts(group: Group, head: Callable[[str], str]) -> frozenset[str]:
    """The ``"key":value`` texts of the group's parameters at their ``introduced`` values."""
    return frozenset(
        head(k) + _dumps(validate_value(c, c.introduced)) for k, c in group.fields.items()
        if isinstance(c, Param) and c.introduced is not catalog.ORIGINAL
    )


def _single(getter_indices: Sequence[int]) -> Callable[[Sequence[Any]], tuple]:
    """``itemgetter`` that always returns a tuple (it returns a bare item for one index)."""
    if len(getter_indices) == 1:
        i = getter_indices[0]
        return lambda seq: (seq[i],)
    return operator.itemgetter(*getter_indices)


def _combine(
    group: Group,
    outer: list[list[dict[str, Alt]]],
    fixed: dict[str, Alt],
    given_lines: Mapping[str, int | None],
    path: str,
    line: int | None,
    ctx: Context,
    resolve: Callable[[dict[str, Alt]], None] | None,
    *,
    lazy: bool = False,
) -> list[Alt]:
    """Cross the factors of a group into its alternatives, fast.

    Factors that take part in a ``when`` (or in ``resolve``, or in a group check) are crossed
    first, one dictionary per combination (few: experiment, measure, step, dtype, problem); the
    free factors (seeds, the estimator union, ...) are crossed as tuples and joined to each of
    those with two ``itemgetter`` calls, so a cell costs a dict, a join and no Python loop.
    """
    fields = group.fields
    when_of = {k: c.when for k, c in fields.items() if c.when}
    checks = getattr(group, "checks", ())
    explicit = {k for k in given_lines if k in when_of}
    used: set[str] = set()
    seen_values: dict[str, set] = {k: set() for k in explicit}
    heads: dict[str, str] = {}

    def head(k: str) -> str:
        h = heads.get(k)
        if h is None:
            h = heads[k] = _dumps(k) + ":"
        return h

    dep = set(when_of) | {s for w in when_of.values() for s in w} | set(getattr(resolve, "keys", ()))
    if resolve is not None and not hasattr(resolve, "keys"):
        dep = None  # an undeclared hook may read anything
    if checks or dep is None:
        dependent, free = outer, []
    else:
        dependent = [f for f in outer if f and not dep.isdisjoint(f[0])]
        free = [f for f in outer if not (f and not dep.isdisjoint(f[0]))]

    # The dependent combinations, each a sorted list of (key, value, "key":text).
    heads_done: list[tuple[tuple[str, ...], tuple, tuple]] = []
    seen: set[tuple] = set()
    d_combos: Iterable[tuple[dict[str, Alt], ...]] = itertools.product(*dependent)
    if ctx.cap is not None:
        d_combos = itertools.islice(d_combos, ctx.cap)
    for combo in d_combos:
        merged = dict(fixed)
        for part in combo:
            merged.update(part)
        if resolve is not None:
            resolve(merged)
        unset = False
        if when_of:
            memo: dict[str, bool] = {}
            for k in when_of:
                if k not in merged:
                    continue
                if not _applies(k, when_of, merged, memo):
                    if k in explicit:
                        for sibling in when_of[k]:
                            if sibling in merged:
                                seen_values[k].add(merged[sibling][0])
                    del merged[k]
                elif k in explicit:
                    used.add(k)
                elif merged[k] is _UNSET_ALT:
                    ctx.add(_join(path, k), f"required: expected {describe(fields[k])}", line)
                    unset = True
            if unset:
                continue
        keys = tuple(sorted(merged))
        parts = tuple(head(k) + merged[k][1] for k in keys)
        if parts in seen:
            continue
        seen.add(parts)
        values = tuple(merged[k][0] for k in keys)
        if checks:
            bad = False
            for check in checks:
                message = check(dict(zip(keys, values)))
                if message:
                    ctx.add(path, message, line)
                    bad = True
            if bad:
                continue
        heads_done.append((keys, values, parts))
    for k in sorted(explicit - used):
        cond = "; ".join(f"{s} is {' or '.join(map(str, v))}" for s, v in when_of[k].items())
        here = ", ".join(map(str, sorted(seen_values[k], key=str)))
        ctx.add(_join(path, k), f"does not apply here: it applies only when {cond}"
                + (f" (here: {here})" if here else ""), given_lines[k])

    # The free combinations, as (values, parts) tuples in a fixed key order.
    f_keys: list[str] = []
    prepared = []
    for factor in free:
        fk = sorted(factor[0])
        f_keys += fk
        prepared.append([(tuple(a[k][0] for k in fk), tuple(head(k) + a[k][1] for k in fk)) for a in factor])
    # A parameter at its ``introduced`` value is left out of the text (which is what the cell id
    # hashes), not out of the value: cells computed before it existed keep their ids.
    drop = _introduced_parts(group, head)
    if lazy:
        return Crossed(heads_done, tuple(f_keys), prepared, drop)  # type: ignore[return-value]
    f_combos: list[tuple[tuple, tuple]] = [((), ())]
    for factor in prepared:
        crossed = ((v + fv, p + fp) for v, p in f_combos for fv, fp in factor)
        f_combos = list(crossed if ctx.cap is None else itertools.islice(crossed, ctx.cap))

    out: list[Alt] = []
    for keys, values, parts in heads_done:
        all_keys = keys + tuple(f_keys)
        order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
        ordered = tuple(all_keys[i] for i in order)
        pick = _single(order)
        if drop:
            out += [
                (dict(zip(ordered, pick(values + fv))),
                 "{" + ",".join(p for p in pick(parts + fp) if p not in drop) + "}")
                for fv, fp in f_combos
            ]
            continue
        if not f_keys:
            out.append((dict(zip(ordered, pick(values))), "{" + ",".join(pick(parts)) + "}"))
            continue
        out += [
            (dict(zip(ordered, pick(values + fv))), "{" + ",".join(pick(parts + fp)) + "}")
            for fv, fp in f_combos
        ]
        if ctx.cap is not None and len(out) >= ctx.cap:
            break
    return out


class Crossed:
    """The alternatives of a group made on demand, in the order :func:`_combine` lists them.

    ``len()`` is exact and costs nothing; iterating holds in memory only the trailing free factors
    crossed together (at most :attr:`SUFFIX` combinations) besides the factors themselves, so a
    sweep of ten million cells is counted and walked without being materialised.
    """

    SUFFIX = 1 << 16

    def __init__(self, heads: list[tuple[tuple[str, ...], tuple, tuple]], f_keys: tuple[str, ...],
                 prepared: list[list[tuple[tuple, tuple]]], drop: frozenset[str] = frozenset()) -> None:
        self.heads, self.f_keys, self.prepared, self.drop = heads, f_keys, prepared, drop

    def __len__(self) -> int:
        return len(self.heads) * math.prod(len(f) for f in self.prepared)

    def __iter__(self) -> Iterator[Alt]:
        prepared = self.prepared
        k, size = len(prepared), 1
        while k > 0 and size * len(prepared[k - 1]) <= self.SUFFIX:
            k -= 1
            size *= len(prepared[k])
        suffix: list[tuple[tuple, tuple]] = [((), ())]
        for factor in prepared[k:]:
            suffix = [(v + fv, p + fp) for v, p in suffix for fv, fp in factor]
        for keys, values, parts in self.heads:
            all_keys = keys + self.f_keys
            order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
            ordered = tuple(all_keys[i] for i in order)
            pick = _single(order)
            drop = self.drop

            def text(picked: tuple) -> str:
                return "{" + ",".join(p for p in picked if p not in drop) + "}" if drop else "{" + ",".join(picked) + "}"

            if not self.f_keys:
                yield dict(zip(ordered, pick(values))), text(pick(parts))
                continue
            for outer in itertools.product(*prepared[:k]):
                pv, pp = values, parts
                for fv, fp in outer:
                    pv += fv
                    pp += fp
                for fv, fp in suffix:
                    yield dict(zip(ordered, pick(pv + fv))), text(pick(pp + fp))


def _expand_zip(group: Group, raw: Mapping, zip_raw: Any, path: str, ctx: Context,
                given_lines: Mapping[str, int | None]) -> list[dict[str, Alt]] | None:
    zpath = _join(path, "zip")
    zline = line_of(raw, "zip")
    if not isinstance(zip_raw, Mapping) or not zip_raw:
        ctx.add(zpath, f"expected a mapping of keys to equally long lists, got {_got(zip_raw)}", zline)
        return None
    ok = True
    lengths: dict[str, int] = {}
    for key, values in zip_raw.items():
        kline = line_of(zip_raw, key)
        if key not in group.fields:
            ctx.add(_join(zpath, key), f"unknown key {key!r}{_suggest(key, group.fields)} "
                    f"(valid keys: {', '.join(group.fields)})", kline)
            ok = False
        elif key in given_lines:
            ctx.add(_join(zpath, key), f"{key!r} is set both directly and in zip", kline)
            ok = False
        if not isinstance(values, list) or not values:
            ctx.add(_join(zpath, key), f"expected a non-empty list of values, got {_got(values)}", kline)
            ok = False
        else:
            lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        ctx.add(zpath, f"zip lists must have one length, got {sizes}", zline)
        ok = False
    if not ok:
        return None
    bundle: list[dict[str, Alt]] = []
    for i in range(next(iter(lengths.values()))):
        per_key = []
        for key, values in zip_raw.items():
            alts = expand_node(group.fields[key], values[i], f"{zpath}.{key}[{i}]", line_of(values, i), ctx)
            if not alts:
                ok = False
            per_key.append([(key, a) for a in alts])
        bundle += [dict(c) for c in itertools.product(*per_key)]
    if not ok:
        return None
    # a repeated pair would make the same cells twice; the lazy top level relies on no repeats
    seen: set[tuple[str, ...]] = set()
    unique = []
    for entry in bundle:
        texts = tuple(f"{k}={a[1]}" for k, a in sorted(entry.items()))
        if texts not in seen:
            seen.add(texts)
            unique.append(entry)
    return unique


# ---------------------------------------------------------------------------------------------
# Counting without expanding


def count_node(node: Param | Group | Union, raw: Any) -> int:
    """An upper bound of the alternatives of ``raw``, computed without expanding (bad parts: 1)."""
    if _is_grid(node, raw):
        items = raw.get("grid")
        if not isinstance(items, list):
            return 1
        return max(1, sum(count_node(node, item) for item in items))
    if isinstance(node, Param) or not isinstance(raw, (Mapping, list, str)):
        return 1
    if isinstance(node, Union):
        if isinstance(raw, list):
            return max(1, sum(count_node(node, entry) for entry in raw))
        if not isinstance(raw, Mapping):
            return 1
        kinds = raw.get("kind")
        names = kinds.get("grid") if _is_grid(None, kinds) else [kinds]
        names = [k for k in names if isinstance(k, str) and k in node.kinds] if isinstance(names, list) else []
        return max(1, sum(count_node(node.kinds[k], raw) for k in names))
    if not isinstance(raw, Mapping):
        return 1
    total = 1
    for key, child in node.fields.items():
        if key in raw:
            total *= count_node(child, raw[key])
    zip_raw = raw.get("zip") if "zip" not in node.fields else None
    if isinstance(zip_raw, Mapping) and zip_raw:
        lists = [v for v in zip_raw.values() if isinstance(v, list)]
        if lists:
            n = min(len(v) for v in lists)
            total *= max(1, sum(
                math.prod(count_node(node.fields[k], v[i]) for k, v in zip_raw.items()
                          if k in node.fields and isinstance(v, list))
                for i in range(n)
            ))
    return total


# ---------------------------------------------------------------------------------------------
# Public helpers


def validate_estimator(mapping: Mapping[str, Any] | str) -> dict[str, Any]:
    """One concrete estimator config, validated: defaults filled, non-applicable keys absent.

    ``{"kind": "ste", "variant": "steep2"}`` -> ``{"kind": "ste", "variant": "steep2"}``;
    ``{"kind": "cdg"}`` -> ``{"kind": "cdg", "epsilon": 0.1, "mode": "central"}``.
    Raises :class:`SpecError` (naming ``estimator.<key>``) for anything else, grids included.
    """
    return validate_kind("estimator", mapping)


def validate_kind(role: str, mapping: Mapping[str, Any] | str) -> dict[str, Any]:
    """One concrete config of a kind of ``role`` (``problem``, ``estimator``), validated and
    completed against its declaration; a :class:`SpecError` naming ``<role>.<key>`` otherwise."""
    from gradsweep.registry import registry

    ctx = Context()
    alts = _expand_entry(registry().union(role), mapping, role, None, ctx)
    if not ctx.issues and len(alts) != 1:
        ctx.add(role, f"expected one concrete {role}, got a grid of {len(alts)}")
    ctx.raise_if_any()
    return json.loads(_dumps(alts[0][0]))  # a private copy (the text may omit introduced keys)


def complete_sections(config: Mapping[str, Any], experiment: str) -> dict[str, Any]:
    """``config`` with the top-level sections ``experiment`` reads (``measure``, ``step``)
    validated and completed: an experiment called with a loose config (a test, a notebook) reads
    the same canonical values a cell would get."""
    from gradsweep.registry import registry

    out = dict(config)
    for key, group in registry().kind("experiment", experiment).options.get("sections", {}).items():
        ctx = Context()
        raw = config.get(key, _MISSING)
        alts = expand_node(registry().resolve(group), _MISSING if raw is None else raw, key, None, ctx)
        if not ctx.issues and len(alts) != 1:
            ctx.add(key, f"expected one concrete {key}, got a grid of {len(alts)}")
        ctx.raise_if_any()
        out[key] = json.loads(_dumps(alts[0][0]))
    return out
