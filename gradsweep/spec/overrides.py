"""Command-line overrides of a spec, Hydra-style, without editing the file.

    gradsweep run specs/toy-raw.yaml problem.dim=64 'estimator[0].epsilon=[0.1,0.01]' seeds=[0,1]

An override is ``PATH=VALUE``: ``PATH`` is keys joined by dots, with ``[i]`` to pick an entry of a
list (``estimator[0]``; on a spec whose ``estimator`` is one mapping, ``estimator[0]`` is that
mapping); ``VALUE`` is YAML read with the same safe loader as a spec (``64``, ``1e-3``, ``null``,
``[0.1, 0.01]``, ``{grid: [8, 16]}``). A list given to a parameter that takes one value becomes a
grid (``problem.dim=[8,16]`` is ``problem.dim: {grid: [8, 16]}``); a parameter that takes a list
(``seeds``, ``measure.lrs``) gets the list itself. A key the spec does not have is added.

The overridden spec is validated exactly as a spec file is, and each problem that an override
caused names that override instead of a line of the file. The text that runs, and is stored with
the results, is the merged spec (:attr:`Sweep.source_text`), so ``resume`` reruns what ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from gradsweep import catalog
from gradsweep.catalog import Group, Param, Union
from gradsweep.spec.errors import Issue, SpecError
from gradsweep.spec.expand import Sweep, _cells, _expand, _resources, load_spec
from gradsweep.spec.validate import Context
from gradsweep.spec.yamlload import MarkedDict, load_yaml

__all__ = ["Override", "is_override", "parse_override", "apply_overrides", "merged_text", "load_spec_with_overrides"]

_KEY = r"[A-Za-z_][A-Za-z0-9_-]*"
_SEGMENT = re.compile(rf"({_KEY})((?:\[\d+\])*)")
_OVERRIDE = re.compile(rf"^(?P<path>{_KEY}(?:\[\d+\])*(?:\.{_KEY}(?:\[\d+\])*)*)=(?P<value>.*)$", re.S)
_SCALAR_TYPES = ("int", "float", "bool", "str")
_EXPECTED = "expected PATH=VALUE, e.g. problem.dim=64 or 'estimator[0].epsilon=[0.1,0.01]'"


@dataclass(frozen=True)
class Override:
    """One ``PATH=VALUE`` from the command line: the keys of its path and its parsed value."""

    text: str
    keys: tuple[str | int, ...]
    value: Any


def is_override(text: str) -> bool:
    """Whether a command-line word is meant as an override (``KEY...=...``, not an option)."""
    return not text.startswith("-") and "=" in text and bool(re.match(rf"^{_KEY}", text))


def _plain(value: Any) -> Any:
    """YAML containers as plain dicts and lists: an override's value has no line in the file."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_override(text: str) -> Override:
    """``PATH=VALUE`` -> :class:`Override`; a :class:`SpecError` naming the override if malformed."""
    match = _OVERRIDE.match(text)
    if not match:
        raise SpecError([Issue(f"override {text!r}", _EXPECTED)])
    keys: list[str | int] = []
    for part in match["path"].split("."):
        seg = _SEGMENT.fullmatch(part)
        assert seg is not None  # the pattern above admits only such parts
        keys.append(seg[1])
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", seg[2])]
    try:
        value = load_yaml(match["value"]) if match["value"].strip() else None
    except SpecError as exc:
        reason = exc.issues[0].message if exc.issues else str(exc)
        raise SpecError([Issue(f"override {text!r}", f"the value is {reason}")]) from None
    return Override(text, tuple(keys), _plain(value))


def _path_text(keys: Sequence[str | int]) -> str:
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def _node_at(raw: Mapping[str, Any], keys: Sequence[str | int]) -> Any:
    """The catalog node an override path lands on (None when the path is not a known key)."""
    node: Any = catalog.TOP
    here: Any = raw
    for key in keys:
        if isinstance(node, Union):
            if isinstance(key, int):
                here = here[key] if isinstance(here, list) and key < len(here) else here
                continue
            kind = here.get("kind") if isinstance(here, Mapping) else None
            groups = [node.kinds[kind]] if isinstance(kind, str) and kind in node.kinds else list(node.kinds.values())
            if key == "kind":
                return Param("str")
            node = next((g.fields[key] for g in groups if key in g.fields), None)
        elif isinstance(node, Group) and isinstance(key, str):
            node = node.fields.get(key)
        else:
            return None
        here = here.get(key) if isinstance(here, Mapping) else None
        if node is None:
            return None
    return node


def _as_value(node: Any, value: Any) -> Any:
    """A list given to a one-value parameter is a grid of those values."""
    if isinstance(value, list) and isinstance(node, Param) and node.type in _SCALAR_TYPES:
        return {"grid": value}
    return value


def apply_overrides(raw: Any, overrides: Sequence[Override]) -> tuple[Any, dict[str, Override], list[Issue]]:
    """Apply overrides in order to a parsed spec (changed in place).

    Returns the spec, ``{issue path: override}`` (a validation problem at or under such a path is
    that override's), and the problems of overrides that could not be applied.
    """
    owners: dict[str, Override] = {}
    issues: list[Issue] = []
    if not isinstance(raw, dict):
        return raw, owners, issues  # the spec itself is wrong: validation says so
    for ov in overrides:
        here: Any = raw
        walked: list[str | int] = []
        ok = True
        for i, key in enumerate(ov.keys):
            last = i == len(ov.keys) - 1
            where = _path_text(walked) or "the spec"
            if isinstance(key, int):
                if isinstance(here, Mapping) and key == 0:
                    continue  # estimator[0] of a spec whose estimator is one mapping
                if not isinstance(here, list):
                    issues.append(Issue(f"override {ov.text!r}", f"{where} is not a list, cannot take [{key}]"))
                    ok = False
                    break
                if key >= len(here):
                    issues.append(Issue(f"override {ov.text!r}",
                                        f"{where} has {len(here)} entries, so [{key}] does not exist "
                                        f"(expected 0..{len(here) - 1})"))
                    ok = False
                    break
                walked.append(key)
                if last:
                    here[key] = _as_value(_node_at(raw, ov.keys), ov.value)
                else:
                    here = here[key]
                continue
            if not isinstance(here, Mapping):
                hint = f"; write {where}[i].{key}" if isinstance(here, list) else ""
                issues.append(Issue(f"override {ov.text!r}", f"{where} is not a mapping, cannot take .{key}{hint}"))
                ok = False
                break
            walked.append(key)
            if last:
                here[key] = _as_value(_node_at(raw, ov.keys), ov.value)
                if isinstance(here, MarkedDict):
                    here.lines.pop(key, None)
            else:
                if key not in here or here[key] is None:
                    here[key] = {}
                    owners.setdefault(_path_text(walked), ov)  # a mapping this override created
                here = here[key]
        if ok:
            owners[_path_text(walked)] = ov
    return raw, owners, issues


def _owner(path: str, owners: Mapping[str, Override]) -> Override | None:
    best = None
    for prefix, ov in owners.items():
        if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
            if best is None or len(prefix) >= len(best[0]):
                best = (prefix, ov)
    return best[1] if best else None


def _name_overrides(issues: Sequence[Issue], owners: Mapping[str, Override]) -> list[Issue]:
    out = []
    for issue in issues:
        ov = _owner(issue.path, owners)
        out.append(issue if ov is None else Issue(f"override {ov.text!r}: {issue.path}", issue.message))
    return out


class _Dumper(yaml.SafeDumper):
    """Quotes the strings gradsweep's loader would read as numbers (``1e-3``), so text round-trips."""


_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def merged_text(raw: Any, overrides: Sequence[Override], source: str | None) -> str:
    """The overridden spec as YAML text, with a comment that says where it came from."""
    head = f"# {source or 'spec'} with overrides: {' '.join(ov.text for ov in overrides)}\n"
    return head + yaml.dump(_plain(raw), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)


def load_spec_with_overrides(path_or_text: str | Path, overrides: Sequence[str]) -> Sweep:
    """:func:`load_spec` with command-line overrides applied; without overrides, exactly ``load_spec``.

    Problems (a malformed override, a bad value, an unknown key) are all reported at once in one
    :class:`SpecError`; those an override caused name the override.
    """
    if not overrides:
        return load_spec(path_or_text)
    path = Path(path_or_text)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([Issue("", f"cannot read the spec: {exc.strerror or exc}")], source=source) from None
    parsed: list[Override] = []
    problems: list[Issue] = []
    for word in overrides:
        try:
            parsed.append(parse_override(word))
        except SpecError as exc:
            problems += exc.issues
    raw = load_yaml(text, source=source)
    raw, owners, not_applied = apply_overrides(raw, parsed)
    problems += not_applied
    if problems:
        raise SpecError(problems, source=source)
    ctx = Context()
    header, alts = _expand(raw, ctx)
    if ctx.issues:
        raise SpecError(_name_overrides(ctx.issues, owners), source=source)
    resources = _resources(header)
    return Sweep(
        name=header["name"], description=header.get("description", ""), experiment=header["experiment"],
        cells=_cells(alts, resources), source_text=merged_text(raw, parsed, source), path=path,
        resources=resources, count=len(alts),
    )
