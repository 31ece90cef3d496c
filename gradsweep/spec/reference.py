"""The spec reference page, written from the catalog so it cannot drift from the code.

``python -m gradsweep.spec.reference > docs/specs.md`` regenerates ``docs/specs.md``; a test
checks that the committed page equals what this prints.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from gradsweep import catalog
from gradsweep.catalog import REQUIRED, Group, Param, Union

__all__ = ["render"]

_INTRO = """\
# Spec reference

Generated from `gradsweep/catalog.py` by `python -m gradsweep.spec.reference`; do not edit by hand.
The format is fixed by `SPEC.md` (in the project's shared folder); this page lists every key.

- Any scalar may be replaced by `{grid: [...]}`; a cell is one point of the product of all grids.
- A mapping may hold `zip: {a: [...], b: [...]}`: lists of one length that set `a` and `b` pairwise.
- Where a list of numbers is expected: a list, or `{linspace: [start, stop, count]}`,
  `{logspace: [start_exp, stop_exp, count]}`, `{arange: [start, stop, step]}` (also inside a list).
- `estimator:` may be a list (a union: each entry expands on its own); `estimator: ste` is short
  for `{kind: ste}`.
- A parameter written in a spec must apply to at least one value it is crossed with (for example
  `threshold` with a `variant` grid applies to `clipped` and is left out of the other variants'
  cells); a parameter that applies to none is an error, as is an unknown key.
- `seeds` are crossed with every other axis. `name`, `description`, `resources` and `seeds` are not
  part of a cell's identity: changing them reruns nothing.
"""


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _default(value: Any) -> str:
    if value is REQUIRED:
        return "**required**"
    return f"`{json.dumps(value)}`"


def _constraint(p: Param) -> str:
    parts = []
    if p.choices:
        parts.append(" \\| ".join(f"`{c}`" for c in p.choices))
    if p.low is not None:
        parts.append(f"{'>' if p.low_open else '>='} {p.low:g}")
    if p.high is not None:
        parts.append(f"<= {p.high:g}")
    if p.nullable:
        parts.append("or `null`")
    if p.pattern:
        parts.append(f"matches `{p.pattern}`")
    if p.when:
        parts.append("only when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when.items()))
    return "; ".join(parts)


def _rows(node: Group, prefix: str) -> Iterator[str]:
    for key, child in node.fields.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(child, Param):
            yield f"| `{path}` | {child.type} | {_default(child.default)} | {_constraint(child)} | {_cell(child.doc)} |"
        elif isinstance(child, Group):
            null = " (may be `null`" + (", the default)" if child.default is None else ")") if child.nullable else ""
            yield f"| `{path}` | mapping{null} | | {_when(child)} | {_cell(child.doc)} |"
            yield from _rows(child, path)
        else:
            many = "; or a list of them (a union)" if child.many else ""
            yield f"| `{path}` | mapping with `kind` (see below){many} | {_default(child.default)} | {_when(child)} | {_cell(child.doc)} |"


def _when(node: Group | Union) -> str:
    return "only when " + ", ".join(f"{k} in {list(v)}" for k, v in node.when.items()) if node.when else ""


def _table(node: Group, prefix: str = "") -> list[str]:
    rows = list(_rows(node, prefix))
    if not rows:
        return ["(no parameters)", ""]
    return ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |", *rows, ""]


def render() -> str:
    lines = [_INTRO, "## Top level", ""]
    lines += _table(catalog.TOP)
    lines += ["## Problems (`problem: {kind: ...}`)", ""]
    for kind, group in catalog.PROBLEMS.items():
        lines += [f"### `{kind}`", "", group.doc, ""] + _table(group, "problem")
    lines += ["## Estimators (`estimator: {kind: ...}`, also `measure.reference` and `step.switch`)", ""]
    for kind, group in catalog.ESTIMATORS.items():
        lines += [f"### `{kind}`", "", group.doc, ""] + _table(group, "estimator")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
