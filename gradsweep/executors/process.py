"""Cells in worker subprocesses of this machine: a hung cell is really stopped (its process killed).

:class:`ProcessExecutor` keeps ``workers`` child processes (``python -m
gradsweep.executors._worker``), sends each one cell at a time over a pipe, and enforces the
per-cell time limit from the driver: a cell past its limit has its worker's whole process group
killed (SIGKILL), is reported as failed "timed out after N s", and a fresh worker takes its place.
A worker that dies on its own (killed by the kernel for memory, a segfault) fails only its cell.

``run --local`` uses it with one worker when a time limit is in force; without a limit ``--local``
stays in-process (:class:`~gradsweep.executors.local.LocalExecutor`, where ``pdb`` works).
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from gradsweep.executors.base import CellLike, Executor, Outcome

__all__ = ["ProcessExecutor"]

_HEADER = struct.Struct("<Q")


def send(stream: Any, message: Any) -> None:
    """Write one length-prefixed pickle to a binary stream (the pipe protocol of the workers)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    """Read one message written by :func:`send`; None at end of file (the other side is gone)."""
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


@dataclass
class _Job:
    sweep: str
    cell_id: str
    config: Mapping[str, Any]
    timeout: float | None


class _Worker:
    """One child process; ``job`` is the cell it runs (None: idle), ``since`` when it was sent."""

    def __init__(self, cell_fn: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradsweep.executors._worker", cell_fn],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.ready = False
        self.job: _Job | None = None
        self.since = 0.0

    def start(self, job: _Job) -> None:
        send(self.proc.stdin, ("cell", job.sweep, job.cell_id, dict(job.config)))
        self.job, self.since = job, time.monotonic()

    def kill(self) -> None:
        """Kill the worker and whatever it started (its own session), and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not within a few seconds."""
        try:
            send(self.proc.stdin, ("exit",))
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        self.kill()


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (the kernel kills processes this way when memory runs out)" if sig == signal.SIGKILL else ""
        return f"worker process died: killed by {name}{hint}"
    return f"worker process died with exit code {returncode}"


class ProcessExecutor(Executor):
    """Runs cells in ``workers`` subprocesses, one cell per worker at a time, in submission order.

    ``timeout`` is the default per-cell limit in seconds (a cell's ``resources.timeout`` wins);
    ``device`` is passed to the cell function as :class:`LocalExecutor` does.
    """

    def __init__(self, *, workers: int = 1, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected a positive integer, got {workers!r}")
        self.workers = workers
        self.device = device
        self._queue: deque[_Job] = deque()
        self._pool: list[_Worker] = []
        self._selector = selectors.DefaultSelector()

    # -- workers -----------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        worker = _Worker(self.cell_fn)
        send(worker.proc.stdin, ("init", self.hooks, self.device))
        self._selector.register(worker.fd, selectors.EVENT_READ, worker)
        self._pool.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        self._selector.unregister(worker.fd)
        self._pool.remove(worker)
        worker.kill()

    def _dispatch(self) -> None:
        while self._queue and len(self._pool) < self.workers:
            self._spawn()
        for worker in self._pool:
            if worker.ready and worker.job is None and self._queue:
                worker.start(self._queue.popleft())

    # -- the executor API --------------------------------------------------------------------------
    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None:
        self._queue.extend(_Job(sweep, c.id, c.config, self.timeout_for(c)) for c in cells)
        self._dispatch()

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        self._dispatch()
        if not any(w.job for w in self._pool) and not self._queue:
            return []
        end = None if timeout is None else time.monotonic() + timeout
        outcomes: list[Outcome] = []
        while not outcomes:
            now = time.monotonic()
            deadlines = [w.since + w.job.timeout for w in self._pool if w.job and w.job.timeout is not None]
            limit = min([*deadlines, *([end] if end is not None else [])], default=None)
            events = self._selector.select(None if limit is None else max(0.0, limit - now))
            for key, _ in events:
                outcomes += self._read(key.data)
            now = time.monotonic()
            for worker in list(self._pool):
                job = worker.job
                if job and job.timeout is not None and now - worker.since >= job.timeout:
                    self._retire(worker)
                    outcomes.append(Outcome(
                        job.cell_id, "error", error=f"timed out after {job.timeout:g} s",
                        traceback=f"the cell ran longer than its time limit of {job.timeout:g} s; its worker "
                                  f"process (pid {worker.proc.pid}) was killed",
                        seconds=now - worker.since, host=os.uname().nodename, device=self.device,
                    ))
            self._dispatch()
            if end is not None and time.monotonic() >= end:
                break
        return outcomes

    def _read(self, worker: _Worker) -> list[Outcome]:
        message = receive(worker.fd)
        if message is None:  # the worker died
            job = worker.job
            self._retire(worker)
            if job is None:
                return []
            return [Outcome(job.cell_id, "error", error=_death(worker.proc.returncode),
                            traceback=f"worker pid {worker.proc.pid}: {_death(worker.proc.returncode)}",
                            seconds=time.monotonic() - worker.since, host=os.uname().nodename, lost=False)]
        if message == ("ready",):
            worker.ready = True
            return []
        worker.job = None
        return [message]

    @property
    def pending(self) -> int:
        return len(self._queue) + sum(1 for w in self._pool if w.job)

    @property
    def running(self) -> int:
        return sum(1 for w in self._pool if w.job)

    def cancel(self) -> list[str]:
        ids = [j.cell_id for j in self._queue]
        self._queue.clear()
        for worker in list(self._pool):
            if worker.job:
                ids.append(worker.job.cell_id)
            self._retire(worker)
        return ids

    def close(self) -> None:
        for worker in list(self._pool):
            self._selector.unregister(worker.fd)
            self._pool.remove(worker)
            if worker.job:
                worker.kill()
            else:
                worker.stop()
        self._queue.clear()
