"""A subset of a sweep's cells: ``--where 'estimator.kind=cdg,problem.dim=32'`` and ``--cell ID``.

A condition is ``COLUMN=VALUE`` (or ``COLUMN!=VALUE``) on a cell parameter, named as its results
column (``problem.dim``, ``estimator.kind``, ``estimator.epsilon``, ``seed``; ``docs/results.md``);
``VALUE`` is YAML (``32``, ``0.1``, ``null`` for "does not apply") or a list of values
(``estimator.kind=[cdg,nes]``). Conditions separated by commas, and repeated ``--where``, must all
hold. ``--cell`` (repeatable) keeps the cells with those ids (or unique id prefixes). A selection
that keeps no cell is an error that lists the values the column takes, so a typo is not a silent
no-op.

The same selection filters a sweep's cells (plan, run, resume, status) and the rows of a results
table (report: :meth:`Selection.mask` on its flat parameter columns). Imports no torch, no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from gradsweep.declare import did_you_mean
from gradsweep.results_schema import flatten_cell, param_fields

__all__ = ["SelectionError", "Condition", "Selection", "FlatParams", "parse_selection", "select_cells", "select_sweep"]


class SelectionError(ValueError):
    """A ``--where`` or ``--cell`` that is malformed, names no column, or keeps no cell."""


@dataclass(frozen=True)
class Condition:
    """``column`` (one of the values ``values``), or not, when ``negate``."""

    text: str
    column: str
    values: tuple[Any, ...]
    negate: bool = False

    def holds(self, value: Any) -> bool:
        return any(_same(value, v) for v in self.values) != self.negate


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(b, list):  # a list-valued parameter: columns hold its JSON text
        return a == json.dumps(b)
    return str(a) == str(b)


def _columns() -> list[str]:
    return ["experiment", *(f.name for f in param_fields())]


def _split(text: str) -> list[str]:
    """Split on commas outside brackets: ``a=[1,2],b=3`` -> ``['a=[1,2]', 'b=3']``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_value(text: str) -> Any:
    import yaml

    from gradsweep.spec.yamlload import load_yaml

    try:
        value = load_yaml(text) if text.strip() else None
    except Exception:  # SpecError with YAML's reason: quote it in our message
        raise SelectionError(f"not valid YAML: {text!r}") from None
    if isinstance(value, (dict, yaml.YAMLObject)):
        raise SelectionError(f"expected a value or a list of values, got {text!r}")
    return value


def _condition(text: str) -> Condition:
    negate = "!=" in text
    column, sep, value = text.partition("!=" if negate else "=")
    column = column.strip()
    if not sep or not column:
        raise SelectionError(f"--where {text!r}: expected COLUMN=VALUE or COLUMN!=VALUE, e.g. estimator.kind=cdg")
    columns = _columns()
    if column not in columns:
        raise SelectionError(f"--where {text!r}: no parameter column {column!r}{did_you_mean(column, columns)} "
                             "(columns: docs/results.md)")
    try:
        parsed = _parse_value(value)
    except SelectionError as exc:
        raise SelectionError(f"--where {text!r}: {exc}") from None
    values = tuple(parsed) if isinstance(parsed, list) else (parsed,)
    if column == "seed" and not all(isinstance(v, int) for v in values):
        raise SelectionError(f"--where {text!r}: a seed is an integer")
    return Condition(text, column, values, negate)


@dataclass(frozen=True)
class Selection:
    """Conditions that must all hold, and cell ids (or prefixes) of which one must match."""

    conditions: tuple[Condition, ...] = ()
    cell_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions or self.cell_ids)

    def describe(self) -> str:
        """The selection as the options that made it."""
        parts = [f"--where {c.text}" for c in self.conditions] + [f"--cell {i}" for i in self.cell_ids]
        return " ".join(parts)

    def matches(self, cell_id: str, flat: Mapping[str, Any]) -> bool:
        """Whether a cell (its id and flat parameters) is selected."""
        if self.cell_ids and not any(cell_id.startswith(i) for i in self.cell_ids):
            return False
        return all(c.holds(flat.get(c.column)) for c in self.conditions)

    def mask(self, frame: Any) -> Any:
        """A boolean pandas Series: the rows of a results table (flat columns) that are selected.

        For the report: it holds the same columns as the cells' flat parameters.
        """
        import pandas as pd

        keep = pd.Series(True, index=frame.index)
        if self.cell_ids:
            ids = frame["cell_id"].astype(str)
            keep &= pd.concat([ids.str.startswith(i) for i in self.cell_ids], axis=1).any(axis=1)
        for c in self.conditions:
            col = frame[c.column] if c.column in frame.columns else pd.Series(None, index=frame.index, dtype=object)
            hit = pd.Series(False, index=frame.index)
            for v in c.values:
                hit |= col.isna() if v is None else (col == (json.dumps(v) if isinstance(v, list) else v))
            keep &= ~hit if c.negate else hit
        return keep


def parse_selection(where: Sequence[str] = (), cells: Sequence[str] = ()) -> Selection:
    """``--where`` texts and ``--cell`` ids -> :class:`Selection`; :class:`SelectionError` if malformed."""
    conditions = tuple(_condition(part) for text in where for part in _split(text))
    for text in where:
        if not _split(text):
            raise SelectionError(f"--where {text!r}: empty; expected COLUMN=VALUE[,COLUMN=VALUE...]")
    ids = tuple(i.strip() for i in cells)
    for i in ids:
        if not i or any(ch not in "0123456789abcdef" for ch in i):
            raise SelectionError(f"--cell {i!r}: expected a cell id (hex digits, as `gradsweep status` prints)")
    return Selection(conditions, ids)


class FlatParams:
    """Flat parameters of cells, each shared nested mapping (and scalar) flattened once.

    The cells of one grid share their nested mappings (only the seed differs, as :func:`plan`
    uses), so 200,000 cells cost a dictionary lookup per condition, not a flatten each.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple, dict[str, Any]] = {}

    @staticmethod
    def memo_key(key: str, value: Any) -> tuple:
        """Equal for the same shared object (or equal scalar) under ``key``."""
        return (key, id(value)) if isinstance(value, (Mapping, list)) else (key, type(value), value)

    def part(self, key: str, value: Any) -> dict[str, Any]:
        """The flat columns of the top-level config key ``key`` holding ``value``."""
        memo = self.memo_key(key, value)
        part = self._memo.get(memo)
        if part is None:
            part = self._memo[memo] = flatten_cell({key: value})
        return part

    def value(self, cell: Any, column: str) -> Any:
        top = column.split(".", 1)[0]
        if top not in cell.config:
            return None
        return self.part(top, cell.config[top]).get(column)

    def flat(self, cell: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in cell.config.items():
            out.update(self.part(key, value))
        return out


def select_cells(cells: Sequence[Any], selection: Selection) -> list[Any]:
    """The cells a selection keeps, in their order; :class:`SelectionError` if it keeps none.

    The error says which condition emptied the selection and the values its column takes.
    """
    if not selection:
        return list(cells)
    for prefix in selection.cell_ids:
        hits = {c.id for c in cells if c.id.startswith(prefix)}
        if not hits:
            raise SelectionError(f"--cell {prefix}: no cell of the sweep has this id")
        if len(hits) > 1 and prefix not in hits:
            raise SelectionError(f"--cell {prefix}: ambiguous, {len(hits)} cells start with it; give more digits")
    flat = FlatParams()

    def by_id(cell: Any) -> bool:
        return not selection.cell_ids or any(cell.id.startswith(i) for i in selection.cell_ids)

    kept = [c for c in cells if by_id(c) and all(k.holds(flat.value(c, k.column)) for k in selection.conditions)]
    if kept:
        return kept
    pool = [c for c in cells if by_id(c)]
    for cond in selection.conditions:
        remaining = [c for c in pool if cond.holds(flat.value(c, cond.column))]
        if not remaining:
            seen = sorted({json.dumps(flat.value(c, cond.column)) for c in pool})
            shown = ", ".join(seen[:12]) + (", ..." if len(seen) > 12 else "")
            raise SelectionError(f"--where {cond.text}: no cell of the sweep matches ({cond.column} takes {shown})")
        pool = remaining
    raise SelectionError(f"{selection.describe()}: no cell of the sweep matches")  # pragma: no cover


def select_sweep(sweep: Any, selection: Selection) -> Any:
    """The sweep with only the selected cells (the same spec text: what is stored is the whole spec)."""
    if not selection:
        return sweep
    return sweep.with_cells(select_cells(sweep.cells, selection))
