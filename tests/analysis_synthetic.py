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


def quickstart_like(folder: Path, *, seeds: Iterable[int] = (0, 1), spec_text: str | None = None) -> list[str]:
    """A folder shaped like the quick-start sweep: toy MLP dims 4 and 8, raw and pretrained,
    CDG (two epsilons), NES (two sample counts), STE (two variants), cosine rows against CDG,
    plus a Rosenbrock descent cell per seed. Numbers are smooth made-up curves. Returns cell ids."""
    estimators = (
        [{"estimator.kind": "cdg", "estimator.epsilon": e, "estimator.mode": "central"} for e in (0.1, 0.01)]
        + [{"estimator.kind": "nes", "estimator.sigma": 0.1, "estimator.samples": n, "estimator.antithetic": False,
            "estimator.shaping": "none", "estimator.seed": 0} for n in (50, 100)]
        + [{"estimator.kind": "ste", "estimator.variant": v} for v in ("clipped", "polynomial")]
    )
    lrs = (0.01, 0.1, 0.3, 0.6, 0.9)
    ids = []
    for dim in (4, 8):
        for pretrain in (None, 50):
            for i, est in enumerate(estimators):
                for seed in seeds:
                    params = {**TOY, "problem.dim": dim, "problem.pretrain.steps": pretrain,
                              "problem.pretrain.lr": None if pretrain is None else 0.01, **est,
                              "measure.reference.kind": "cdg", "measure.reference.epsilon": 0.1, "seed": seed}
                    peak = 0.4 / (1 + i) / dim ** 0.5
                    values = {(b, lr): peak * lr * (1.2 - lr) * 4 + 0.01 * (b - seed) for b in (0, 1) for lr in lrs}
                    rows = probe_rows(values, {0: 0.001 * (i + 1), 1: 0.001 * (i + 1)})
                    rows += [{"record": "cosine", "batch": b, "layer": layer, "reference": "cdg(epsilon=0.1)",
                              "cosine": 0.9 - 0.1 * i + 0.01 * b}
                             for b in (0, 1) for layer in ("linear:1", "linear:2", "linear:3", "all")]
                    ids.append(write_cell(folder, params, rows, sweep="quickstart"))
    for seed in seeds:
        params = {"problem.kind": "rosenbrock", "problem.variant": "pairs", "problem.n": 4,
                  "estimator.kind": "cdg", "estimator.epsilon": 0.01, "estimator.mode": "central",
                  "step.lr": 0.1, "step.steps": 300, "dtype": "float64", "seed": seed}
        rows = [{"record": "descent", "step": s, "loss": 100.0 * 0.5 ** (s / 100) + seed, "lr": 0.1, "epsilon": 0.01}
                for s in range(0, 301, 100)]
        ids.append(write_cell(folder, params, rows, sweep="quickstart", experiment="descent"))
    if spec_text is not None:
        (folder / "_gradsweep").mkdir(exist_ok=True)
        (folder / "_gradsweep" / "spec.yaml").write_text(spec_text)
    return ids
