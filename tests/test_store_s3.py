"""Results on a real S3 API: moto's standalone server, started by these tests on 127.0.0.1.

Everything goes through ``--results s3://bucket/results`` and the usual ``AWS_ENDPOINT_URL`` /
credentials variables, as on a cluster without a shared file system: run, status, resume and
reading, a driver SIGKILLed mid-sweep, the lock raced by several processes, corrupt objects, and
a reader polling while large objects are uploaded in parts.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PYTHON
from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.runner import plan, resume, run, status
from gradsweep.spec import load_spec
from gradsweep.store import LockHeld, SweepStore, cell_table, encode_cell, load, read_results, results_files

pytest.importorskip("moto", reason="the S3 tests need moto[server] (pip install -e '.[test]')")
boto3 = pytest.importorskip("boto3")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 for this module; the ``AWS_*`` variables that reach it."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the moto server did not start (exit code {proc.poll()})")
                time.sleep(0.1)
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def s3(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket; the ``AWS_*`` variables set in this process; ``results`` is its URI."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = f"gs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {**s3_server, "bucket": bucket, "results": f"s3://{bucket}/results"}


def _keys(bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3")
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def _cell_keys(s3: dict[str, str]) -> list[str]:
    return [k for k in _keys(s3["bucket"], "results/tiny/") if k.endswith(".parquet")]


def _local(**hooks) -> LocalExecutor:
    return LocalExecutor(hooks=FaultHooks(**hooks))


def test_run_status_resume_and_read_on_s3(s3: dict[str, str], tiny_spec: Path):
    sweep = load_spec(tiny_spec)
    bad = sweep.cells[2].id
    first = run(sweep, s3["results"], _local(fail_cells=frozenset({bad})), stream=io.StringIO())
    assert (first.done, first.failed) == (7, [bad])
    folder = f"{s3['results']}/tiny"
    st = status(folder)
    assert len(st.plan.done) == 7 and st.plan.failed == {bad} and "injected failure" in st.format()
    assert st.failures_folder == f"{folder}.gradsweep/failures"
    keys = _keys(s3["bucket"], "results/")
    assert "results/tiny.gradsweep/spec.yaml" in keys and f"results/tiny.gradsweep/failures/{bad}.json" in keys
    assert not [k for k in keys if k.startswith("results/tiny/") and not k.endswith(".parquet") and not k.endswith("/")]
    assert "results/tiny.gradsweep/lock" not in keys  # released

    again = resume(folder, _local(), stream=io.StringIO())
    assert again.ran == 1 and again.exit_code == 0
    assert len(plan(sweep, s3["results"], full=True).done) == 8
    table = read_results(folder)
    assert table.num_rows == 8 * 3 and table.column("cell_id").unique().to_pylist().__len__() == 8
    assert sorted(results_files(s3["results"]).paths.values()) == sorted(c.id for c in sweep.cells)
    assert load(folder)["estimator"].notna().all()
    events = [e["event"] for e in SweepStore(folder).events()]
    assert events.count("run_started") == 2 and events.count("run_ended") == 2


def test_the_cli_runs_and_reports_status_on_s3(s3: dict[str, str], tiny_spec: Path, cli_env: dict):
    env = {**cli_env, **{k: v for k, v in s3.items() if k.startswith("AWS_")}}
    done = subprocess.run([PYTHON, "-m", "gradsweep", "run", str(tiny_spec), "--results", s3["results"], "--local"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    st = subprocess.run([PYTHON, "-m", "gradsweep", "status", f"{s3['results']}/tiny"],
                        env=env, capture_output=True, text=True, timeout=120)
    assert st.returncode == 0 and "done 8, failed 0, pending 0" in st.stdout
    assert "Traceback" not in done.stderr + st.stderr


def test_a_driver_killed_mid_sweep_on_s3_resumes_to_every_cell_exactly_once(
    s3: dict[str, str], tiny_spec: Path, cli_env: dict
):
    env = {**cli_env, **{k: v for k, v in s3.items() if k.startswith("AWS_")}, "GRADSWEEP_CELL_DELAY": "0.4"}
    driver = subprocess.Popen(
        [PYTHON, "-m", "gradsweep", "run", str(tiny_spec), "--results", s3["results"], "--local"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_cell_keys(s3)) < 2:
            assert time.monotonic() < deadline and driver.poll() is None, "the driver never wrote two cells"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    before = _cell_keys(s3)
    assert 2 <= len(before) < 8 and "results/tiny.gradsweep/lock" in _keys(s3["bucket"], "results/")

    out = io.StringIO()
    result = resume(f"{s3['results']}/tiny", _local(), stream=out)
    assert "taking over the lock" in out.getvalue()
    assert result.exit_code == 0 and result.ran == 8 - len(before) and not result.quarantined
    table = read_results(f"{s3['results']}/tiny").to_pandas()
    assert table["cell_id"].nunique() == 8 and len(table) == 8 * 3  # every cell exactly once


_RACE = """
import sys
from gradsweep.store import LockHeld, SweepStore
store = SweepStore(sys.argv[1])
sys.stdin.readline()  # start together
try:
    store.acquire_lock()
    print("won")
except LockHeld:
    print("held")
"""


def test_the_lock_on_s3_is_won_by_exactly_one_of_several_drivers(s3: dict[str, str], cli_env: dict):
    env = {**cli_env, **{k: v for k, v in s3.items() if k.startswith("AWS_")}}
    folder = f"{s3['results']}/tiny"
    SweepStore(folder).create()
    drivers = [
        subprocess.Popen([PYTHON, "-c", _RACE, folder], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(3)  # let every interpreter import and block on stdin
    for d in drivers:
        d.stdin.write("go\n")
        d.stdin.flush()
    answers = sorted(d.communicate(timeout=120)[0].strip() for d in drivers)
    assert answers == ["held", "held", "held", "won"]


def test_a_lock_on_s3_held_by_another_host_is_never_taken_over(s3: dict[str, str]):
    folder = f"{s3['results']}/tiny"
    store = SweepStore(folder)
    store.create()
    boto3.client("s3").put_object(
        Bucket=s3["bucket"], Key="results/tiny.gradsweep/lock", Body=b'{"pid": 1, "host": "elsewhere", "started": "t"}'
    )
    with pytest.raises(LockHeld, match="host elsewhere"):
        store.acquire_lock()


def test_corrupt_and_misnamed_objects_on_s3_are_quarantined_and_rerun(s3: dict[str, str], tiny_spec: Path):
    sweep = load_spec(tiny_spec)
    run(sweep, s3["results"], _local(), stream=io.StringIO())
    client = boto3.client("s3")
    a, b, c = sorted(_cell_keys(s3))[:3]
    raw = bytearray(client.get_object(Bucket=s3["bucket"], Key=a)["Body"].read())
    meta = pq.read_metadata(pa.BufferReader(bytes(raw)))
    chunk = meta.row_group(0).column(meta.schema.names.index("loss_decrease"))
    raw[chunk.data_page_offset + chunk.total_compressed_size - 3] ^= 0x5A  # a flipped byte in a data page
    client.put_object(Bucket=s3["bucket"], Key=a, Body=bytes(raw))
    client.copy_object(Bucket=s3["bucket"], Key=b, CopySource={"Bucket": s3["bucket"], "Key": c})  # a misnamed copy
    client.put_object(Bucket=s3["bucket"], Key=c.replace(".parquet", "x.parquet"), Body=b"PAR1 truncated")

    result = run(sweep, s3["results"], _local(), stream=io.StringIO())
    assert result.ran == 2 and len(result.quarantined) == 3
    quarantined = [k for k in _keys(s3["bucket"], "results/tiny.gradsweep/quarantine/") if not k.endswith("/")]
    assert len(quarantined) == 3 and all(k.endswith(".parquet.bad") for k in quarantined)
    table = read_results(f"{s3['results']}/tiny")
    assert sorted(table.column("cell_id").unique().to_pylist()) == sorted(c.id for c in sweep.cells)


def test_a_reader_never_sees_half_an_object_while_large_cells_upload_in_parts(s3: dict[str, str], tiny_spec: Path):
    import threading

    import pandas as pd

    cell = load_spec(tiny_spec).cells[0]
    n = 900_000  # ~14 MB per file: pyarrow uploads it in several parts (of 10 MB at most)
    rows = pd.DataFrame({"record": "probe", "batch": 0, "lr": [i / n for i in range(n)],
                         "loss_decrease": [(i * 7919 % n) / n for i in range(n)]})
    folder = f"{s3['results']}/tiny"
    store = SweepStore(folder)
    store.create()
    ids = [f"{i:016x}" for i in range(3)]
    blobs = [encode_cell(cell_table("tiny", cid, cell.config, rows, {})) for cid in ids]
    assert min(len(b) for b in blobs) > 12 * 2**20
    seen: dict[str, str | None] = {}
    stop = threading.Event()

    def watch() -> None:
        reader = SweepStore(folder)
        while not stop.is_set():
            for cid, size in reader.cell_files().items():
                seen[cid] = reader.quick_check(cid, size) or seen.get(cid)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for cid, blob in zip(ids, blobs):
            store.write_cell(cid, blob)
    finally:
        stop.set()
        watcher.join()
    assert set(seen) <= set(ids) and all(reason is None for reason in seen.values()), seen
    assert all(store.verify_cell(cid) is None for cid in ids)


def test_an_endpoint_given_in_the_uri_works_without_aws_endpoint_url(
    s3: dict[str, str], tiny_spec: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = s3["AWS_ENDPOINT_URL"].removeprefix("http://")
    results = f"s3://{s3['bucket']}/uri?endpoint_override={host}&scheme=http"
    sweep = load_spec(tiny_spec)
    assert run(sweep, results, _local(), stream=io.StringIO()).done == 8  # the lock too goes to this endpoint
    folder = f"s3://{s3['bucket']}/uri/tiny?endpoint_override={host}&scheme=http"
    assert len(status(folder).plan.done) == 8
    assert resume(folder, _local(), stream=io.StringIO()).ran == 0
    assert read_results(folder).num_rows == 8 * 3


def test_an_upload_that_fails_half_way_leaves_no_object(s3: dict[str, str], tiny_spec: Path, monkeypatch):
    from gradsweep.store import StoreError

    cell = load_spec(tiny_spec).cells[0]
    store = SweepStore(f"{s3['results']}/tiny")
    store.create()
    real = store.fs

    class HalfWay:
        """pyarrow's S3 file system, whose uploads fail after sending half their bytes."""

        def open_output_stream(self, path: str, *args, **kwargs):
            stream = real.open_output_stream(path, *args, **kwargs)

            class Failing:
                def write(self, data):
                    stream.write(data[: len(data) // 2])
                    raise OSError("connection reset by peer")

                def close(self):
                    stream.close()  # what pyarrow does when a failed stream is closed: it completes the upload

            return Failing()

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(store, "fs", HalfWay())
    data = encode_cell(cell_table("tiny", cell.id, cell.config, _rows_of_one(), {}))
    with pytest.raises(StoreError, match=rf"cannot write the cell file .*{cell.id}.parquet: connection reset"):
        store.write_cell(cell.id, data)
    assert _cell_keys(s3) == []  # the half object that closing published is gone


def _rows_of_one():
    import pandas as pd

    return pd.DataFrame({"record": ["probe"], "batch": [0], "lr": [0.1], "loss_decrease": [0.5]})


def test_a_folder_of_the_previous_layout_on_s3_is_read_then_moved(s3: dict[str, str], tiny_spec: Path):
    sweep = load_spec(tiny_spec)
    run(sweep, s3["results"], _local(fail_cells=frozenset({sweep.cells[0].id})), stream=io.StringIO())
    client, bucket = boto3.client("s3"), s3["bucket"]
    for key in _keys(bucket, "results/tiny.gradsweep/"):  # as the previous version laid it out
        if not key.endswith("/"):
            dest = key.replace("results/tiny.gradsweep/", "results/tiny/_gradsweep/")
            client.copy_object(Bucket=bucket, Key=dest, CopySource={"Bucket": bucket, "Key": key})
        client.delete_object(Bucket=bucket, Key=key)
    folder = f"{s3['results']}/tiny"
    st = status(folder)
    assert len(st.plan.done) == 7 and st.plan.failed == {sweep.cells[0].id}
    assert st.failures_folder == f"{folder}/_gradsweep/failures"

    again = resume(folder, _local(), stream=io.StringIO())
    assert again.ran == 1 and again.exit_code == 0
    assert not _keys(bucket, "results/tiny/_gradsweep/")
    assert "results/tiny.gradsweep/spec.yaml" in _keys(bucket, "results/tiny.gradsweep/")
    assert read_results(folder).num_rows == 8 * 3
