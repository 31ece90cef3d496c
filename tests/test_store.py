"""The results store: atomic cell files in the declared schema, validity, quarantine, lock, failures."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradsweep.provenance import cell_provenance
from gradsweep.results_schema import PROVENANCE_FIELDS, results_schema
from gradsweep.spec import load_spec
from gradsweep.store import LockHeld, StoreError, SweepStore, cell_table, encode_cell, read_results


@pytest.fixture
def cells(tiny_spec: Path):
    return load_spec(tiny_spec).cells


def _rows(seed: float) -> pd.DataFrame:
    return pd.DataFrame(
        {"record": ["probe"] * 2, "batch": [0, 0], "lr": [0.1, 1.0], "loss_decrease": [seed, 2 * seed], "run_device": "cpu"}
    )


def _table(cell, value: float = 1.0) -> pa.Table:
    return cell_table("tiny", cell.id, cell.config, _rows(value), cell_provenance(run_device="cpu", cell_seconds=0.5))


def test_cell_table_has_the_declared_schema_with_parameters_and_provenance(cells):
    table = _table(cells[0])
    assert table.schema.equals(results_schema(), check_metadata=False)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["sweep"] == "tiny" and row["cell_id"] == cells[0].id and row["experiment"] == "probe"
    assert row["problem.kind"] == "toy_mlp" and row["problem.dim"] == cells[0].config["problem"]["dim"]
    assert row["seed"] == cells[0].config["seed"]
    for f in PROVENANCE_FIELDS:
        assert row[f.name] is not None or f.name in ("git_commit", "plugins"), f.name  # plugins: null for built-in kinds
    assert row["cosine"] is None  # a metric the cell did not produce is null
    meta = table.schema.metadata
    assert json.loads(meta[b"gradsweep.config"]) == cells[0].config


def test_cell_table_refuses_undeclared_columns(cells):
    rows = _rows(1.0).assign(surprise=1)
    with pytest.raises(ValueError, match="does not declare: surprise"):
        cell_table("tiny", cells[0].id, cells[0].config, rows, {})


def test_written_cells_read_back_as_one_table_and_temporary_files_are_invisible(tmp_path: Path, cells):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    for i, cell in enumerate(cells[:3]):
        store.write_cell(cell.id, _table(cell, float(i)))
    (tmp_path / "tiny.gradsweep" / "tmp" / f"{cells[3].id}.parquet.1.tmp").write_bytes(b"half a file")
    assert set(store.cell_files()) == {c.id for c in cells[:3]}
    table = read_results(tmp_path / "tiny")
    assert table.num_rows == 6 and table.schema.equals(results_schema(), check_metadata=False)
    assert read_results(tmp_path).num_rows == 6  # a results root with several sweeps reads too
    assert len(pd.read_parquet(tmp_path / "tiny")) == 6
    assert store.scan(full=True).done == {c.id for c in cells[:3]}


def test_a_cell_file_read_without_the_declared_schema_still_has_its_types_and_metadata(cells):
    # the files do not embed the Arrow schema; plain Parquet types must read back as declared
    table = _table(cells[0])
    read = pq.read_table(pa.BufferReader(encode_cell(table)))
    assert read.schema.equals(results_schema(), check_metadata=False)
    assert read.equals(table.replace_schema_metadata(None).cast(read.schema))
    assert json.loads(read.schema.metadata[b"gradsweep.config"]) == cells[0].config
    assert read.schema.metadata[b"gradsweep.cell_id"] == cells[0].id.encode()


def test_truncated_and_corrupt_files_are_detected_by_both_checks(tmp_path: Path, cells):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    good, truncated, garbage, bad_footer = cells[:4]
    data = encode_cell(_table(good))
    for cell in (good, truncated, garbage, bad_footer):
        store.write_cell(cell.id, _table(cell))
    path = Path(store.cell_path(truncated.id))
    path.write_bytes(path.read_bytes()[: len(data) // 2])
    Path(store.cell_path(garbage.id)).write_bytes(b"this is not parquet at all")
    raw = bytearray(Path(store.cell_path(bad_footer.id)).read_bytes())
    raw[-200:-8] = b"\xff" * 192  # the magic at both ends survives, the footer does not
    Path(store.cell_path(bad_footer.id)).write_bytes(bytes(raw))

    quick = store.scan(full=False)
    assert quick.done == {good.id, bad_footer.id}
    assert "truncated" in quick.invalid[truncated.id]
    assert "not a Parquet file" in quick.invalid[garbage.id]
    full = store.scan(full=True)
    assert full.done == {good.id} and "footer" in full.invalid[bad_footer.id]


def test_a_cell_file_holding_another_cell_is_invalid_for_every_check(tmp_path: Path, cells):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    store.write_cell(cells[1].id, _table(cells[0]))
    size = Path(store.cell_path(cells[1].id)).stat().st_size
    for reason in (store.quick_check(cells[1].id, size), store.full_check(cells[1].id), store.verify_cell(cells[1].id)):
        assert reason is not None and f"holds cell {cells[0].id!r}, not {cells[1].id!r}" in reason


def test_quarantine_moves_the_file_aside_and_keeps_it(tmp_path: Path, cells):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    Path(store.cell_path(cells[0].id)).write_bytes(b"junk")
    dest = store.quarantine(cells[0].id, "not a Parquet file")
    assert not Path(store.cell_path(cells[0].id)).exists()
    assert Path(dest).read_bytes() == b"junk" and "/tiny.gradsweep/quarantine/" in dest
    assert dest.endswith(".parquet.bad")  # no *.parquet glob picks it up
    assert store.events()[-1]["event"] == "quarantined"


def test_failures_accumulate_attempts_and_clear_when_the_cell_succeeds(tmp_path: Path, cells):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    record = {"error": "RuntimeError: boom", "traceback": "Traceback ...", "attempts": 1, "host": "h"}
    store.record_failure(cells[0].id, record)
    store.record_failure(cells[0].id, record)
    assert store.failures()[cells[0].id]["attempts"] == 2
    assert store.scan(full=False).failed == {cells[0].id}
    store.write_cell(cells[0].id, _table(cells[0]))
    assert store.failures() == {}


def test_the_second_driver_is_refused_with_the_holder_named(tmp_path: Path):
    first, second = SweepStore(tmp_path / "tiny"), SweepStore(tmp_path / "tiny")
    first.create()
    assert first.acquire_lock() is None
    with pytest.raises(LockHeld, match=rf"pid {os.getpid()} on host .* started"):
        second.acquire_lock()
    first.release_lock()
    assert second.acquire_lock() is None
    second.release_lock()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path: Path):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"pid": dead.pid, "host": os.uname().nodename, "started": "earlier", "token": "x"}
    Path(store.lock_path).write_text(json.dumps(holder))
    message = store.acquire_lock()
    assert message is not None and f"pid {dead.pid}" in message and "no longer running" in message
    assert store.lock_holder()["pid"] == os.getpid()
    store.release_lock()


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path: Path):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    Path(store.lock_path).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t"}))
    with pytest.raises(LockHeld, match="host elsewhere"):
        store.acquire_lock()


def test_a_results_path_that_cannot_be_a_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder .*afile"):
        SweepStore(tmp_path / "afile" / "tiny").create()


def test_a_full_disk_leaves_finished_files_untouched(tmp_path: Path, cells, monkeypatch):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    store.write_cell(cells[0].id, _table(cells[0]))
    before = Path(store.cell_path(cells[0].id)).read_bytes()

    monkeypatch.setattr(store, "fs", _FullDisk(store.fs))
    with pytest.raises(StoreError, match=rf"cannot write the cell file .*{cells[1].id}.parquet: no space left"):
        store.write_cell(cells[1].id, _table(cells[1]))
    assert Path(store.cell_path(cells[0].id)).read_bytes() == before
    assert sorted(os.listdir(tmp_path / "tiny")) == [f"{cells[0].id}.parquet"]
    assert os.listdir(tmp_path / "tiny.gradsweep" / "tmp") == []  # the half-written temporary file is gone


class _FullDisk:
    """A file system whose writes fail half way with ENOSPC (the rest delegates)."""

    def __init__(self, fs) -> None:
        self._fs = fs

    def open_output_stream(self, path: str, *args, **kwargs):
        stream = self._fs.open_output_stream(path, *args, **kwargs)

        class Failing:
            def __enter__(self):
                return self

            def write(self, data):
                stream.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

            def __exit__(self, *exc):
                stream.close()

        return Failing()

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_bytes_that_are_not_parquet_are_never_written(tmp_path: Path, cells):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    with pytest.raises(ValueError, match="not a Parquet file"):
        store.write_cell(cells[0].id, b"PAR1 but no end")
    assert store.cell_files() == {}


def test_a_file_uri_works_like_a_path(tmp_path: Path, cells):
    store = SweepStore(f"file://{tmp_path}/tiny")
    assert not store.local or store.path == f"{tmp_path}/tiny"
    store.create()
    store.write_cell(cells[0].id, _table(cells[0]))
    assert read_results(f"file://{tmp_path}/tiny").num_rows == 2
    assert pq.read_metadata(f"{tmp_path}/tiny/{cells[0].id}.parquet").num_rows == 2


def _stale(path: str, content: bytes) -> None:
    """Write a lock file as a driver that died long ago left it."""
    Path(path).write_bytes(content)
    os.utime(path, (time.time() - 3600, time.time() - 3600))


@pytest.mark.parametrize("content, says", [(b"", "is empty"), (b'{"pid": 12', "is unreadable")])
def test_an_empty_or_unreadable_lock_is_taken_over_with_a_message(tmp_path: Path, content: bytes, says: str):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    _stale(store.lock_path, content)
    assert store.lock_holder() == {"invalid": says.split()[-1], "alive": False}
    message = store.acquire_lock()
    assert message is not None and says in message and store.lock_path in message
    assert store.lock_holder()["pid"] == os.getpid()
    store.release_lock()
    assert not Path(store.lock_path).exists()


def test_lock_holder_says_whether_the_holder_is_alive(tmp_path: Path):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    assert store.lock_holder() is None
    store.acquire_lock()
    assert store.lock_holder()["alive"] is True
    store.release_lock()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(store.lock_path).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "t"}))
    assert store.lock_holder()["alive"] is False
    Path(store.lock_path).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t"}))
    assert store.lock_holder()["alive"] is None  # another host: cannot be checked


_TAKE_OVER = """
import os, sys, time
from gradsweep.store import LockHeld, SweepStore
store = SweepStore(sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # start together
    time.sleep(0.001)
try:
    store.acquire_lock()
    print("won", flush=True)
    time.sleep(3)  # hold it while the others try
    store.release_lock()
except LockHeld:
    print("refused", flush=True)
"""


def test_drivers_taking_over_a_stale_lock_at_once_yield_one_holder(tmp_path: Path):
    store = SweepStore(tmp_path / "tiny")
    store.create()
    _stale(store.lock_path, b"")
    go = tmp_path / "go"
    drivers = [
        subprocess.Popen([sys.executable, "-c", _TAKE_OVER, store.location, str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    assert [d.stdout.readline().strip() for d in drivers] == ["ready"] * 4  # all at the start line
    go.touch()
    outcomes = sorted(d.communicate(timeout=60)[0].strip() for d in drivers)
    assert outcomes == ["refused", "refused", "refused", "won"]
    assert not Path(store.lock_path).exists()
