"""Faults on real Ray: a driver SIGKILLed mid-sweep, a cell that raises, a worker killed mid-cell."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PYTHON
from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.runner import resume, run, status
from gradsweep.spec import load_spec
from gradsweep.store import SweepStore
from test_ray_sweep import comparable

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_driver_killed_mid_sweep_resumes_to_every_cell_exactly_once(
    ray_local, tiny_spec: Path, tmp_path: Path, cli_env: dict
):
    from gradsweep.executors.ray_executor import RayExecutor

    import ray

    folder = tmp_path / "killed" / "tiny"
    address = ray.get_runtime_context().gcs_address  # the driver joins the session's Ray
    driver = subprocess.Popen(
        [PYTHON, "-m", "gradsweep", "run", str(tiny_spec), "--results", str(tmp_path / "killed"), "--address", address],
        env={**cli_env, "GRADSWEEP_CELL_DELAY": "0.5"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: len(list(folder.glob("*.parquet"))) >= 2, 120, "the first cells of the driver")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    before = {p.stem for p in folder.glob("*.parquet")}
    assert 2 <= len(before) < 8, "the driver must be killed mid-sweep"
    assert (tmp_path / "killed" / "tiny.gradsweep" / "lock").exists()  # a dead driver's lock stays behind

    out = io.StringIO()
    result = resume(folder, RayExecutor(hooks=FaultHooks()), stream=out)
    assert "taking over the lock" in out.getvalue()
    assert result.exit_code == 0 and result.ran == 8 - len(before)

    interrupted = pd.read_parquet(folder)
    assert interrupted["cell_id"].nunique() == 8 and len(interrupted) == 8 * 3  # every cell exactly once
    run(load_spec(tiny_spec), tmp_path / "clean", LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())
    clean = pd.read_parquet(tmp_path / "clean" / "tiny")
    pd.testing.assert_frame_equal(comparable(interrupted), comparable(clean))


def test_a_failing_cell_on_ray_is_recorded_and_resume_runs_only_it(ray_local, tiny_spec: Path, tmp_path: Path):
    from gradsweep.executors.ray_executor import RayExecutor

    sweep = load_spec(tiny_spec)
    bad = sweep.cells[5].id
    result = run(sweep, tmp_path, RayExecutor(chunk_size=4, hooks=FaultHooks(fail_cells=frozenset({bad}))), stream=io.StringIO())
    assert result.failed == [bad] and result.done == 7 and result.exit_code == 1  # its chunk-mates finished
    st = status(tmp_path / "tiny")
    assert st.plan.failed == {bad} and "injected failure" in st.format()
    failure = SweepStore(tmp_path / "tiny").failures()[bad]
    assert "RuntimeError" in failure["traceback"] and failure["host"]

    again = resume(tmp_path / "tiny", RayExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert again.ran == 1 and again.exit_code == 0 and again.failed == []


def test_a_worker_killed_mid_cell_is_retried_and_the_sweep_completes(ray_local, tiny_spec: Path, tmp_path: Path):
    from gradsweep.executors.ray_executor import RayExecutor

    sweep = load_spec(tiny_spec)
    pids = tmp_path / "pids"
    hooks = FaultHooks(delay=1.0, pid_dir=str(pids))
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=run(sweep, tmp_path, RayExecutor(chunk_size=1, max_retries=2, hooks=hooks), stream=io.StringIO()))
    )
    runner.start()
    victim_file = pids / f"{sweep.cells[0].id}.pid"
    _wait_for(victim_file.exists, 120, "the first cell to start")
    victim = int(victim_file.read_text())
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=180)
    assert not runner.is_alive()
    result = outcome["result"]
    assert (result.done, result.failed, result.exit_code) == (8, [], 0)
    assert int(victim_file.read_text()) != victim  # the cell ran again, in another worker
    assert len(list((tmp_path / "tiny").glob("*.parquet"))) == 8
