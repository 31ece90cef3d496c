"""Hostile and unlucky inputs end in one clear message, never a traceback, and never block a sweep.

Each case runs the real ``gradsweep`` command in a subprocess against real file systems: a tiny
tmpfs filled up (a real ENOSPC), a read-only mount (a real EROFS; ``chmod`` where not root), and a
real SIGTERM sent to a running sweep with its embedded Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PYTHON

pytestmark = pytest.mark.slow


def gradsweep(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "gradsweep", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (root only; skipped elsewhere), unmounted afterwards."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tiny tmpfs needs root (it gives a real full or read-only file system)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Take every free byte of the file system holding ``folder``: writes end in a real ENOSPC."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28  # ENOSPC
    finally:
        os.close(fd)


def test_a_spec_that_is_not_utf8_names_the_line(tmp_path: Path, cli_env: dict):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("name: t\n# café au lait\n".encode("latin-1"))
    proc = gradsweep("plan", str(spec), env=cli_env)
    assert proc.returncode == 2
    assert f"{spec}: invalid spec: line 2: the spec is not UTF-8 text: byte 0xe9" in proc.stderr
    _no_traceback(proc)


def test_a_negative_retry_count_is_refused(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    proc = gradsweep("run", str(tiny_spec), "--results", str(tmp_path), "--max-retries", "-5", env=cli_env)
    assert proc.returncode == 2
    assert "--max-retries: expected an integer >= 0, got '-5'" in proc.stderr
    assert not (tmp_path / "tiny").exists()  # refused before anything was touched
    _no_traceback(proc)


def test_report_on_a_read_only_folder_says_where_to_write_instead(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    results = tmp_path / "results"
    results.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(results)], capture_output=True
    ).returncode == 0
    try:
        assert gradsweep("run", str(tiny_spec), "--results", str(results), "--local", env=cli_env).returncode == 0
        if mounted:  # a real read-only mount: even root cannot write there
            subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True)
        else:
            for path in (results, results / "tiny", results / "tiny.gradsweep"):
                path.chmod(0o555)
        proc = gradsweep("report", str(results / "tiny"), env=cli_env)
        assert proc.returncode == 2
        assert f"cannot write the report to {str(results / 'tiny.report')!r}" in proc.stderr
        assert "write it elsewhere with --out DIR" in proc.stderr
        _no_traceback(proc)
        elsewhere = gradsweep("report", str(results / "tiny"), "--out", str(tmp_path / "report"), env=cli_env)
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert (tmp_path / "report" / "index.html").exists()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(results)], check=False)
        else:
            for path in (results, results / "tiny", results / "tiny.gradsweep"):
                path.chmod(0o755)


def test_a_full_disk_while_the_lock_is_created_leaves_no_lock_and_an_empty_one_is_taken_over(
    tiny_spec: Path, tmpfs: Path, cli_env: dict
):
    results, folder = tmpfs / "results", tmpfs / "results" / "tiny"
    meta = results / "tiny.gradsweep"  # the sweep's bookkeeping, beside its data folder
    meta.mkdir(parents=True)
    _fill(tmpfs)
    proc = gradsweep("run", str(tiny_spec), "--results", str(results), "--local", env=cli_env)
    assert proc.returncode == 2
    assert f"cannot create the lock {meta / 'lock'}: no space left on the device" in proc.stderr
    _no_traceback(proc)
    assert not (meta / "lock").exists()  # nothing left to block the next run

    # an empty lock, as a driver that died on a full disk (or an older version) left it
    lock = meta / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 600, time.time() - 600))
    (tmpfs / "filler").unlink()
    (meta / "spec.yaml").write_text(tiny_spec.read_text())
    status = gradsweep("status", str(folder), env=cli_env)
    assert "the lock file is empty (a driver died writing it): the next run takes it over" in status.stdout
    proc = gradsweep("run", str(tiny_spec), "--results", str(results), "--local", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert f"taking over the lock of {folder}: the lock file {lock} is empty" in proc.stderr
    assert len(list(folder.glob("*.parquet"))) == 8 and not lock.exists()


def test_status_says_whether_the_lock_holder_is_alive(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    import json
    import socket

    assert gradsweep("run", str(tiny_spec), "--results", str(tmp_path), "--local", env=cli_env).returncode == 0
    lock = tmp_path / "tiny.gradsweep" / "lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "t0"}))
        assert f"being run by pid {sleeper.pid} on {socket.gethostname()} since t0 (running)" in gradsweep(
            "status", str(tmp_path / "tiny"), env=cli_env).stdout
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f"locked by pid {sleeper.pid} on {socket.gethostname()} since t0, which is no longer running" in gradsweep(
        "status", str(tmp_path / "tiny"), env=cli_env).stdout


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_sigterm_stops_a_ray_sweep_like_ctrl_c_and_resume_finishes_it(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    folder = tmp_path / "tiny"
    driver = subprocess.Popen(
        [PYTHON, "-m", "gradsweep", "run", str(tiny_spec), "--results", str(tmp_path), "--num-cpus", "2", "--ray"],
        env={**cli_env, "GRADSWEEP_CELL_DELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(folder.glob("*.parquet")):
            time.sleep(0.05)
        ray_processes = _descendants(driver.pid)
        assert ray_processes, "the driver started no Ray processes"
        driver.send_signal(signal.SIGTERM)  # what Slurm and Kubernetes send
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "cells not finished were cancelled" in err
    assert "Traceback" not in err and "SIGTERM received" not in err  # no Python or Ray stack dump
    done = {p.stem for p in folder.glob("*.parquet")}
    assert 1 <= len(done) < 8
    assert not (folder.parent / "tiny.gradsweep" / "lock").exists() and not list(folder.glob(".*.tmp"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(p) for p in ray_processes):
        time.sleep(0.2)
    assert not [p for p in ray_processes if _alive(p)], "the embedded Ray outlived its driver"

    resumed = gradsweep("resume", str(folder), "--local", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{8 - len(done)} of 8 cells to run" in resumed.stderr
    assert len(list(folder.glob("*.parquet"))) == 8
