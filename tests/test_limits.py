"""Runs always end: per-cell time limits, retries, refusal of cells no node can hold, out-of-memory kills.

Real Ray (the session's embedded one, or one started by a driver subprocess), real worker
subprocesses, real Parquet. Nothing here asserts a duration: a hung cell sleeps for ten minutes and
the test checks that it was stopped (its process is gone) and recorded, not how fast.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import pytest

from conftest import PYTHON
from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.executors.base import Unsatisfiable
from gradsweep.runner import resume, run
from gradsweep.spec import load_spec
from gradsweep.store import SweepStore

# two real toy cells (one per seed), fast when not delayed
TWO_CELLS = """\
name: two
problem: {{kind: toy_mlp, dim: 4, depth: 3, data: {{batch_size: 64, batches: 1}}}}
estimator: {{kind: ste, variant: clipped}}
measure: {{lrs: [0.1]}}
seeds: [0, 1]
resources: {resources}
device: {device}
"""

HANG = 600.0  # seconds a "hung" cell sleeps: far longer than any test may wait


def two_cells(tmp_path: Path, resources: str = "{cpu: 1, gpu: 0}", device: str = "cpu") -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(TWO_CELLS.format(resources=resources, device=device))
    return path


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (killed, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pids: list[int], limit: float = 60.0) -> list[int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        alive = [p for p in pids if not _gone(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("*.pid")]


def _failures(results: Path, name: str) -> dict[str, dict[str, Any]]:
    return SweepStore.for_sweep(results, name).failures()


# -- time limits ---------------------------------------------------------------------------------


def test_a_hung_cell_on_ray_is_killed_recorded_as_timed_out_and_resume_reruns_it(ray_local, tmp_path: Path):
    from gradsweep.executors.ray_executor import RayExecutor

    spec = two_cells(tmp_path, "{cpu: 1, gpu: 0, timeout: 3}")
    pid_dir = tmp_path / "pids"
    hooks = FaultHooks(delay=HANG, pid_dir=str(pid_dir))
    result = run(load_spec(spec), tmp_path / "r", RayExecutor(hooks=hooks), stream=io.StringIO())

    assert (result.done, len(result.failed), result.exit_code) == (0, 2, 1)
    failures = _failures(tmp_path / "r", "two")
    assert {f["error"] for f in failures.values()} == {"timed out after 3 s"}
    pids = _pids(pid_dir)
    assert len(pids) == 2 and _wait_gone(pids) == [], "the hung workers must be killed, not left sleeping"

    again = resume(tmp_path / "r" / "two", RayExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert (again.done, again.failed) == (2, [])


def test_a_hung_cell_run_locally_runs_in_a_subprocess_that_is_killed(tmp_path: Path):
    spec = two_cells(tmp_path)
    pid_dir = tmp_path / "pids"
    executor = LocalExecutor(hooks=FaultHooks(delay=HANG, pid_dir=str(pid_dir)), timeout=2.0)
    result = run(load_spec(spec), tmp_path / "r", executor, stream=io.StringIO())

    assert (result.done, len(result.failed)) == (0, 2)
    assert {f["error"] for f in _failures(tmp_path / "r", "two").values()} == {"timed out after 2 s"}
    pids = _pids(pid_dir)
    assert len(pids) == 2 and os.getpid() not in pids  # never this process
    assert _wait_gone(pids) == []

    again = resume(tmp_path / "r" / "two", LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert (again.done, again.failed) == (2, [])


def test_a_spec_time_limit_wins_over_the_executor_default_and_fast_cells_pass(tmp_path: Path):
    spec = two_cells(tmp_path, "{cpu: 1, gpu: 0, timeout: 300}")
    executor = LocalExecutor(hooks=FaultHooks(), timeout=0.001)  # the spec's 300 s applies
    result = run(load_spec(spec), tmp_path / "r", executor, stream=io.StringIO())
    assert (result.done, result.failed) == (2, [])


def test_timeout_and_retries_on_the_command_line(tmp_path: Path, cli_env: dict):
    spec = two_cells(tmp_path)
    env = {**cli_env, "GRADSWEEP_CELL_DELAY": str(HANG)}
    proc = subprocess.run(
        [PYTHON, "-m", "gradsweep", "run", str(spec), "--results", str(tmp_path / "r"), "--local",
         "--timeout", "2", "--retries", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    failures = _failures(tmp_path / "r", "two")
    assert len(failures) == 2
    for record in failures.values():
        assert record["attempts"] == 2
        assert [e["error"] for e in record["errors"]] == ["timed out after 2 s"] * 2
    assert "retrying (1 of 1)" in proc.stderr


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
def test_a_bad_timeout_exits_2_naming_the_option(tmp_path: Path, value: str, capsys):
    from gradsweep.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", str(two_cells(tmp_path)), "--timeout", value])
    assert exc.value.code == 2 and "--timeout" in capsys.readouterr().err


# -- retries ---------------------------------------------------------------------------------------


def flaky_cell(config: Mapping[str, Any], *, device: str | None = None) -> Any:
    """A real cell that raises on its first run (a marker file per cell remembers it), then computes."""
    from gradsweep.cell import run_cell
    from gradsweep.spec import cell_id

    marker = Path(os.environ["FLAKY_DIR"]) / cell_id(config)
    if not marker.exists():
        marker.touch()
        raise OSError("flaky: the first attempt fails")
    return run_cell(config, device=device)


def test_a_flaky_cell_succeeds_on_a_retry(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    sweep = load_spec(two_cells(tmp_path))
    without = run(sweep, tmp_path / "a", LocalExecutor(cell_fn="test_limits:flaky_cell", hooks=FaultHooks()),
                  stream=io.StringIO())
    assert len(without.failed) == 2  # no retries by default

    for marker in tmp_path.glob("[0-9a-f]" * 16):
        marker.unlink()
    out = io.StringIO()
    result = run(sweep, tmp_path / "b", LocalExecutor(cell_fn="test_limits:flaky_cell", hooks=FaultHooks()),
                 stream=out, retries=1)
    assert (result.done, result.failed) == (2, [])
    assert "flaky: the first attempt fails; retrying (1 of 1)" in out.getvalue()


def test_a_cell_that_always_fails_is_recorded_with_every_attempt(tmp_path: Path):
    sweep = load_spec(two_cells(tmp_path))
    bad = sweep.cells[0].id
    result = run(sweep, tmp_path / "r", LocalExecutor(hooks=FaultHooks(fail_cells=frozenset({bad}))),
                 stream=io.StringIO(), retries=2)
    assert (result.done, result.failed) == (1, [bad])
    record = _failures(tmp_path / "r", "two")[bad]
    assert record["attempts"] == 3 and len(record["errors"]) == 3
    assert all("injected failure" in e["error"] and e["traceback"] for e in record["errors"])


def test_negative_retries_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="retries"):
        run(load_spec(two_cells(tmp_path)), tmp_path / "r", LocalExecutor(), retries=-1)


# -- requests no node can hold -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "device", "names"),
    [
        ("{cpu: 64}", "cpu", ["resources.cpu", "64 CPUs", "largest node has 2"]),
        ("{cpu: 1, memory: 100000}", "cpu", ["resources.memory", "100000 GB"]),
        ("{cpu: 1, gpu: 1}", "cuda", ["device: cuda", "no GPU"]),
    ],
)
def test_a_cell_no_node_can_hold_is_refused_before_anything_runs(
    ray_local, tmp_path: Path, resources: str, device: str, names: list[str]
):
    from gradsweep.executors.ray_executor import RayExecutor

    sweep = load_spec(two_cells(tmp_path, resources, device))
    with pytest.raises(Unsatisfiable) as exc:
        run(sweep, tmp_path / "r", RayExecutor(hooks=FaultHooks()), stream=io.StringIO())
    for name in names:
        assert name in str(exc.value)
    assert "cluster: 1 node(s): 2 CPUs, 0 GPUs" in str(exc.value)
    folder = tmp_path / "r" / "two"
    meta = folder.parent / "two.gradsweep"
    assert not list(folder.glob("*.parquet")) and not (meta / "spec.yaml").exists()
    assert not (meta / "lock").exists()


def test_the_command_line_refuses_an_impossible_request_with_exit_2(ray_local, tmp_path: Path, capsys):
    import ray

    from gradsweep.cli import main

    spec = two_cells(tmp_path, "{cpu: 64}")
    address = ray.get_runtime_context().gcs_address
    code = main(["run", str(spec), "--results", str(tmp_path / "r"), "--address", address])
    err = capsys.readouterr().err
    assert code == 2 and "resources.cpu: a cell asks for 64 CPUs" in err and "Traceback" not in err


def test_device_cuda_without_a_gpu_is_refused_in_process_too(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(Unsatisfiable, match="device: cuda"):
        run(load_spec(two_cells(tmp_path, device="cuda")), tmp_path / "r", LocalExecutor(), stream=io.StringIO())


# -- memory ------------------------------------------------------------------------------------------


def test_a_worker_killed_by_rays_memory_monitor_is_recorded_as_out_of_memory(tmp_path: Path, cli_env: dict):
    """A driver with its own embedded Ray whose memory monitor kills any worker over 1% of the
    node's memory (the machine's real memory pressure is not touched)."""
    spec = two_cells(tmp_path, "{cpu: 1, gpu: 0, memory: 0.5}")
    env = {**cli_env, "RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"}
    proc = subprocess.run(
        [PYTHON, "-m", "gradsweep", "run", str(spec), "--results", str(tmp_path / "r"), "--ray",
         "--max-retries", "0", "--num-cpus", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    failures = _failures(tmp_path / "r", "two")
    assert len(failures) == 2
    for record in failures.values():
        assert record["error"].startswith("out of memory (") and "GB used by the cell's worker" in record["error"]
        assert "killed by Ray's memory monitor" in record["error"]
        assert "resources.memory 0.5 GB" in record["error"]
        assert "WorkerCrashedError" not in record["error"]


# -- what is running ---------------------------------------------------------------------------------


def test_running_counts_cells_executing_not_tasks_queued(ray_local, tmp_path: Path):
    from gradsweep.executors.ray_executor import RayExecutor

    spec = tmp_path / "six.yaml"
    spec.write_text(TWO_CELLS.format(resources="{cpu: 1, gpu: 0}", device="cpu").replace("seeds: [0, 1]", "seeds: [0, 1, 2, 3, 4, 5]"))
    cells = load_spec(spec).cells
    executor = RayExecutor(hooks=FaultHooks(delay=3.0), chunk_size=1, max_in_flight=6)
    executor.submit(cells, sweep="six")
    seen_running, done = set(), []
    try:
        while executor.pending:
            done += executor.wait(timeout=0.2)
            seen_running.add(executor.running)
            assert executor.running <= 2, "two CPUs: at most two cells execute at once"
    finally:
        executor.close()
    assert len(done) == 6 and all(o.ok for o in done)
    assert 2 in seen_running  # both CPUs were seen busy while four tasks waited


def test_progress_shows_cells_per_second(tmp_path: Path):
    from gradsweep.runner import Progress

    out = io.StringIO()
    progress = Progress(10, stream=out, interval=0)
    progress.update(done=4, failed=0, running=1, force=True)  # 4 done before this run
    progress.update(done=6, failed=1, running=1, force=True)
    line = out.getvalue().splitlines()[-1]
    assert "6 done, 1 failed, 1 running" in line and "cells/s" in line


def test_a_small_sweep_runs_in_process_and_says_so(tmp_path: Path, cli_env: dict):
    spec = two_cells(tmp_path)
    proc = subprocess.run(
        [PYTHON, "-m", "gradsweep", "run", str(spec), "--results", str(tmp_path / "r")],
        env=cli_env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "running it in this process (--ray to use Ray)" in proc.stderr
    assert len(list((tmp_path / "r" / "two").glob("*.parquet"))) == 2


def test_failure_records_are_json_with_the_attempts(tmp_path: Path):
    sweep = load_spec(two_cells(tmp_path))
    bad = sweep.cells[1].id
    run(sweep, tmp_path / "r", LocalExecutor(hooks=FaultHooks(fail_cells=frozenset({bad}))), stream=io.StringIO())
    path = tmp_path / "r" / "two.gradsweep" / "failures" / f"{bad}.json"
    record = json.loads(path.read_text())
    assert record["attempts"] == 1 and len(record["errors"]) == 1


def test_a_worker_subprocess_killed_mid_cell_fails_only_that_cell(tmp_path: Path):
    import signal
    import threading

    spec = two_cells(tmp_path)
    pid_dir = tmp_path / "pids"
    sweep = load_spec(spec)
    first = sweep.cells[0].id

    def kill_first() -> None:  # the first cell's worker, once it runs
        path = pid_dir / f"{first}.pid"
        deadline = time.monotonic() + 300
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(path.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_first)
    killer.start()
    executor = LocalExecutor(hooks=FaultHooks(delay=1.0, pid_dir=str(pid_dir)), timeout=300)
    result = run(sweep, tmp_path / "r", executor, stream=io.StringIO())
    killer.join()
    assert (result.done, result.failed) == (1, [first])
    error = _failures(tmp_path / "r", "two")[first]["error"]
    assert error.startswith("worker process died: killed by SIGKILL")
