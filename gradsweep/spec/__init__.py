"""The spec layer: YAML -> validated, expanded, canonical cells with content-hash ids.

Imports only yaml and the catalog (no torch, no Ray), so ``gradsweep plan`` stays fast.

>>> from gradsweep.spec import canonical_cell, cell_id
>>> cfg = canonical_cell({"problem": {"kind": "rosenbrock"}, "estimator": {"kind": "cdg"}})
>>> cfg["dtype"], cfg["estimator"]
('float64', {'epsilon': 0.1, 'kind': 'cdg', 'mode': 'central'})
"""

from __future__ import annotations

from gradsweep.spec.canonical import canonical_cell, canonical_json, cell_id
from gradsweep.spec.errors import Issue, SpecError
from gradsweep.spec.expand import MAX_CELLS, Cell, Sweep, count_cells, expand, load_spec
from gradsweep.spec.validate import validate_estimator

__all__ = [
    "SpecError", "Issue", "Sweep", "Cell", "load_spec", "expand", "count_cells", "MAX_CELLS",
    "canonical_cell", "canonical_json", "cell_id", "validate_estimator",
]
