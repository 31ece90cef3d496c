"""``gradsweep report`` and ``load_results`` on a real S3 API, read in place (issue 12 §6).

A real sweep is run into ``s3://<bucket>/results`` on moto's standalone server (started on
127.0.0.1 by the fixtures of ``test_store_s3``), then reported by a real ``gradsweep report``
subprocess and read by :func:`gradsweep.analysis.core.load_results`: nothing is copied from the
bucket first, the report lands in the working directory, and damaged objects are listed, not fatal.
"""

from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PYTHON
from test_store_s3 import _cell_keys, _keys, _local, boto3, s3, s3_server  # noqa: F401 - fixtures and helpers

from gradsweep.analysis.cli import add_arguments, build_report, report_location, run as report_run
from gradsweep.analysis.core import ResultsError, load_results
from gradsweep.runner import run
from gradsweep.spec import load_spec

pytestmark = pytest.mark.slow


def _aws(s3: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in s3.items() if k.startswith("AWS_")}


def test_the_report_of_an_s3_folder_is_read_in_place_and_written_in_the_working_directory(
    s3: dict[str, str], tiny_spec: Path, cli_env: dict, tmp_path: Path
):
    sweep = load_spec(tiny_spec)
    bad = sweep.cells[3].id
    assert run(sweep, s3["results"], _local(fail_cells=frozenset({bad})), stream=io.StringIO()).done == 7
    folder = f"{s3['results']}/tiny"
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([PYTHON, "-m", "gradsweep", "report", folder], env={**cli_env, **_aws(s3)},
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = work / "tiny.report"
    assert f"report: {out / 'index.html'} (" in done.stdout and ", 7 cells)" in done.stdout
    assert "written locally, in the working directory" in done.stdout
    assert "partial: 1 cells without results, 1 failed" in done.stdout  # its failure record read from S3
    assert sorted(p.name for p in work.iterdir()) == ["tiny.report"]  # nothing of the folder copied here
    summary = (out / "summary.csv").read_text()
    assert "toy_mlp" in summary and (out / "index.html").is_file()
    assert bad in (out / "index.html").read_text()
    assert not [k for k in _keys(s3["bucket"], "") if ".report" in k]  # the bucket is only read


def test_load_results_reads_the_rows_of_an_s3_folder_as_those_of_a_local_one(
    s3: dict[str, str], tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    sweep = load_spec(tiny_spec)
    run(sweep, s3["results"], _local(), stream=io.StringIO())
    run(sweep, tmp_path / "results", _local(), stream=io.StringIO())
    folder = f"{s3['results']}/tiny"

    data = load_results(folder)
    local = load_results(tmp_path / "results" / "tiny")
    assert data.folder == folder and data.name == "tiny"
    assert sorted(data.cells.index) == sorted(c.id for c in sweep.cells)
    assert len(data.rows) == 8 * 3 and data.rows["cell_id"].nunique() == 8
    assert data.expected_cell_ids == {c.id for c in sweep.cells} and data.missing_cell_ids == []
    assert data.spec_text == tiny_spec.read_text() and not data.failures and not data.unreadable
    cols = ["seed", *local.param_columns, "estimator_label", "pretrain_label"]
    assert data.param_columns == local.param_columns
    assert data.cells.sort_index()[cols].equals(local.cells.sort_index()[cols])

    both = load_results([folder, tmp_path / "results" / "tiny"])  # same sweep name: told apart by location
    assert len(both.cells) == 16 and len(set(both.sweeps)) == 2 and both.sweeps[0].startswith("s3://")

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert report_run(parser.parse_args([folder, "--out", str(tmp_path / "elsewhere")])) == 0
    assert (tmp_path / "elsewhere" / "index.html").is_file()
    assert "in the working directory" not in capsys.readouterr().out
    assert report_location(folder) == Path.cwd() / "tiny.report"
    assert report_location(f"{folder}?endpoint_override=h:9000&scheme=http") == Path.cwd() / "tiny.report"

    with pytest.raises(ResultsError, match=r"cannot read the results folder 's3://.*/nope'.*no such folder"):
        load_results(f"{s3['results']}/nope")


def test_damaged_objects_on_s3_are_listed_as_unreadable_and_the_rest_reported(
    s3: dict[str, str], tiny_spec: Path, cli_env: dict, tmp_path: Path
):
    sweep = load_spec(tiny_spec)
    run(sweep, s3["results"], _local(), stream=io.StringIO())
    client, bucket = boto3.client("s3"), s3["bucket"]
    a, b, c = sorted(_cell_keys(s3))[:3]
    raw = bytearray(client.get_object(Bucket=bucket, Key=a)["Body"].read())
    meta = pq.read_metadata(pa.BufferReader(bytes(raw)))
    chunk = meta.row_group(0).column(meta.schema.names.index("loss_decrease"))
    raw[chunk.data_page_offset + chunk.total_compressed_size - 3] ^= 0x5A  # a flipped byte in a data page
    client.put_object(Bucket=bucket, Key=a, Body=bytes(raw))
    client.copy_object(Bucket=bucket, Key=b, CopySource={"Bucket": bucket, "Key": c})  # c's rows under b's name
    client.put_object(Bucket=bucket, Key=c.replace(".parquet", "x.parquet"), Body=b"PAR1 truncated")
    name = lambda key: key.rsplit("/", 1)[-1]  # noqa: E731

    folder = f"{s3['results']}/tiny"
    data = load_results(folder)
    assert sorted(u.split(":", 1)[0] for u in data.unreadable) == sorted(map(name, (a, b, c.replace(".parquet", "x.parquet"))))
    assert len(data.cells) == 6 and len(data.missing_cell_ids) == 2
    assert {name(a)[:-8], name(b)[:-8]} == set(data.missing_cell_ids)
    assert [u for u in data.unreadable if u.startswith(name(b))] == [
        f"{name(b)}: holds cell {name(c)[:-8]!r} (file metadata), not {name(b)[:-8]!r}"
    ]

    done = subprocess.run([PYTHON, "-m", "gradsweep", "report", folder, "--out", str(tmp_path / "rep")],
                          env={**cli_env, **_aws(s3)}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ", 6 cells)" in done.stdout and "skipped 3 unreadable cell files" in done.stderr
    assert "partial: 2 cells without results, 0 failed" in done.stdout
    report = build_report(folder, tmp_path / "rep2")
    assert len(report.data.cells) == 6 and len(report.data.unreadable) == 3
