"""Every corrupt or misnamed cell file is caught: real files with flipped bytes, real copies under a wrong name.

The sweeps run real toy cells in-process (``LocalExecutor``); the damage is done to the real
Parquet files on disk, as a failing disk or a careless ``cp`` would.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import PYTHON
from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.runner import plan, resume, run, status
from gradsweep.spec import load_spec
from gradsweep.store import StoreError, SweepStore, read_results


def _run(spec: Path, results: Path):
    return run(load_spec(spec), results, LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())


def _flip_a_byte_in_a_data_page(path: Path, column: str = "loss_decrease") -> None:
    """XOR one byte in the middle of ``column``'s data page: the footer and both magics stay intact."""
    meta = pq.read_metadata(path)
    names = meta.schema.names
    chunk = meta.row_group(0).column(names.index(column))
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    raw = bytearray(path.read_bytes())
    at = start + size - 3  # the end of the page's data, past its header
    raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))
    assert pq.read_metadata(path).num_rows == meta.num_rows  # the footer still parses


def test_cell_files_are_written_with_page_checksums(tiny_spec: Path, tmp_path: Path):
    _run(tiny_spec, tmp_path)
    path = next((tmp_path / "tiny").glob("*.parquet"))
    flipped = tmp_path / "flipped.parquet"
    shutil.copy(path, flipped)
    _flip_a_byte_in_a_data_page(flipped)
    pq.read_table(path, page_checksum_verification=True)  # the intact file verifies
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.read_table(flipped, page_checksum_verification=True)


def test_a_flipped_byte_in_a_data_page_is_caught_by_resume_and_the_cell_rerun(tiny_spec: Path, tmp_path: Path):
    _run(tiny_spec, tmp_path)
    folder = tmp_path / "tiny"
    victim = sorted(folder.glob("*.parquet"))[3]
    original = pd.read_parquet(victim)
    _flip_a_byte_in_a_data_page(victim)

    quick = status(folder)  # fast: it does not read data pages, and says so
    assert len(quick.plan.done) == 8 and "data pages not verified" in quick.format()
    verified = status(folder, verify=True)
    assert set(verified.plan.invalid) == {victim.stem} and "CRC" in verified.plan.invalid[victim.stem]
    assert "verified: every data page" in verified.format()

    out = io.StringIO()
    result = resume(folder, LocalExecutor(hooks=FaultHooks()), stream=out)
    assert result.ran == 1 and set(result.quarantined) == {victim.stem}
    assert f"cell {victim.stem}: damaged data" in out.getvalue()
    kept = Path(result.quarantined[victim.stem])
    assert kept.parent == tmp_path / "tiny.gradsweep" / "quarantine" and kept.name.endswith(".parquet.bad")
    table = pd.read_parquet(folder)  # the whole folder reads again, every cell once
    assert table["cell_id"].nunique() == 8 and len(table) == 24
    science = ["cell_id", "record", "batch", "lr", "loss_before", "loss_after", "loss_decrease"]
    pd.testing.assert_frame_equal(pd.read_parquet(victim)[science], original[science])  # recomputed: the same numbers


def test_a_flipped_byte_is_caught_by_run_too(tiny_spec: Path, tmp_path: Path):
    _run(tiny_spec, tmp_path)
    victim = sorted((tmp_path / "tiny").glob("*.parquet"))[0]
    _flip_a_byte_in_a_data_page(victim, column="lr")
    result = _run(tiny_spec, tmp_path)
    assert result.ran == 1 and set(result.quarantined) == {victim.stem}


def test_a_file_copied_under_another_cells_name_is_caught_by_every_store_reader(tiny_spec: Path, tmp_path: Path):
    _run(tiny_spec, tmp_path)
    folder = tmp_path / "tiny"
    first, second = sorted(folder.glob("*.parquet"))[:2]
    shutil.copyfile(first, second)  # `cp a.parquet b.parquet`: b's name, a's rows

    p = plan(load_spec(tiny_spec), tmp_path)
    assert second.stem not in p.done and f"holds cell {first.stem!r}" in p.invalid[second.stem]
    st = status(folder)
    assert len(st.plan.done) == 7 and f"{second.stem}  holds cell {first.stem!r}" in st.format()
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable or misnamed .*{second.stem}"):
        table = read_results(folder)
    assert table.num_rows == 7 * 3 and table.column("cell_id").unique().to_pylist().count(first.stem) == 1
    with pytest.raises(StoreError, match="holds cell"):
        read_results(folder, errors="raise")

    result = resume(folder, LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert result.ran == 1 and set(result.quarantined) == {second.stem}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = read_results(folder)
    assert sorted(table.column("cell_id").unique().to_pylist()) == sorted(p.stem for p in folder.glob("*.parquet"))
    assert table.num_rows == 8 * 3


def test_a_foreign_parquet_file_under_a_cell_name_is_not_done(tiny_spec: Path, tmp_path: Path):
    import pyarrow as pa

    _run(tiny_spec, tmp_path)
    victim = sorted((tmp_path / "tiny").glob("*.parquet"))[0]
    pq.write_table(pa.table({"x": [1, 2]}), victim)
    store = SweepStore(tmp_path / "tiny")
    assert "not a gradsweep cell file" in store.quick_check(victim.stem, victim.stat().st_size)
    assert "not a gradsweep cell file" in store.verify_cell(victim.stem)


def test_status_on_the_command_line_says_what_it_did_not_check(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    _run(tiny_spec, tmp_path)
    victim = sorted((tmp_path / "tiny").glob("*.parquet"))[0]
    _flip_a_byte_in_a_data_page(victim)
    quick = subprocess.run([PYTHON, "-m", "gradsweep", "status", str(tmp_path / "tiny")],
                           env=cli_env, capture_output=True, text=True, timeout=120)
    assert quick.returncode == 0 and "data pages not verified" in quick.stdout
    full = subprocess.run([PYTHON, "-m", "gradsweep", "status", str(tmp_path / "tiny"), "--verify"],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert full.returncode == 1 and f"{victim.stem}  damaged data" in full.stdout and "CRC" in full.stdout
