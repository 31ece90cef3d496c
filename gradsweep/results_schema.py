"""The declared Arrow schema of every results row.

Declared, not inferred: every cell file of every sweep is written with this one schema (a column
that does not apply to a cell is null), so reading a whole folder with ``pyarrow.dataset``,
``pandas.read_parquet`` or DuckDB gives one table. The parameter columns are derived from
:mod:`gradsweep.catalog`; the metric and provenance columns are listed here.

Rows come in *records*, named by the ``record`` column:

- ``probe``: ``batch, lr, loss_before, loss_after, loss_decrease, estimator_seconds`` (one row
  per batch and learning rate; ``grad_norm`` is the norm of the raw estimate);
- ``cosine``: ``batch, layer, reference, cosine, norm_ratio`` (``layer == "all"`` for all
  estimated parameters together; ``norm_ratio`` = the estimate's norm over the reference's);
- ``descent``: ``step, loss, lr, epsilon`` (the lr and epsilon in force at that step);
- ``train``: ``step, loss, accuracy, lr`` and ``estimator`` (the estimator in force, which
  changes after a ``switch``);
- ``pretrain``: ``step, epoch, loss, accuracy, val_loss, val_accuracy`` (a pretraining curve).

Imports pyarrow only: no torch, no Ray.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Iterator, Mapping

import pyarrow as pa

from gradsweep import catalog
from gradsweep.catalog import Group, Union

__all__ = [
    "RECORDS", "BASE_FIELDS", "METRIC_FIELDS", "PROVENANCE_FIELDS", "param_fields",
    "results_schema", "flatten_cell", "introduced_columns",
]

RECORDS = ("probe", "cosine", "descent", "train", "pretrain")

BASE_FIELDS = [
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("record", pa.string(), nullable=False),
]

METRIC_FIELDS = [
    pa.field("batch", pa.int64()),
    pa.field("lr", pa.float64()),
    pa.field("loss_before", pa.float64()),
    pa.field("loss_after", pa.float64()),
    pa.field("loss_decrease", pa.float64()),
    pa.field("grad_norm", pa.float64()),
    pa.field("layer", pa.string()),
    pa.field("reference", pa.string()),
    pa.field("cosine", pa.float64()),
    pa.field("norm_ratio", pa.float64()),
    pa.field("step", pa.int64()),
    pa.field("epoch", pa.int64()),
    pa.field("loss", pa.float64()),
    pa.field("epsilon", pa.float64()),
    pa.field("accuracy", pa.float64()),
    pa.field("val_loss", pa.float64()),
    pa.field("val_accuracy", pa.float64()),
    pa.field("estimator", pa.string()),
    pa.field("estimator_seconds", pa.float64()),
]

PROVENANCE_FIELDS = [
    pa.field("run_device", pa.string()),
    pa.field("cell_seconds", pa.float64()),
    pa.field("gradsweep_version", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("host", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("ray_version", pa.string()),
    pa.field("python_version", pa.string()),
    pa.field("plugins", pa.string()),  # package==version of the plugins whose kinds the cell used
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
]

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
# Lists are stored as JSON text; the probe's lr grid is not a column at all (rows carry `lr`).
_SKIPPED_TYPES = ("number_list", "int_list")


def _walk(node: Group | Union, prefix: str) -> Iterator[tuple[str, pa.DataType]]:
    if isinstance(node, Union):
        yield f"{prefix}.kind", pa.string()
        for group in node.kinds.values():
            yield from _walk(group, prefix)
        return
    for key, child in node.fields.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(child, (Group, Union)):
            yield from _walk(child, path)
        elif child.type not in _SKIPPED_TYPES:
            yield path, _ARROW_TYPES.get(child.type, pa.string())


def param_fields() -> list[pa.Field]:
    """One column per cell parameter path, in catalog order, plus ``seed``.

    A path that two kinds share (``estimator.seed``) is one column; the catalog must give it one
    type, which this checks.
    """
    seen: dict[str, pa.DataType] = {}
    top = Group({k: v for k, v in catalog.TOP.fields.items() if k not in catalog.NOT_IN_CELL})
    for path, dtype in _walk(top, ""):
        if path in seen and seen[path] != dtype:
            raise TypeError(f"catalog gives {path!r} two types: {seen[path]} and {dtype}")
        seen.setdefault(path, dtype)
    seen["seed"] = pa.int64()
    return [pa.field(p, t) for p, t in seen.items()]


@lru_cache(maxsize=None)
def introduced_columns() -> dict[str, tuple[Any, str]]:
    """``{column: (introduced value, sibling column)}`` for parameters added after results existed.

    A file written before such a parameter lacks its column; a reader may fill it with the
    introduced value (what those cells computed with) in the rows where the sibling, a parameter
    of the same group that every such row sets, is not null (a raw toy has no ``pretrain.until``).
    """
    out: dict[str, tuple[Any, str]] = {}

    def walk(node: Group | Union, prefix: str) -> None:
        groups = node.kinds.values() if isinstance(node, Union) else [node]
        for group in groups:
            sibling = next((k for k, c in group.fields.items() if not isinstance(c, (Group, Union))
                            and c.when is None and c.introduced is catalog.ORIGINAL), None)
            for key, child in group.fields.items():
                path = f"{prefix}.{key}" if prefix else key
                if isinstance(child, (Group, Union)):
                    walk(child, path)
                elif child.introduced is not catalog.ORIGINAL and sibling is not None:
                    out[path] = (child.introduced, f"{prefix}.{sibling}" if prefix else sibling)

    walk(Group({k: v for k, v in catalog.TOP.fields.items() if k not in catalog.NOT_IN_CELL}), "")
    return out


_SCHEMA: pa.Schema | None = None


def results_schema() -> pa.Schema:
    """The schema of every row in every cell file."""
    global _SCHEMA
    if _SCHEMA is None:
        names = [f.name for f in BASE_FIELDS + METRIC_FIELDS + PROVENANCE_FIELDS]
        params = [f for f in param_fields() if f.name not in names]
        _SCHEMA = pa.schema(BASE_FIELDS + params + METRIC_FIELDS + PROVENANCE_FIELDS)
    return _SCHEMA


_PARAM_COLUMNS: frozenset[str] | None = None


def _param_columns() -> frozenset[str]:
    """The parameter column names, computed once (flatten_cell runs once per cell written)."""
    global _PARAM_COLUMNS
    if _PARAM_COLUMNS is None:
        _PARAM_COLUMNS = frozenset(f.name for f in param_fields())
    return _PARAM_COLUMNS


def flatten_cell(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A canonical cell config as ``{column: value}``: nested keys joined by dots, lists as JSON.

    Paths that are not columns (the lr grid) are left out.
    """
    columns = _param_columns()
    out: dict[str, Any] = {}

    def visit(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, f"{path}.{key}" if path else key)
        elif path in columns:
            out[path] = json.dumps(node) if isinstance(node, (list, tuple)) else node

    visit(config, prefix)
    return out


def reset() -> None:
    """Forget the derived schema and columns (the kinds changed: a plugin installed, a reload)."""
    global _SCHEMA, _PARAM_COLUMNS
    _SCHEMA = _PARAM_COLUMNS = None
    introduced_columns.cache_clear()
