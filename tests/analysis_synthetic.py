"""Small results folders written by hand with the declared schema, for the analysis tests.

A cell is its flat parameters (``{"problem.dim": 4, "estimator.kind": "cdg", ...}``) plus rows;
every schema column a cell does not set is null, exactly as the store writes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from gradsweep.results_schema import results_schema


def cell_id_of(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:16]


def write_cell(
    folder: Path,
    params: Mapping[str, Any],
    rows: Iterable[Mapping[str, Any]],
    *,
    sweep: str = "synthetic",
    experiment: str = "probe",
) -> str:
    """Write one cell file ``<cell_id>.parquet`` and return the cell id."""
    schema = results_schema()
    rows = list(rows)
    cell_id = cell_id_of(params)
    fixed = {"sweep": sweep, "cell_id": cell_id, "experiment": experiment, **params}
    columns = {}
    for f in schema:
        columns[f.name] = [row.get(f.name, fixed.get(f.name)) for row in rows]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), folder / f"{cell_id}.parquet")
    return cell_id


def probe_rows(values: Mapping[tuple[int, float], float], seconds: Mapping[int, float] | None = None) -> list[dict]:
    """Probe rows from ``{(batch, lr): loss_decrease}`` (loss_before 1.0)."""
    return [
        {
            "record": "probe", "batch": b, "lr": lr, "loss_before": 1.0, "loss_after": 1.0 - d,
            "loss_decrease": d, "estimator_seconds": (seconds or {}).get(b, 0.01),
        }
        for (b, lr), d in values.items()
    ]


TOY = {"problem.kind": "toy_mlp", "problem.depth": 3, "problem.activation": "binary",
       "problem.data.batch_size": 64, "problem.data.batches": 2, "params": "all",
       "dtype": "float32", "device": "cpu", "measure.evaluate": "plain"}
