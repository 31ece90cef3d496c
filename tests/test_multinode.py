"""A real multi-node Ray cluster on this machine: submit, a lost node, pretend GPUs, bad input.

One cluster for the module (``cluster/local_cluster.py``): a head with no task CPUs, worker-1
with 2 CPUs, worker-2 with 4 CPUs and 2 pretend GPUs, on ports far from an embedded Ray's. It is
always stopped by the process ids it started. The test that kills worker-1 runs last. Cells are
tiny Rosenbrock descents; the debugging hooks (``GRADSWEEP_CELL_DELAY``, ``GRADSWEEP_PID_DIR``,
passed to the job through ``--runtime-env``) make them long enough to overlap and record where
each ran.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from gradsweep.spec import load_spec
from gradsweep.store import SweepStore, read_results
from gradsweep.submit import is_job_id, wait

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cluster"))
import local_cluster  # noqa: E402

sys.path.remove(str(ROOT / "cluster"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

JOB_TIMEOUT = 240.0


def tiny_spec(name: str, *, seeds: int, resources: str, steps: int = 20) -> str:
    """A Rosenbrock descent sweep of 2 epsilons x ``seeds`` cells, each a fraction of a second."""
    return f"""\
name: {name}
experiment: descent
problem: {{kind: rosenbrock, variant: chain, n: 4, x0: {{randint: [-3, 3]}}}}
estimator: {{kind: cdg, epsilon: {{grid: [0.1, 0.01]}}}}
step: {{lr: 0.01, steps: {steps}, log_every: 10}}
seeds: {list(range(seeds))}
resources: {resources}
device: cpu
"""


@dataclass
class Cluster:
    state: Path
    url: str
    env: dict[str, str]

    def node(self, name: str) -> dict:
        data = json.loads((self.state / local_cluster.STATE_FILE).read_text())
        return next(n for n in data["nodes"] if n["name"] == name)


def _free_base_port() -> int:
    for _ in range(50):
        base = random.randrange(33000, 60000, 1000)
        probes = [base, base + 1, base + 2] + [base + local_cluster.NODE_BLOCK + i for i in range(30)]
        if all(local_cluster._port_free(p) for p in probes):
            return base
    raise RuntimeError("no free block of ports for a local cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster")
    try:
        info = local_cluster.start(
            state, [local_cluster.parse_node_spec("cpus=2"), local_cluster.parse_node_spec("cpus=4,gpus=2")],
            base_port=_free_base_port(), auth="disabled", timeout=180,
        )
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env["RAY_AUTH_MODE"] = "disabled"
        yield Cluster(state, info["dashboard_url"], env)
    finally:
        local_cluster.stop(state)


def gradsweep(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradsweep", *args], capture_output=True, text=True,
                          env=cluster.env, cwd=ROOT, timeout=timeout)


def submit(cluster: Cluster, spec: Path, results: Path, *extra: str) -> str:
    done = gradsweep(cluster, "submit", str(spec), "--address", cluster.url, "--results", str(results), *extra)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    assert is_job_id(job_id), done.stdout
    return job_id


def wait_for(cluster: Cluster, job_id: str) -> str:
    status = wait(job_id, address=cluster.url, timeout=JOB_TIMEOUT)
    if status != "SUCCEEDED":
        print(gradsweep(cluster, "logs", job_id, "--address", cluster.url).stdout[-4000:])
    return status


def hooks_env(tmp_path: Path, **env_vars: str) -> Path:
    path = tmp_path / "runtime_env.yaml"
    path.write_text(json.dumps({"env_vars": env_vars}))
    return path


def assert_complete_and_unique(spec: Path, folder: Path) -> None:
    """Every cell of the spec has exactly one file, each with the rows of exactly one run."""
    sweep = load_spec(spec)
    table = read_results(folder).to_pandas()
    assert set(table["cell_id"]) == {c.id for c in sweep.cells}
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".parquet")
    assert files == sorted(f"{c.id}.parquet" for c in sweep.cells)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    rows = table.groupby("cell_id").size()
    assert rows.nunique() == 1, rows  # a duplicated run would double a cell's rows
    assert table.duplicated(["cell_id", "record", "step"]).sum() == 0


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


# --------------------------------------------------------------------------------------------------


def test_submit_runs_a_sweep_to_completion_with_correct_results(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec("mn-submit", seeds=2, resources="{cpu: 1}"))
    results = tmp_path / "results"
    job_id = submit(cluster, spec, results)
    assert wait_for(cluster, job_id) == "SUCCEEDED"

    folder = results / "mn-submit"
    assert_complete_and_unique(spec, folder)
    # the numbers are those of the same cells computed here, in this process
    from gradsweep.cell import run_cell

    table = read_results(folder).to_pandas()
    for cell in load_spec(spec).cells:
        expected = run_cell(dict(cell.config), device="cpu")
        got = table[table["cell_id"] == cell.id].sort_values("step")
        assert got["loss"].tolist() == pytest.approx(expected.sort_values("step")["loss"].tolist(), rel=1e-12)

    status = gradsweep(cluster, "status", job_id, "--address", cluster.url)
    assert status.returncode == 0, status.stderr
    assert "SUCCEEDED" in status.stdout and "4/4 cells done" in status.stdout
    logs = gradsweep(cluster, "logs", job_id, "--address", cluster.url)
    assert "4/4 cells done" in logs.stdout

    # submitting the same spec again runs nothing: the results folder is the truth
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    again = submit(cluster, spec, results)
    assert wait_for(cluster, again) == "SUCCEEDED"
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == before
    runs = [e for e in SweepStore(folder).events() if e["event"] == "run_started"]
    assert [e["todo"] for e in runs] == [4, 0]


def test_pretend_gpus_run_at_most_four_half_gpu_cells_and_each_sees_its_gpu(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec("mn-gpu", seeds=3, resources="{cpu: 0.25, gpu: 0.5}"))
    pids = tmp_path / "pids"
    env_file = hooks_env(tmp_path, GRADSWEEP_CELL_DELAY="3", GRADSWEEP_PID_DIR=str(pids))
    results = tmp_path / "results"
    job_id = submit(cluster, spec, results, "--runtime-env", str(env_file))
    assert wait_for(cluster, job_id) == "SUCCEEDED"
    assert_complete_and_unique(spec, results / "mn-gpu")

    placements = {p.stem: json.loads(p.read_text()) for p in pids.glob("*.json")}
    assert set(placements) == {c.id for c in load_spec(spec).cells}
    for where in placements.values():
        assert len(where["gpu_ids"]) == 1 and where["gpu_ids"][0] in ("0", "1")  # the node has GPUs 0 and 1
        assert where["cuda_visible_devices"] == where["gpu_ids"][0]  # and the cell sees just that one
    assert len({w["node_id"] for w in placements.values()}) == 1  # only worker-2 has GPUs

    table = read_results(results / "mn-gpu").to_pandas().drop_duplicates("cell_id")
    end = table["finished_at"].map(lambda t: t.timestamp())
    spans = list(zip(end - table["cell_seconds"], end))
    assert max_overlap(spans) <= 4  # 2 GPUs / 0.5 each, though the node has CPUs for 16
    by_gpu: dict[str, list[tuple[float, float]]] = {}
    for cell_id, span in zip(table["cell_id"], spans):
        by_gpu.setdefault(placements[cell_id]["gpu_ids"][0], []).append(span)
    assert all(max_overlap(s) <= 2 for s in by_gpu.values())


def test_bad_address_unreachable_cluster_and_unwritable_results_fail_before_anything_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec("mn-bad", seeds=1, resources="{cpu: 1}"))
    from ray.job_submission import JobSubmissionClient

    jobs_before = len(JobSubmissionClient(cluster.url).list_jobs())

    bad = gradsweep(cluster, "submit", str(spec), "--address", "ftp://head:8265", "--results", str(tmp_path / "r"))
    assert bad.returncode == 2 and "--address 'ftp://head:8265'" in bad.stderr and "expected http://" in bad.stderr

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    unreachable = gradsweep(cluster, "submit", str(spec), "--address", f"http://127.0.0.1:{free}",
                            "--results", str(tmp_path / "r"))
    assert unreachable.returncode == 2 and "cannot reach the Ray cluster" in unreachable.stderr

    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    unwritable = gradsweep(cluster, "submit", str(spec), "--address", cluster.url, "--results", str(a_file))
    assert unwritable.returncode == 2 and "--results" in unwritable.stderr and "Traceback" not in unwritable.stderr

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(tiny_spec("mn-bad", seeds=1, resources="{cpu: 1}").replace("kind: cdg", "kind: cgd"))
    wrong = gradsweep(cluster, "submit", str(invalid), "--address", cluster.url, "--results", str(tmp_path / "r"))
    assert wrong.returncode == 2 and "invalid spec" in wrong.stderr and "cgd" in wrong.stderr

    assert len(JobSubmissionClient(cluster.url).list_jobs()) == jobs_before  # nothing was submitted
    assert not (tmp_path / "r").exists()

    # inside the job, a results location the cluster cannot write stops it before any cell
    in_job = subprocess.run([sys.executable, "-m", "gradsweep.submit", "job", str(spec), "--results", str(a_file / "x")],
                            capture_output=True, text=True, env=cluster.env, cwd=tmp_path, timeout=60)
    assert in_job.returncode == 2 and "no cell was run" in in_job.stderr and "--results" in in_job.stderr


def test_a_worker_node_lost_mid_sweep_loses_and_duplicates_no_cell(cluster: Cluster, tmp_path: Path) -> None:
    """Runs last: it kills worker-1 for good."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec("mn-lost", seeds=3, resources="{cpu: 1}"))
    pids = tmp_path / "pids"
    env_file = hooks_env(tmp_path, GRADSWEEP_CELL_DELAY="4", GRADSWEEP_PID_DIR=str(pids))
    results = tmp_path / "results"
    job_id = submit(cluster, spec, results, "--runtime-env", str(env_file))

    victim = cluster.node("worker-1")
    deadline = time.monotonic() + JOB_TIMEOUT
    killed_cell = None
    while killed_cell is None and time.monotonic() < deadline:
        on_victim = {p.pid for p in local_cluster._tree(victim["pid"], victim["created"])}
        for pid_file in pids.glob("*.pid"):
            if int(pid_file.read_text() or 0) in on_victim:
                killed_cell = pid_file.stem
                break
        time.sleep(0.2)
    assert killed_cell is not None, "no cell ever ran on worker-1"
    assert not (results / "mn-lost" / f"{killed_cell}.parquet").exists()  # it was mid-cell
    assert local_cluster.kill_node(cluster.state, "worker-1") > 0

    if wait_for(cluster, job_id) != "SUCCEEDED":  # the job died with the node: resubmit finishes it
        assert wait_for(cluster, submit(cluster, spec, results, "--runtime-env", str(env_file))) == "SUCCEEDED"
    assert_complete_and_unique(spec, results / "mn-lost")
    assert (results / "mn-lost" / f"{killed_cell}.parquet").exists()
