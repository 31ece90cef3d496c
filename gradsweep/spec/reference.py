"""The spec reference, written from the kinds' declarations so it cannot drift from the code.

``python -m gradsweep.spec.reference > docs/specs.md`` regenerates ``docs/specs.md`` (gradsweep's
own kinds); a test checks that the committed page equals what this prints. ``gradsweep kinds``
lists every kind installed here, plugins included, with the package that provides it.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import argparse

from gradsweep import catalog
from gradsweep.catalog import REQUIRED, Group, Param, Union
from gradsweep.declare import ROLES

__all__ = ["render", "add_arguments", "run"]

_INTRO = """\
# Spec reference

Generated from the kinds' declarations (`gradsweep/problems/__init__.py`, `gradsweep/estimators/__init__.py`,
`gradsweep/experiments/__init__.py`) by `python -m gradsweep.spec.reference`; do not edit by hand.
`gradsweep kinds` lists the same for every kind installed, plugins included.
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


_HEADINGS = {
    "problem": ("Problems", "problem: {kind: ...}", "problem"),
    "estimator": ("Estimators", "estimator: {kind: ...}, also measure.reference and step.switch", "estimator"),
    "experiment": ("Experiments", "experiment: ...", ""),
    "activation": ("Activations", "a toy's activation, teacher_activation", ""),
    "surrogate": ("Surrogate derivatives", "an STE variant; xnor_resnet18's ste", "estimator"),
    "optimizer": ("Optimizers", "step.optimizer, pretrain.optimizer", "step"),
    "model": ("Models", "problem: {kind: torch_module, model: {kind: ...}}", "problem.model"),
    "dataset": ("Datasets", "problem: {kind: torch_module, data: {kind: ...}}", "problem.data"),
}


def render(reg: Any = None, *, packages: bool = False) -> str:
    """The reference page of a registry's kinds (default: gradsweep's own)."""
    from gradsweep import registry

    reg = reg or registry.builtin()
    top = catalog.derive(reg)["TOP"]
    lines = [_INTRO, "## Top level", ""]
    lines += _table(top)
    for role in ROLES:
        table = reg.by_role[role]
        if not table:
            continue
        title, where, prefix = _HEADINGS[role]
        lines += [f"## {title} (`{where}`)", ""]
        for name, kind in table.items():
            source = f" (package {kind.package} {kind.version}, {kind.source})" if packages else ""
            lines += [f"### `{name}`{source}", "", kind.doc or "", ""]
            group = reg.group(role, name)
            if group.fields or role in ("problem", "estimator"):
                lines += _table(group, prefix)
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("role", nargs="?", choices=ROLES, help="list only the kinds of this role")
    p.add_argument("--markdown", action="store_true", help="the full reference page (as docs/specs.md) of every installed kind")


def run(args: argparse.Namespace) -> int:
    """``gradsweep kinds``: every installed kind, its parameters and defaults, and its package."""
    from gradsweep import registry

    reg = registry.registry()
    if args.markdown:
        print(render(reg, packages=True), end="")
        return 0
    for role in [args.role] if args.role else ROLES:
        table = reg.by_role[role]
        if not table:
            continue
        print(f"{_HEADINGS[role][0].lower()}:")
        for name, kind in table.items():
            params = ", ".join(
                f"{key}={json.dumps(node.default) if isinstance(node, Param) and node.default is not REQUIRED else '...'}"
                for key, node in reg.group(role, name).fields.items()
            )
            origin = "built-in" if kind.package == "gradsweep" else f"{kind.package} {kind.version}"
            print(f"  {name:<16} [{origin}] {kind.doc}")
            if params:
                print(f"  {'':<16} {params}")
    for plugin in reg.broken:
        print(f"warning: {plugin.where} failed to load: {plugin.error}")
    return 0


if __name__ == "__main__":
    print(render(), end="")
