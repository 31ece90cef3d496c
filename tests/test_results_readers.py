"""A results folder is read alike by pandas, pyarrow.dataset, DuckDB and Polars; older folders keep working.

Real toy cells run in-process; the folder is then read by each library as its users would.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.runner import run, status
from gradsweep.spec import load_spec
from gradsweep.store import LockHeld, SweepStore, meta_location, read_results, report_location, results_files

MIXED_SPEC = """\
name: mixed
experiment: probe
problem: {kind: toy_mlp, dim: 4, depth: 3, activation: binary, data: {batch_size: 32, batches: 1}}
estimator:
  - kind: cdg
    epsilon: {grid: [0.1, 0.01]}
  - kind: nes
    sigma: 0.1
    samples: 4
  - kind: ste
    variant: clipped
measure: {lrs: [0.1, 1.0]}
seeds: [0]
resources: {cpu: 1, gpu: 0}
device: cpu
"""


def _run(spec: Path | str, results: Path, **hooks):
    return run(load_spec(spec), results, LocalExecutor(hooks=FaultHooks(**hooks)), stream=io.StringIO())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A finished sweep of 4 cells, with a failure record, a quarantined file and a report beside it."""
    spec = tmp_path / "mixed.yaml"
    spec.write_text(MIXED_SPEC)
    cells = load_spec(spec).cells
    _run(spec, tmp_path / "results", fail_cells=cells[3].id)  # a failure record
    store = SweepStore(tmp_path / "results" / "mixed")
    shutil.copyfile(store.cell_path(cells[0].id), store.cell_path(cells[3].id))  # a misnamed copy ...
    _run(spec, tmp_path / "results")  # ... quarantined by the next run, which also runs the failed cell
    report = Path(report_location(store.location))
    report.mkdir()
    (report / "index.html").write_text("<html></html>")
    return tmp_path / "results" / "mixed"


def test_the_bookkeeping_and_the_report_live_beside_the_data(folder: Path):
    assert meta_location(folder) == f"{folder}.gradsweep" and report_location(folder) == f"{folder}.report"
    assert meta_location("s3://bucket/results/mixed/") == "s3://bucket/results/mixed.gradsweep"
    assert {p.suffix for p in folder.iterdir()} == {".parquet"} and len(list(folder.iterdir())) == 4
    meta = Path(f"{folder}.gradsweep")
    assert (meta / "spec.yaml").is_file() and (meta / "events.jsonl").is_file()
    assert [p.name.endswith(".parquet.bad") for p in (meta / "quarantine").iterdir()] == [True]
    assert sorted(results_files(folder.parent).sweep_folders()) == [str(folder)]


def test_pandas_pyarrow_duckdb_and_polars_read_the_folder_as_one_table(folder: Path):
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

    expected = read_results(folder).to_pandas()
    assert len(expected) == 4 * 2 and expected["cell_id"].nunique() == 4

    def same(frame: pd.DataFrame) -> None:
        key = ["cell_id", "lr"]
        got = frame[key + ["loss_decrease"]].sort_values(key).reset_index(drop=True)
        want = expected[key + ["loss_decrease"]].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)

    same(pd.read_parquet(folder))
    same(ds.dataset(folder, format="parquet").to_table().to_pandas())
    same(duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*.parquet')").df())
    same(pl.read_parquet(folder).to_pandas())
    same(pl.scan_parquet(folder).collect().to_pandas())
    same(pl.read_parquet(f"{folder}/*.parquet").to_pandas())


def test_read_results_selects_columns_and_rows(folder: Path):
    import pyarrow.compute as pc

    table = read_results(folder, columns=["cell_id", "lr", "loss_decrease"], filter=pc.field("estimator.kind") == "cdg")
    assert table.column_names == ["cell_id", "lr", "loss_decrease"] and table.num_rows == 2 * 2
    assert read_results(folder.parent, columns=["cell_id"]).num_rows == 8  # a results root reads too
    with pytest.raises(ValueError, match="not in the results schema: nope"):
        read_results(folder, columns=["nope"])


def test_load_gives_a_tidy_table_with_a_readable_estimator_label(folder: Path):
    import gradsweep

    frame = gradsweep.load(folder)
    labels = frame.drop_duplicates("cell_id")["estimator"]
    assert sorted(labels) == ["CDG(epsilon=0.01)", "CDG(epsilon=0.1)", "NES", "STE"]
    assert frame["estimator"].notna().all() and "problem.teacher_activation" not in frame.columns  # all-null dropped
    best = frame[frame.record == "probe"].groupby(["estimator", "lr"]).loss_decrease.mean()
    assert len(best) == 4 * 2
    # the README's example: without dropna=False the NES and STE rows would vanish (null epsilon)
    by_eps = frame[frame.record == "probe"].groupby(["estimator.kind", "estimator.epsilon", "lr"], dropna=False)
    assert by_eps.loss_decrease.mean().size == 4 * 2


def _make_legacy(folder: Path) -> Path:
    """Turn a folder of this layout into one the previous version wrote: bookkeeping in ``_gradsweep/``."""
    meta = Path(f"{folder}.gradsweep")
    legacy = folder / "_gradsweep"
    shutil.move(meta, legacy)
    shutil.rmtree(legacy / "tmp", ignore_errors=True)
    for bad in (legacy / "quarantine").iterdir():  # the old names ended in .parquet
        bad.rename(bad.with_name(bad.name[: -len(".bad")]))
    return legacy


def test_a_folder_of_the_previous_layout_is_read_then_moved_on_the_next_run(folder: Path):
    legacy = _make_legacy(folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (legacy / "lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "t"}))
    (legacy / "failures" / "0123456789abcdef.json").write_text('{"error": "RuntimeError: old", "attempts": 2}')
    events_before = SweepStore(folder).events()
    before = {p.relative_to(legacy) for p in legacy.rglob("*") if p.is_file()}

    st = status(folder)  # read in place, nothing moved
    assert len(st.plan.done) == 4 and st.lock["pid"] == dead.pid and legacy.is_dir()
    assert "0123456789abcdef" in SweepStore(folder).failures()

    result = _run(folder.parent.parent / "mixed.yaml", folder.parent)
    assert result.ran == 0 and result.exit_code == 0
    meta = Path(f"{folder}.gradsweep")
    assert not legacy.exists() and {p.suffix for p in folder.iterdir()} == {".parquet"}
    after = {p.relative_to(meta) for p in meta.rglob("*") if p.is_file()}
    renamed = {Path(str(p) + ".bad") if p.parts[0] == "quarantine" else p for p in before - {Path("lock")}}
    assert renamed <= after  # nothing lost
    assert json.loads((meta / "failures" / "0123456789abcdef.json").read_text())["error"] == "RuntimeError: old"
    events = SweepStore(folder).events()
    assert events[: len(events_before)] == events_before  # older events first
    assert {"layout_migrated", "lock_taken_over"} <= {e["event"] for e in events}


def test_the_previous_layout_is_not_moved_under_a_live_driver(folder: Path):
    legacy = _make_legacy(folder)
    (legacy / "lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "t"}))
    with pytest.raises(LockHeld, match=rf"pid {os.getpid()} .*_gradsweep/lock"):
        _run(folder.parent.parent / "mixed.yaml", folder.parent)
    assert (legacy / "spec.yaml").is_file() and (legacy / "lock").is_file()
