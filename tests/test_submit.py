"""``gradsweep submit`` without a cluster: addresses, the job's runtime_env, job ids, early errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gradsweep import submit as sub
from gradsweep.cli import main


@pytest.mark.parametrize(
    "given, url",
    [
        ("http://head:8265", "http://head:8265"),
        ("head:8265", "http://head:8265"),
        ("head", "http://head:8265"),
        ("https://ray.example.org", "https://ray.example.org:8265"),
        ("127.0.0.1:31401/", "http://127.0.0.1:31401"),
    ],
)
def test_addresses_resolve_to_the_dashboard_url(given: str, url: str) -> None:
    assert sub.resolve_address(given) == url


@pytest.mark.parametrize(
    "given, message",
    [
        ("ray://head:10001", "Ray Client address"),
        ("head:6379", "GCS port"),
        ("ftp://head", "scheme 'ftp'"),
        ("http://head:99999", "out of range"),
        ("http://head/jobs", "not a host and port"),
    ],
)
def test_bad_addresses_are_refused_naming_the_option(given: str, message: str) -> None:
    with pytest.raises(sub.SubmitError, match=message) as info:
        sub.resolve_address(given)
    assert str(info.value).startswith(f"--address {given!r}") and "expected http://" in str(info.value)


def test_address_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(sub.SubmitError, match="--address: no cluster given"):
        sub.resolve_address(None)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:9000")
    assert sub.resolve_address(None) == "http://head:9000"


def test_unreachable_cluster_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sub.SubmitError, match=rf"cannot reach the Ray cluster at http://127.0.0.1:{port}"):
        sub._client(f"127.0.0.1:{port}", timeout=2)


def test_runtime_env_ships_the_spec_folder_and_this_package() -> None:
    env = sub.build_runtime_env("/tmp/spec-dir", extra={"env_vars": {"A": 1}, "py_modules": ["/x/mylib"]},
                                pip=["scipy"])
    package = Path(sub.__file__).resolve().parent
    assert env["working_dir"] == "/tmp/spec-dir"
    assert env["py_modules"] == [str(package), "/x/mylib"]
    assert env["env_vars"] == {"A": "1"} and env["pip"] == ["scipy"]
    with pytest.raises(sub.SubmitError, match="'working_dir' is set by gradsweep"):
        sub.build_runtime_env("/tmp/spec-dir", extra={"working_dir": "."})


def test_job_ids_are_told_from_results_folders(tmp_path: Path) -> None:
    assert sub.is_job_id("gradsweep-toy-raw-3f9c2a1b")
    assert sub.is_job_id("raysubmit_4LamXRuQpYdSMg7J")
    assert not sub.is_job_id("results/toy-raw")
    folder = tmp_path / "gradsweep-toy-raw-3f9c2a1b"
    folder.mkdir()
    assert not sub.is_job_id(str(folder))


def test_results_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(sub.SubmitError, match=r"^--results"):
        sub.check_results_writable(str(a_file), "sweep")
    sub.check_results_writable(str(tmp_path / "ok"), "sweep")
    assert (tmp_path / "ok" / "sweep.gradsweep").is_dir()
    assert not [p for p in (tmp_path / "ok" / "sweep.gradsweep").iterdir() if p.name.startswith(".write-probe")]


def test_cli_submit_reports_a_bad_spec_before_contacting_the_cluster(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nproblem: {kind: rosenbrock}\nestimator: {kind: cgd}\n")
    assert main(["submit", str(spec), "--address", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "invalid spec" in err and "cannot reach" not in err


def test_cancel_releases_only_the_lock_of_the_stopped_jobs_driver(tmp_path: Path) -> None:
    """The fallback of `gradsweep cancel` when Ray killed the driver before it released the lock."""
    import os

    from gradsweep.store import SweepStore

    store = SweepStore(tmp_path / "sweep")
    store.create()
    store.acquire_lock()  # stands for the job's driver, pid os.getpid()
    released, left = sub._release_dead_drivers_lock(str(tmp_path), "sweep", os.getpid() + 1)
    assert not released and left is not None and left["pid"] == os.getpid()  # another driver's lock stays
    released, left = sub._release_dead_drivers_lock(str(tmp_path), "sweep", os.getpid())
    assert released and left is None and store.lock_holder() is None
    assert store.events()[-1]["event"] == "lock_released"
    assert sub._release_dead_drivers_lock(str(tmp_path), "sweep", os.getpid()) == (False, None)
