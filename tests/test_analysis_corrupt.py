"""Corrupt and misplaced cell files, read by every analysis reader: skipped, listed, never counted.

Real files: a result written with Parquet page checksums and a byte flipped inside a data page
(footer intact), a file cut short, and a valid file copied under another cell's name (its rows
would otherwise be counted twice).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis_synthetic import TOY, probe_rows, write_cell
from gradsweep.analysis.cli import add_arguments, build_report, run
from gradsweep.analysis.core import load_results


def _cell(folder: Path, eps: float, seed: int) -> str:
    params = {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": eps, "seed": seed}
    values = {(b, lr): 0.1 * (1 + b) * lr for b in range(4) for lr in (0.1, 0.3, 0.5, 0.7)}
    return write_cell(folder, params, probe_rows(values))


def _with_checksums(path: Path) -> None:
    """Rewrite a cell file as the store does: page checksums on."""
    table = pq.read_table(path)
    pq.write_table(table, path, write_page_checksum=True, compression="none")


def _flip_in_first_data_page(path: Path) -> None:
    meta = pq.read_metadata(path)
    column = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index("loss_decrease"))
    start = column.data_page_offset
    data = bytearray(path.read_bytes())
    at = start + column.total_compressed_size - 4  # inside the page's values, not its header
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "sweep"
    ids = {name: _cell(folder, eps, seed) for name, eps, seed in
           [("good", 0.1, 0), ("good2", 0.1, 1), ("flipped", 0.01, 0), ("truncated", 0.01, 1), ("source", 0.001, 0)]}
    flipped = folder / f"{ids['flipped']}.parquet"
    _with_checksums(flipped)
    _flip_in_first_data_page(flipped)
    truncated = folder / f"{ids['truncated']}.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    ids["copy"] = "00000000deadbeef"
    shutil.copy(folder / f"{ids['source']}.parquet", folder / f"{ids['copy']}.parquet")
    return folder, ids


def test_a_flipped_byte_in_a_checksummed_page_is_caught_by_the_reader(folder) -> None:
    path, ids = folder
    with pytest.raises(OSError, match="(?i)checksum|crc"):
        pq.ParquetFile(path / f"{ids['flipped']}.parquet", page_checksum_verification=True).read()


def test_every_bad_file_is_skipped_listed_and_not_counted(folder) -> None:
    path, ids = folder
    data = load_results(path)
    assert set(data.cells.index) == {ids["good"], ids["good2"], ids["source"]}
    listed = {u.split(":")[0][: -len(".parquet")]: u for u in data.unreadable}
    assert set(listed) == {ids["flipped"], ids["truncated"], ids["copy"]}
    assert "checksum" in listed[ids["flipped"]].lower() or "crc" in listed[ids["flipped"]].lower()
    assert f"not {ids['copy']!r}" in listed[ids["copy"]] and ids["source"] in listed[ids["copy"]]
    # the copied cell's rows are counted once: one cell, 16 probe rows
    source = data.rows[data.rows["cell_id"] == ids["source"]]
    assert len(source) == 16 and len(data.rows) == 3 * 16


def test_the_report_lists_them_on_the_page_and_on_stderr(folder, capsys: pytest.CaptureFixture) -> None:
    path, ids = folder
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(path)])) == 0
    err = capsys.readouterr().err
    assert "skipped 3 unreadable cell files" in err
    for name in ("flipped", "truncated", "copy"):
        assert ids[name] in err
    page = build_report(path).index.read_text()
    assert "3 cell files could not be read" in page and ids["copy"] in page and "Partial results" in page


def test_a_file_whose_metadata_names_another_cell_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    cell = _cell(folder, 0.1, 0)
    table = pq.read_table(folder / f"{cell}.parquet")
    table = table.replace_schema_metadata({b"gradsweep.cell_id": b"0123456789abcdef"})
    pq.write_table(table, folder / f"{cell}.parquet")
    _cell(folder, 0.1, 1)
    data = load_results(folder)
    assert len(data.cells) == 1
    assert "holds cell '0123456789abcdef' (file metadata)" in data.unreadable[0]
