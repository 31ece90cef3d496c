"""Submit a sweep to a Ray cluster as a Ray job, and follow it: ``gradsweep submit | status JOB | logs JOB``.

Why a Ray *job* (the Jobs API, ``JobSubmissionClient``) rather than a driver on the laptop: the
driver then runs on the head node, inside the cluster, so a laptop that sleeps or loses its VPN
does not kill a 10-hour sweep, and ``submit`` returns at once with a job id.

What travels with the job (its ``runtime_env``):

- ``working_dir``: a folder holding only the spec (as ``spec.yaml``); the job starts in it;
- ``py_modules``: this ``gradsweep`` package, so the cluster runs the same code as the laptop
  (its *dependencies*, torch, pyarrow, ..., come from the cluster's image, or from ``--pip``);
- anything from ``--runtime-env FILE`` (YAML or JSON: ``env_vars``, ``pip``, ``conda``, ...).

The job's entrypoint is ``python -m gradsweep.submit job spec.yaml --results URI``: it checks,
from inside the cluster, that the results location can be written, then runs the sweep through
``gradsweep run`` against the cluster it runs in (``RAY_ADDRESS``, which Ray sets for a job).
The driver writes every cell file (the workers return their tables to it), so worker nodes need
no shared file system and no credentials for the results store; only the head node does.

Resubmitting the same spec after a failure runs only what is left: the results folder is the
truth, and ``gradsweep run`` skips the cells whose files exist. Everything that can be checked
before the job starts is: the spec, the address, that the cluster answers, that the results
location (when it is a local path, or a URI this machine can reach) is writable, and that no
other job is already running this sweep into the same folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO
from urllib.parse import urlsplit

from gradsweep.errors import BadInput, quiet_ray

__all__ = [
    "SubmitError", "Submission", "JobReport", "resolve_address", "check_results_writable", "build_runtime_env",
    "submit", "job_status", "job_logs", "wait", "normalise_results", "is_job_id", "job_main", "add_submit_arguments", "cmd_submit",
    "cmd_job_status", "cmd_logs", "add_logs_arguments", "cancel", "cmd_cancel", "CancelReport",
]

DEFAULT_DASHBOARD_PORT = 8265
SPEC_NAME = "spec.yaml"
METADATA_PREFIX = "gradsweep."
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ACTIVE = ("PENDING", "RUNNING")
_JOB_ID = re.compile(r"^(raysubmit_[A-Za-z0-9]+|gradsweep-[a-z0-9-]+-[0-9a-f]{8})$")
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class SubmitError(BadInput):
    """Submitting or inspecting a job failed before or outside the sweep itself.

    A :class:`gradsweep.cli.BadInput`: the CLI prints its one-line message and exits with 2.
    """


@dataclass(frozen=True)
class Submission:
    """A submitted sweep: the job id and where to look for it."""

    job_id: str
    address: str
    sweep: str
    results: str
    cells: int


@dataclass
class JobReport:
    """A job's state as Ray reports it, plus the sweep's progress read from the results folder."""

    job_id: str
    status: str
    message: str
    sweep: str | None = None
    results: str | None = None
    cells: int | None = None
    done: int | None = None
    failed: int | None = None
    progress_error: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"job {self.job_id}: {self.status}" + (f" ({self.message})" if self.message else "")]
        if self.sweep:
            where = f" in {self.results}/{self.sweep}" if self.results else ""
            if self.done is not None:
                total = f"/{self.cells}" if self.cells is not None else ""
                out.append(f"sweep {self.sweep}: {self.done}{total} cells done, {self.failed or 0} failed{where}")
            else:
                out.append(f"sweep {self.sweep}{where}: progress not readable from here ({self.progress_error}); "
                           f"see 'gradsweep logs {self.job_id}'")
        return out


# ------------------------------------------------------------------------------- address


def resolve_address(address: str | None) -> str:
    """The job server's HTTP URL from ``--address`` (``http://HEAD:8265``, ``HEAD:8265`` or ``HEAD``).

    Without ``--address``, ``RAY_API_SERVER_ADDRESS`` then ``RAY_ADDRESS`` are used (as Ray's own
    CLI does). ``ray://`` (Ray Client) and GCS addresses are refused with a hint: jobs go to the
    dashboard port.
    """
    if not address:
        for var in _ADDRESS_ENV:
            if os.environ.get(var):
                address = os.environ[var]
                break
        else:
            raise SubmitError(
                "--address: no cluster given; expected the head node's dashboard address, "
                f"e.g. http://HEAD:{DEFAULT_DASHBOARD_PORT} (or set RAY_API_SERVER_ADDRESS)"
            )
    text = address.strip()
    expected = f"expected http://HOST:PORT of the head node's dashboard (port {DEFAULT_DASHBOARD_PORT} by default)"
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise SubmitError(f"--address {address!r}: {exc}; {expected}") from None
    if parts.scheme not in ("http", "https"):
        hint = " (a Ray Client address; jobs are submitted to the dashboard instead)" if parts.scheme == "ray" else ""
        raise SubmitError(f"--address {address!r}: scheme {parts.scheme!r} is not supported{hint}; {expected}")
    if not parts.hostname or (parts.path not in ("", "/")) or parts.query or parts.fragment:
        raise SubmitError(f"--address {address!r}: not a host and port; {expected}")
    if port == 6379:
        raise SubmitError(f"--address {address!r}: 6379 is the GCS port, not the job server; {expected}")
    port = port or DEFAULT_DASHBOARD_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def _check_reachable(url: str, timeout: float) -> None:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise SubmitError(
            f"cannot reach the Ray cluster at {url} ({reason}). Is the head node running, with its "
            f"dashboard on that port and reachable from here (for example through 'ray dashboard "
            f"cluster.yaml' or 'kubectl port-forward svc/HEAD-SVC 8265:8265')?"
        ) from None


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client lets RAY_ADDRESS override its argument; gradsweep's --address wins instead."""
    saved = {var: os.environ.pop(var) for var in _ADDRESS_ENV if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _client(address: str | None, *, timeout: float = 10.0) -> Any:
    """A ``JobSubmissionClient`` for the cluster at ``address``, or a clear :class:`SubmitError`."""
    url = resolve_address(address)
    _check_reachable(url, timeout)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        raise SubmitError(f"submitting jobs needs 'ray[default]' installed here: {exc}") from None
    quiet_ray()
    try:
        with _explicit_address():
            return JobSubmissionClient(url)
    except Exception as exc:  # ConnectionError, RuntimeError (version), requests errors
        raise SubmitError(f"the service at {url} did not answer as a Ray job server: {exc}") from None


# ------------------------------------------------------------------------------- results


def _is_local(results: str) -> bool:
    return "://" not in results or results.startswith("file://")


def normalise_results(results: str) -> str:
    """A local results path made absolute (the job runs in another folder); a URI unchanged."""
    if "://" in results:
        return results.rstrip("/") or results
    return os.path.abspath(os.path.expanduser(results))


def check_results_writable(results: str, sweep: str) -> None:
    """Create ``<results>/<sweep>`` and write and delete a probe file there, or raise :class:`SubmitError`.

    Run on the submitting side for a local path and, inside the job, on the cluster before any
    cell runs: a typo'd bucket or a read-only folder then fails in seconds, not after the first
    cell's hours of work.
    """
    from gradsweep.store import StoreError, SweepStore

    try:
        store = SweepStore.for_sweep(results, sweep)
        store.create()
        probe = f"{store.meta}/.write-probe-{uuid.uuid4().hex[:8]}"
        with store.fs.open_output_stream(probe) as out:
            out.write(b"gradsweep write probe\n")
        store.fs.delete_file(probe)
    except StoreError as exc:
        raise SubmitError(f"--results {results!r}: {exc}") from None
    except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses for I/O and credentials
        raise SubmitError(f"--results {results!r}: cannot write to {results}/{sweep}: {exc}") from None


# ------------------------------------------------------------------------------- runtime env


def _load_mapping(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SubmitError(f"--runtime-env {path!r}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise SubmitError(f"--runtime-env {path!r}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SubmitError(f"--runtime-env {path!r}: expected a mapping of runtime_env fields, got {type(data).__name__}")
    return data


def build_runtime_env(
    spec_dir: str, *, extra: Mapping[str, Any] | None = None, pip: list[str] | None = None
) -> dict[str, Any]:
    """The job's ``runtime_env``: the spec folder as ``working_dir``, this package in ``py_modules``.

    ``extra`` (from ``--runtime-env``) is merged on top; its ``py_modules`` are added to ours and
    its ``working_dir`` is refused (the spec folder is the working dir). ``pip`` adds packages.
    """
    package = str(Path(__file__).resolve().parent)
    env: dict[str, Any] = {
        "working_dir": spec_dir,
        "py_modules": [package],
        "excludes": ["__pycache__", "*.pyc"],
    }
    extra = dict(extra or {})
    if "working_dir" in extra:
        raise SubmitError("--runtime-env: 'working_dir' is set by gradsweep (the spec's folder); remove it")
    env["py_modules"] += list(extra.pop("py_modules", []) or [])
    env["excludes"] += list(extra.pop("excludes", []) or [])
    env_vars = {**(extra.pop("env_vars", None) or {})}
    env.update(extra)
    if pip:
        current = env.get("pip") or []
        if isinstance(current, dict):
            current = {**current, "packages": list(current.get("packages", [])) + list(pip)}
        else:
            current = list(current) + list(pip)
        env["pip"] = current
    if env_vars:
        env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    return env


# ------------------------------------------------------------------------------- submit


def is_job_id(text: str) -> bool:
    """Whether ``text`` looks like a job id (and is not an existing file or folder)."""
    return bool(_JOB_ID.match(text)) and not os.path.exists(text)


def _metadata(info: Any) -> dict[str, str]:
    meta = getattr(info, "metadata", None) or {}
    return {k[len(METADATA_PREFIX):]: v for k, v in meta.items() if k.startswith(METADATA_PREFIX)}


def _status_text(status: Any) -> str:
    return str(getattr(status, "value", status))


def submit(
    spec: str | os.PathLike[str],
    *,
    address: str | None,
    results: str,
    runtime_env: Mapping[str, Any] | None = None,
    pip: list[str] | None = None,
    run_args: list[str] | None = None,
    python: str = "python",
    submission_id: str | None = None,
    timeout: float = 10.0,
    overrides: list[str] | None = None,
) -> Submission:
    """Validate the spec, check the cluster and the results location, and submit the sweep as a Ray job.

    Returns once the job is accepted (it may still be pending). ``run_args`` are passed on to
    ``gradsweep run`` inside the job; ``overrides`` (``KEY=VALUE``) change the spec, and the job
    runs the merged spec. Raises :class:`SubmitError` (or the spec's ``SpecError``) before anything
    is submitted when something is wrong.
    """
    from gradsweep.spec.overrides import load_spec_with_overrides

    sweep = load_spec_with_overrides(spec, list(overrides or []))  # SpecError: nothing is contacted
    results = normalise_results(results)
    client = _client(address, timeout=timeout)
    url = resolve_address(address)
    if _is_local(results) and _is_loopback(url):
        check_results_writable(results, sweep.name)
    elif _is_local(results):
        # A local path names a folder on the head node, which this machine cannot check.
        pass
    else:
        # A URI: check it from here when this machine can; credentials may exist only on the
        # cluster, so a failure here is a warning and the job checks again before any cell runs.
        try:
            check_results_writable(results, sweep.name)
        except SubmitError as exc:
            print(f"gradsweep: warning: {exc} (checked from this machine; the job checks again on the cluster)",
                  file=sys.stderr)
    _refuse_concurrent(client, sweep.name, results)

    staging = tempfile.mkdtemp(prefix="gradsweep-submit-")
    try:
        Path(staging, SPEC_NAME).write_text(sweep.source_text or Path(spec).read_text(), encoding="utf-8")
        env = build_runtime_env(staging, extra=runtime_env, pip=pip)
        entry = [python, "-m", "gradsweep.submit", "job", SPEC_NAME, "--results", results, *(run_args or [])]
        job_id = submission_id or f"gradsweep-{sweep.name[:40].strip('-') or 'sweep'}-{uuid.uuid4().hex[:8]}"
        metadata = {
            f"{METADATA_PREFIX}sweep": sweep.name,
            f"{METADATA_PREFIX}results": results,
            f"{METADATA_PREFIX}cells": str(len(sweep.cells)),
            f"{METADATA_PREFIX}spec": str(sweep.path.resolve()) if sweep.path else "<text>",
        }
        try:
            with _explicit_address():
                job_id = client.submit_job(
                    entrypoint=" ".join(_quote(a) for a in entry),
                    runtime_env=env,
                    metadata=metadata,
                    submission_id=job_id,
                    entrypoint_num_cpus=0,
                )
        except Exception as exc:
            raise SubmitError(f"the cluster at {url} refused the job: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # uploaded by submit_job already
    return Submission(job_id=job_id, address=url, sweep=sweep.name, results=results, cells=len(sweep.cells))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


def _refuse_concurrent(client: Any, sweep: str, results: str) -> None:
    try:
        jobs = client.list_jobs()
    except Exception:  # listing is a courtesy check; the store's lock is the real guard
        return
    for job in jobs:
        meta = _metadata(job)
        if meta.get("sweep") == sweep and meta.get("results") == results and _status_text(job.status) in ACTIVE:
            raise SubmitError(
                f"job {job.submission_id} is already {_status_text(job.status)} for sweep {sweep!r} into "
                f"{results}; wait for it, or stop it with 'ray job stop --address ... {job.submission_id}'"
            )


# ------------------------------------------------------------------------------- status, logs


def _progress(report: JobReport) -> None:
    """Fill ``done``/``failed`` from the results folder, counting only the cells of the spec as run."""
    if not (report.sweep and report.results):
        return
    from gradsweep.spec import load_spec
    from gradsweep.store import SweepStore

    try:
        store = SweepStore.for_sweep(report.results, report.sweep)
        if not store.exists():
            report.progress_error = "the results folder does not exist here"
            return
        files = store.cell_files()
        text = store.read_spec()
        ids = {c.id for c in load_spec(text, source="spec.yaml").cells} if text else set(files)
        report.cells = len(ids) if text else report.cells
        report.done = len(ids & set(files))
        report.failed = len(set(store.failures()) & ids - set(files))
    except Exception as exc:  # a URI without credentials here, a half-written spec: progress is optional
        report.progress_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.done = None


def job_status(job_id: str, *, address: str | None, progress: bool = True) -> JobReport:
    """The job's status and message from Ray, and (when readable here) the sweep's cell counts."""
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as exc:
        raise SubmitError(f"no job {job_id!r} on the cluster at {resolve_address(address)}: {exc}") from None
    meta = _metadata(info)
    report = JobReport(
        job_id=job_id,
        status=_status_text(info.status),
        message=info.message or "",
        sweep=meta.get("sweep"),
        results=meta.get("results"),
        cells=int(meta["cells"]) if meta.get("cells", "").isdigit() else None,
        metadata=meta,
    )
    if progress:
        _progress(report)
    return report


def job_logs(job_id: str, *, address: str | None, follow: bool = False, out: TextIO | None = None) -> str:
    """Print the job's output to ``out``; with ``follow``, keep printing until the job ends. Returns its status."""
    out = out or sys.stdout
    client = _client(address)
    try:
        status = _status_text(client.get_job_status(job_id))
    except Exception as exc:
        raise SubmitError(f"no job {job_id!r} on the cluster at {resolve_address(address)}: {exc}") from None
    if not follow:
        out.write(client.get_job_logs(job_id))
        out.flush()
        return status

    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:  # stop following; the job goes on
        pass
    # The log stream can close a moment before the status turns terminal.
    deadline = time.monotonic() + 10
    while (status := _status_text(client.get_job_status(job_id))) in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def wait(job_id: str, *, address: str | None, timeout: float | None = None, poll: float = 1.0) -> str:
    """Block until the job reaches a terminal status (or ``timeout`` seconds); returns the status."""
    client = _client(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = _status_text(client.get_job_status(job_id))
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll)


# ------------------------------------------------------------------------------- in the job


def job_main(argv: list[str] | None = None) -> int:
    """The job's entrypoint on the cluster: check the results location, then ``gradsweep run``."""
    parser = argparse.ArgumentParser(prog="python -m gradsweep.submit job")
    parser.add_argument("spec")
    parser.add_argument("--results", required=True)
    args, rest = parser.parse_known_args(argv)
    from gradsweep.spec import SpecError, load_spec

    try:
        sweep = load_spec(args.spec)
        check_results_writable(args.results, sweep.name)
    except (SpecError, SubmitError) as exc:
        print(f"gradsweep: {exc}", file=sys.stderr)
        print("gradsweep: no cell was run", file=sys.stderr)
        return 2
    print(f"gradsweep: sweep {sweep.name}: {len(sweep.cells)} cells, results in {args.results}/{sweep.name}", flush=True)
    from gradsweep.cli import main as cli_main  # the job runs the CLI (imported here, not at the top)

    # `gradsweep cancel` (Ray's stop_job) sends SIGTERM: stop as Ctrl-C does, so the cells that
    # arrived are written, those in flight are cancelled, and the lock is released. ray.init sets
    # its own SIGTERM handler (sys.exit), so Ray is joined first and ours is set after it.
    from gradsweep.executors.ray_executor import ensure_ray  # imports ray, which resets its log level

    if not {"-v", "--verbose"} & set(rest):
        quiet_ray()
    spec_path = os.path.abspath(args.spec)  # joining Ray may change the working folder
    given = [rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--address"]
    ensure_ray(given[-1] if given else "auto")
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)

    run = ["run", spec_path, "--results", args.results, *rest]
    if "--address" not in rest:
        run += ["--address", "auto"]  # the cluster this job runs in (Ray sets RAY_ADDRESS)
    return int(cli_main(run) or 0)


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handled as the SIGINT handler in force at that moment would handle SIGINT."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


# ------------------------------------------------------------------------------- cancel


@dataclass
class CancelReport:
    """What ``gradsweep cancel`` did: the job's final status and what it left in the results folder."""

    job_id: str
    status: str
    was: str
    lock_released_here: bool = False
    lock_left: dict[str, Any] | None = None
    progress: JobReport | None = None

    def lines(self) -> list[str]:
        if self.was in TERMINAL:
            return [f"job {self.job_id} had already ended ({self.was}): nothing to cancel"]
        out = [f"job {self.job_id}: {self.status}" + (" (cancelled)" if self.status == "STOPPED" else "")]
        rep = self.progress
        if rep and rep.sweep and rep.done is not None:
            out.append(f"sweep {rep.sweep}: {rep.done}/{rep.cells} cells done and kept in {rep.results}/{rep.sweep}, "
                       f"{rep.failed or 0} failed; `gradsweep submit` the spec again (or `gradsweep resume` "
                       f"there) to run the rest")
        elif rep and rep.sweep:
            out.append(f"sweep {rep.sweep}: results kept in {rep.results}/{rep.sweep} "
                       f"(not readable from here: {rep.progress_error})")
        if self.lock_released_here:
            out.append("the job's driver was killed before it could release the sweep's lock: released it here")
        elif self.lock_left:
            out.append(f"the sweep's lock is still held by pid {self.lock_left.get('pid')} on "
                       f"{self.lock_left.get('host')}; it is released when that driver ends")
        return out


def cancel(job_id: str, *, address: str | None, timeout: float = 60.0, poll: float = 0.5) -> CancelReport:
    """Stop a submitted sweep and wait until it has stopped.

    Ray sends the job's driver SIGTERM, which it handles as Ctrl-C (:func:`job_main`): the cells
    that arrived are written, the cells in flight are cancelled, the lock is released; cell files
    already written are never touched. If the driver was killed before releasing the lock (Ray
    kills it a few seconds after SIGTERM), the lock is released here when the results folder is
    reachable and the lock is that driver's.
    """
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as exc:
        raise SubmitError(f"no job {job_id!r} on the cluster at {resolve_address(address)}: {exc}") from None
    was = _status_text(info.status)
    report = CancelReport(job_id=job_id, status=was, was=was)
    if was in TERMINAL:
        return report
    try:
        client.stop_job(job_id)
    except Exception as exc:
        raise SubmitError(f"the cluster at {resolve_address(address)} refused to stop job {job_id}: {exc}") from None
    deadline = time.monotonic() + timeout
    while (status := _status_text(client.get_job_status(job_id))) not in TERMINAL:
        if time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} did not stop within {timeout:g} s (status {status}); "
                              f"see 'gradsweep logs {job_id}'")
        time.sleep(poll)
    report.status = status
    info = client.get_job_info(job_id)
    meta = _metadata(info)
    if meta.get("sweep") and meta.get("results"):
        driver = getattr(info, "driver_info", None)
        report.lock_released_here, report.lock_left = _release_dead_drivers_lock(
            meta["results"], meta["sweep"], getattr(driver, "pid", None))
    report.progress = job_status(job_id, address=address)
    return report


def _release_dead_drivers_lock(results: str, sweep: str, driver_pid: Any) -> tuple[bool, dict[str, Any] | None]:
    """Release the lock a stopped job's driver left behind; (released, lock still there)."""
    from gradsweep.store import SweepStore

    try:
        store = SweepStore.for_sweep(results, sweep)
        holder = store.lock_holder()
    except Exception:  # a URI this machine cannot read: nothing to do from here
        return False, None
    if not holder:
        return False, None
    pid = holder.get("pid")
    mine = driver_pid is not None and str(pid) == str(driver_pid)
    if mine and store.release_stale_lock(holder):
        return True, None
    return False, holder


# ------------------------------------------------------------------------------- CLI pieces


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``gradsweep submit``."""
    parser.add_argument("spec", help="the sweep's YAML spec")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="change the spec without editing it, e.g. problem.dim=64 seeds=[0,1] (as for run)")
    parser.add_argument("--address", default=None,
                        help=f"the head node's dashboard, http://HEAD:{DEFAULT_DASHBOARD_PORT} "
                             "(default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    parser.add_argument("--results", default="results",
                        help="results root as the HEAD NODE sees it: a path there, or a URI (s3://, gs://, ...)")
    parser.add_argument("--runtime-env", default=None, metavar="FILE",
                        help="YAML/JSON runtime_env fields to add (env_vars, pip, conda, py_modules, ...)")
    parser.add_argument("--pip", action="append", default=[], metavar="REQ",
                        help="a pip requirement to install for the job (repeatable)")
    parser.add_argument("--follow", action="store_true", help="print the job's output until it ends")
    parser.add_argument("--run-args", default="", metavar="'OPTIONS'",
                        help="options passed on to 'gradsweep run' in the job, quoted as one string, "
                             "e.g. --run-args '--max-retries 5 --chunk-size 1'")


def cmd_submit(args: argparse.Namespace) -> int:
    """``gradsweep submit``: print the job id and return (or follow the job with ``--follow``)."""
    extra = _load_mapping(args.runtime_env) if args.runtime_env else None
    import shlex

    run_args = shlex.split(args.run_args or "")
    sub = submit(args.spec, address=args.address, results=args.results, runtime_env=extra, pip=args.pip,
                 run_args=run_args, overrides=list(getattr(args, "overrides", []) or []))
    print(sub.job_id)
    print(f"submitted sweep {sub.sweep} ({sub.cells} cells) to {sub.address}; results in {sub.results}/{sub.sweep}",
          file=sys.stderr)
    print(f"follow it with: gradsweep status {sub.job_id} --address {sub.address}  |  "
          f"gradsweep logs {sub.job_id} --address {sub.address} --follow", file=sys.stderr)
    if args.follow:
        status = job_logs(sub.job_id, address=sub.address, follow=True)
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_job_status(job_id: str, address: str | None) -> int:
    """``gradsweep status JOB``: Ray's status and the sweep's progress; exit 0 unless the job failed."""
    report = job_status(job_id, address=address)
    print("\n".join(report.lines()))
    return 1 if report.status in ("FAILED", "STOPPED") else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``gradsweep cancel JOB``: 0 once the job has stopped (or had already ended)."""
    report = cancel(args.job, address=args.address, timeout=args.timeout)
    print("\n".join(report.lines()))
    return 0


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``gradsweep logs``."""
    parser.add_argument("job", help="a job id printed by 'gradsweep submit'")
    parser.add_argument("--address", default=None, help=f"the head node's dashboard, http://HEAD:{DEFAULT_DASHBOARD_PORT}")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def cmd_logs(args: argparse.Namespace) -> int:
    """``gradsweep logs JOB [--follow]``."""
    status = job_logs(args.job, address=args.address, follow=args.follow)
    return 1 if args.follow and status != "SUCCEEDED" else 0


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"]:
        return job_main(argv[1:])
    print("usage: python -m gradsweep.submit job SPEC --results URI [gradsweep run options]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main())
