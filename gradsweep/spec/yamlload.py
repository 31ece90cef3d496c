"""Safe YAML loading that remembers where each key and list item was written.

Specs are data: this is ``yaml.safe_load`` (no tags that build Python objects, no code), with
three differences that serve error messages and users:

- mappings load as :class:`MarkedDict` and lists as :class:`MarkedList`, plain ``dict``/``list``
  subclasses that remember the 1-based line of each key / item, so a validation error can say
  "line 12: estimator[1].sigma: ...";
- a key written twice is an error (``safe_load`` silently keeps the last one, so a typo'd copy
  would quietly win);
- ``1e-3`` is a float, as in YAML 1.2 and as researchers write it (YAML 1.1 reads it as the
  string ``"1e-3"``, which would then fail as "expected a number" with no visible reason).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from gradsweep.spec.errors import Issue, SpecError

__all__ = ["MarkedDict", "MarkedList", "load_yaml", "line_of"]


class MarkedDict(dict):
    """A ``dict`` that knows the line of each of its keys (``lines``) and of itself (``line``)."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class MarkedList(list):
    """A ``list`` that knows the line of each item (``lines``) and of itself (``line``)."""

    line: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[int] = []


def line_of(container: Any, key: Any) -> int | None:
    """The line of ``container[key]`` if the container came from :func:`load_yaml`, else None."""
    if isinstance(container, MarkedDict):
        return container.lines.get(key, container.line)
    if isinstance(container, MarkedList) and isinstance(key, int) and 0 <= key < len(container.lines):
        return container.lines[key]
    return getattr(container, "line", None)


class _Loader(yaml.SafeLoader):
    """SafeLoader building marked containers; see the module docstring."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> MarkedDict:
    loader.flatten_mapping(node)  # resolves YAML merge keys (<<) as safe_load does
    out = MarkedDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found an unhashable key", key_node.start_mark,
            ) from None
        if key in out:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found key {key!r} a second time (first on line {out.lines[key]})",
                key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> MarkedList:
    out = MarkedList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_yaml(text: str, *, source: str | None = None) -> Any:
    """Parse ``text`` safely; a YAML syntax error becomes a :class:`SpecError` with its line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise SpecError([Issue("", f"not valid YAML: {what}", line)], source=source) from None
    except yaml.YAMLError as exc:
        raise SpecError([Issue("", f"not valid YAML: {exc}")], source=source) from None
