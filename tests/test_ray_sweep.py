"""A small real sweep on a local Ray: the documented columns, three readers, the same numbers as in-process."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.results_schema import PROVENANCE_FIELDS
from gradsweep.runner import run
from gradsweep.spec import load_spec

pytestmark = pytest.mark.slow

# Columns SPEC.md promises in every row of a probe sweep.
DOCUMENTED = [
    "sweep", "cell_id", "experiment", "record", "problem.kind", "problem.dim", "estimator.kind",
    "estimator.epsilon", "estimator.variant", "seed", "batch", "lr", "loss_before", "loss_after",
    "loss_decrease", "estimator_seconds", "run_device", "gradsweep_version", "git_commit", "host",
    "torch_version", "ray_version", "cell_seconds",
]
PROVENANCE = [f.name for f in PROVENANCE_FIELDS] + ["estimator_seconds"]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without timing and provenance, in a fixed order: what must not depend on scheduling."""
    keep = [c for c in frame.columns if c not in PROVENANCE]
    return frame[keep].sort_values(["cell_id", "record", "batch", "lr"]).reset_index(drop=True)


def test_a_real_sweep_on_ray_reads_back_with_the_documented_columns(ray_local, tiny_spec: Path, tmp_path: Path):
    from gradsweep.executors.ray_executor import RayExecutor

    sweep = load_spec(tiny_spec)
    executor = RayExecutor(chunk_size=3, max_in_flight=2, hooks=FaultHooks())
    result = run(sweep, tmp_path / "ray", executor, stream=io.StringIO())
    assert (result.done, result.failed, result.exit_code) == (8, [], 0)
    folder = tmp_path / "ray" / "tiny"

    frame = pd.read_parquet(folder)
    assert set(DOCUMENTED) <= set(frame.columns)
    assert len(frame) == 8 * 3 and frame["cell_id"].nunique() == 8
    assert (frame["sweep"] == "tiny").all() and (frame["run_device"] == "cpu").all()
    assert frame.loc[frame["estimator.kind"] == "ste", "estimator.epsilon"].isna().all()  # not applicable: null
    assert frame.loc[frame["estimator.kind"] == "cdg", "estimator.variant"].isna().all()
    assert frame["loss_decrease"].notna().all() and (frame["cell_seconds"] > 0).all()

    import duckdb

    con = duckdb.connect()
    count, kinds = con.execute(
        f"select count(*), count(distinct \"estimator.kind\") from read_parquet('{folder}/*.parquet')"
    ).fetchone()
    assert (count, kinds) == (24, 2)

    run(sweep, tmp_path / "local", LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())
    local = pd.read_parquet(tmp_path / "local" / "tiny")
    pd.testing.assert_frame_equal(comparable(frame), comparable(local))


def test_gpu_requests_are_dropped_on_a_cluster_without_gpus(ray_local, tiny_spec: Path):
    from gradsweep.executors.ray_executor import RayExecutor

    cell = load_spec(tiny_spec).cells[0]
    gpu_cell = type(cell)(cell.id, cell.config, {"cpu": 1.0, "gpu": 0.25})
    assert RayExecutor()._shape(gpu_cell) == (1.0, 0.0, 0.0)  # cpu, gpu, memory (GB)


def test_chunks_adapt_to_the_measured_cell_time_and_shrink_at_the_tail(ray_local):
    from gradsweep.executors.ray_executor import RayExecutor

    ex = RayExecutor(target_chunk_seconds=1.0)
    assert ex._next_chunk_size((1.0, 0.0), 1000) == 1  # nothing measured yet
    ex._measured_seconds, ex._measured_cells = 0.5, 10  # 50 ms cells
    assert ex._next_chunk_size((1.0, 0.0), 1000) == 20
    assert ex._next_chunk_size((1.0, 0.0), 12) == 3  # 2 CPUs: 12 cells left -> 4 chunks of 3
    assert RayExecutor(chunk_size=7)._next_chunk_size((1.0, 0.0), 1000) == 7
    with pytest.raises(ValueError, match="max_in_flight: expected a positive integer, got 0"):
        RayExecutor(max_in_flight=0)
