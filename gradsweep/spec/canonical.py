"""The canonical cell and its id.

A cell's config is the spec's top-level keys except :data:`gradsweep.catalog.NOT_IN_CELL`, plus
``seed``: fully concrete, defaults filled, non-applicable parameters absent, ``dtype`` resolved,
numbers normalised, keys sorted. Its id is the first 16 hex digits of the sha256 of its canonical
JSON (sorted keys, no spaces; parameters at their ``introduced`` value left out), so it depends on the cell's content only: not on key order, not on
the other cells of the grid, not on the machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from gradsweep import catalog
from gradsweep.catalog import Group, Param
from gradsweep.spec.errors import SpecError
from gradsweep.spec.validate import Alt, Context, expand_group

__all__ = ["sweep_cell_group", "cell_group", "canonical_cell", "canonical_json", "cell_id", "resolve_dtype"]

SEED = Param("int", 0, "the cell's seed (one of the spec's seeds)")


def sweep_cell_group() -> Group:
    """The keys of one cell as a sweep gives them (``seed`` comes from ``seeds``)."""
    return Group({k: v for k, v in catalog.TOP.fields.items() if k not in catalog.NOT_IN_CELL})


def cell_group() -> Group:
    """The keys of one concrete cell, ``seed`` included."""
    return Group({**sweep_cell_group().fields, "seed": SEED})


def resolve_dtype(merged: dict[str, Alt]) -> None:
    """``dtype: null`` -> the problem's declared precision (float64 for rosenbrock, a smooth
    sanity check), else float32."""
    if merged.get("dtype", ("float32", ""))[0] is None:
        problem = merged.get("problem", (None, ""))[0]
        kind = problem.get("kind") if isinstance(problem, Mapping) else None
        dtype = catalog.problem_dtype(kind) if kind else "float32"
        merged["dtype"] = (dtype, json.dumps(dtype))


resolve_dtype.keys = ("dtype", "problem")  # type: ignore[attr-defined]  # what it reads and writes


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a (canonical) config: sorted keys, no spaces."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def cell_id(canonical: Mapping[str, Any]) -> str:
    """First 16 hex digits of sha256 of the canonical JSON of a canonical cell config.

    Parameters at their ``introduced`` value (:attr:`gradsweep.catalog.Param.introduced`) are
    left out of the hashed text, as :func:`gradsweep.spec.expand` does: a cell computed before a
    parameter existed keeps its id.
    """
    hashed = catalog.without_introduced(cell_group(), canonical)
    return hashlib.sha256(canonical_json(hashed).encode()).hexdigest()[:16]


def canonical_cell(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """One concrete cell config (loose: missing keys get defaults) in canonical form.

    Accepts its own output unchanged. Raises :class:`SpecError` for unknown keys, bad values,
    grids (a cell is one point) and the sweep-level keys (``name``, ``seeds``, ...).
    """
    ctx = Context()
    alts = expand_group(cell_group(), mapping, "", None, ctx, resolve=resolve_dtype, what="a cell")
    if not ctx.issues and len(alts) != 1:
        ctx.add("", f"expected one concrete cell, got a grid of {len(alts)} cells")
    if ctx.issues:
        raise SpecError(ctx.issues, source="cell config")
    return json.loads(canonical_json(alts[0][0]))  # a private copy (the text may omit introduced keys)
