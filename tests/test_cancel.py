"""``gradsweep cancel JOB``, on a real local Ray cluster: the job stops, its in-flight cells are
cancelled, the sweep's lock is released and every cell already written is kept."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from gradsweep.spec import load_spec
from gradsweep.store import SweepStore, read_results
from gradsweep.submit import is_job_id, job_status

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cluster"))
import local_cluster  # noqa: E402

sys.path.remove(str(ROOT / "cluster"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = """\
name: slow
experiment: descent
problem: {kind: rosenbrock, variant: chain, n: 4, x0: {randint: [-3, 3]}}
estimator: {kind: cdg, epsilon: {grid: [0.1, 0.01]}}
step: {lr: 0.01, steps: 20, log_every: 10}
seeds: [0]
resources: {cpu: 1}
device: cpu
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    state = tmp_path_factory.mktemp("cluster")
    base = next(b for b in (random.randrange(33000, 60000, 1000) for _ in range(50))
                if all(local_cluster._port_free(p) for p in [b, b + 1, b + 2]
                       + [b + local_cluster.NODE_BLOCK + i for i in range(20)]))
    try:
        info = local_cluster.start(state, [local_cluster.parse_node_spec("cpus=2")], base_port=base,
                                   auth="disabled", timeout=300)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env["RAY_AUTH_MODE"] = "disabled"
        yield info["dashboard_url"], env
    finally:
        local_cluster.stop(state)


def gradsweep(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradsweep", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_cancel_stops_the_job_releases_the_lock_and_keeps_the_results(cluster, tmp_path: Path):
    url, env = cluster
    spec, results = tmp_path / "slow.yaml", tmp_path / "results"
    spec.write_text(SPEC)
    runtime_env = tmp_path / "env.json"
    runtime_env.write_text(json.dumps({"env_vars": {"GRADSWEEP_CELL_DELAY": "2"}}))
    done = gradsweep(env, "submit", str(spec), "seeds=[0,1,2,3,4,5,6,7,8,9]", "--address", url,  # an override
                     "--results", str(results), "--runtime-env", str(runtime_env), "--run-args", "--chunk-size 1")
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().splitlines()[-1]
    assert is_job_id(job)

    store = SweepStore(results / "slow")
    deadline = time.monotonic() + 200
    while len(store.cell_files()) < 2:  # wait until the sweep is well under way
        ok = time.monotonic() < deadline and job_status(job, address=url, progress=False).status in ("PENDING", "RUNNING")
        assert ok, gradsweep(env, "logs", job, "--address", url).stdout[-3000:]
        time.sleep(0.5)
    assert store.lock_holder() is not None
    assert store.read_spec().splitlines()[0] == f"# {spec} with overrides: seeds=[0,1,2,3,4,5,6,7,8,9]"

    cancelled = gradsweep(env, "cancel", job, "--address", url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job}: STOPPED (cancelled)" in cancelled.stdout
    assert "cells done and kept in" in cancelled.stdout
    assert job_status(job, address=url).status == "STOPPED"
    as_json = gradsweep(env, "status", job, "--address", url, "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["status"] == "STOPPED" and report["sweep"] == "slow"

    # the lock is released; the cells written are kept and valid; nothing more arrives
    assert store.lock_holder() is None
    kept = set(store.cell_files())
    assert 2 <= len(kept) < 20
    assert set(read_results(results / "slow").to_pandas()["cell_id"]) == kept
    time.sleep(5)  # longer than two cells: a cell still running would have written its file
    assert set(store.cell_files()) == kept
    # the driver stopped as on Ctrl-C: it logged the end of its run, interrupted
    ended = [e for e in store.events() if e["event"] == "run_ended"]
    assert ended and ended[-1]["interrupted"] is True, gradsweep(env, "logs", job, "--address", url).stdout[-3000:]

    # a second cancel says there is nothing to cancel; the rest runs where the lock allows it
    again = gradsweep(env, "cancel", job, "--address", url)
    assert again.returncode == 0 and "had already ended (STOPPED)" in again.stdout
    resumed = gradsweep({k: v for k, v in env.items() if not k.startswith("GRADSWEEP_")},
                        "resume", str(results / "slow"), "--local")
    assert resumed.returncode == 0, resumed.stderr
    assert set(store.cell_files()) == {c.id for c in load_spec(store.read_spec()).cells}
    assert len(store.cell_files()) == 20


def test_cancel_of_an_unknown_job_is_one_clear_error(cluster):
    url, env = cluster
    done = gradsweep(env, "cancel", "gradsweep-nope-0123abcd", "--address", url)
    assert done.returncode == 2
    assert done.stderr.startswith("gradsweep: error: no job 'gradsweep-nope-0123abcd'")
