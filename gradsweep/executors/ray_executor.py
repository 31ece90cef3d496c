"""Cells as Ray tasks: chunked, bounded in flight, handled in completion order.

- Each task runs a *chunk* of cells that share resources, to amortise Ray's per-task overhead on
  small cells. The chunk size is a flag, or adapts to the cell time measured so far: chunks aim at
  ``target_chunk_seconds`` and shrink near the end so that no worker is left with a long tail.
- At most ``max_in_flight`` tasks are submitted at once (``ray.wait``): the driver's memory and
  Ray's object store stay bounded on a grid of a million cells, and results come back in
  completion order.
- A task asks for the spec's ``cpu`` and (fractional) ``gpu`` per cell; ``gpu`` is dropped where
  the cluster has no GPUs. The worker passes the device Ray assigned to the cell function.
- A worker process that dies is retried by Ray (``max_retries``); an exception inside a cell is
  that cell's error outcome and the rest of its chunk still runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import signal
import socket
import sys
import threading
from collections import deque
from typing import Any, Iterator, Mapping, Sequence

import ray

from gradsweep.executors.base import CellLike, Executor, FaultHooks, Outcome, execute_cell

__all__ = ["RayExecutor", "ensure_ray", "assigned_device"]


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start an embedded local Ray; reuse one already started.

    The embedded Ray listens on 127.0.0.1 only (:func:`_loopback_only`): its servers take
    requests without authentication from anyone who can reach them.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    address = address or os.environ.get("RAY_ADDRESS") or None  # ray.init would join it anyway
    if address and not _loopback_only_cluster(address):
        ray.init(address=address, **kwargs)
    elif address:  # an embedded Ray of another driver here: join it as a loopback node too
        with _loopback_only():
            ray.init(address=address, **kwargs)
    else:
        with _loopback_only():
            ray.init(num_cpus=num_cpus, **kwargs)
    _sigterm_exits()


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the Ray started inside take 127.0.0.1 as its node address, so every server binds there.

    On Linux Ray resolves a local node address to the machine's outward IP, and its gRPC servers,
    agents and metrics exporter then listen on all interfaces. Ray's switch for single-machine
    mode (the default on macOS and Windows) makes the node address 127.0.0.1, and with it every
    listener: the module constant for this process, the variable for the processes it starts.
    """
    from ray._private import ray_constants

    before_env = os.environ.get(_SINGLE_MACHINE_ENV)
    before_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = before_env


_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only_cluster(address: str) -> bool:
    """Whether the GCS at ``address`` (``host:port``) is a Ray on this machine's loopback only.

    Ray rewrites a loopback GCS address to the machine's outward IP before it connects, which
    reaches a Ray started with ``ray start`` (it listens on every interface) but not an embedded
    one started by :func:`ensure_ray`: only a GCS reachable on loopback and not on the outward IP
    is joined in loopback mode, so clusters of many nodes are joined exactly as before.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    if not loopback or not port.isdigit():
        return False
    from ray._common.network_utils import node_ip_address_from_perspective

    outward = node_ip_address_from_perspective(None)
    if ipaddress.ip_address(outward).is_loopback:
        return True
    try:
        socket.create_connection((outward, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def _sigterm_exits() -> None:
    """SIGTERM ends the driver through Python (``finally`` blocks run, the lock is released), exit 143.

    Ray's core worker installs a native handler that dumps a stack trace and aborts (exit 134);
    re-installing a Python handler replaces it. While cells run, the runner turns SIGTERM into
    a clean stop of its own (``runner._Interrupt``).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    print("gradsweep: terminated (SIGTERM)", file=sys.stderr)
    raise SystemExit(128 + signum)


def assigned_device(requested: str | None) -> str:
    """The device of a cell on a Ray worker: a GPU only if Ray assigned one (or ``cuda`` was asked).

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned GPU, so ``cuda`` means that one.
    """
    if requested == "cpu":
        return "cpu"
    if ray.get_gpu_ids() or requested == "cuda":
        return "cuda"
    return "cpu"


@ray.remote
def _run_chunk(
    sweep: str, cells: list[tuple[str, Mapping[str, Any]]], cell_fn: str, hooks: FaultHooks
) -> list[Outcome]:
    return [
        execute_cell(sweep, cid, cfg, cell_fn=cell_fn, device=assigned_device(cfg.get("device")), hooks=hooks)
        for cid, cfg in cells
    ]


class RayExecutor(Executor):
    """Runs cells as Ray tasks on the cluster ``ray`` is connected to (see :func:`ensure_ray`).

    ``chunk_size``: cells per task (None: adaptive). ``max_in_flight``: tasks submitted at once
    (None: twice the cells the cluster can run at once, so every worker has its next task
    queued). ``max_retries``: retries of a task whose worker died.
    """

    def __init__(
        self,
        *,
        chunk_size: int | None = None,
        max_in_flight: int | None = None,
        max_retries: int = 3,
        target_chunk_seconds: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for key, value in (("chunk_size", chunk_size), ("max_in_flight", max_in_flight)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if not ray.is_initialized():
            raise RuntimeError("RayExecutor: call gradsweep.executors.ray_executor.ensure_ray() first")
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.target_chunk_seconds = target_chunk_seconds
        resources = ray.cluster_resources()
        self._cluster_cpus = float(resources.get("CPU", 1.0))
        self._has_gpu = resources.get("GPU", 0.0) > 0
        self._max_in_flight = max_in_flight
        # queued cells, one queue per resource shape (a chunk shares one shape)
        self._queues: dict[tuple[float, float], deque[tuple[str, str, Mapping[str, Any]]]] = {}
        self._in_flight: dict[ray.ObjectRef, list[str]] = {}
        self._measured_seconds = 0.0
        self._measured_cells = 0

    # -- bookkeeping -----------------------------------------------------------------------------
    def _shape(self, cell: CellLike) -> tuple[float, float]:
        res = cell.resources or {}
        gpu = float(res.get("gpu", 0.0)) if self._has_gpu else 0.0
        return float(res.get("cpu", 1.0)), gpu

    def _slots(self, cpu: float) -> int:
        return max(1, int(self._cluster_cpus // max(cpu, 1e-9)))

    @property
    def max_in_flight(self) -> int:
        if self._max_in_flight is not None:
            return self._max_in_flight
        cpu = min((shape[0] for shape in self._queues), default=1.0)
        return 2 * self._slots(cpu)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def pending(self) -> int:
        return self.queued + sum(len(ids) for ids in self._in_flight.values())

    @property
    def running(self) -> int:
        return sum(len(ids) for ids in self._in_flight.values())

    def _next_chunk_size(self, shape: tuple[float, float], remaining: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        if self._measured_cells == 0:
            return 1  # the first wave measures the cell time
        per_cell = max(self._measured_seconds / self._measured_cells, 1e-4)
        by_time = max(1, int(self.target_chunk_seconds / per_cell))
        # near the end, smaller chunks keep every worker busy until the last cell
        by_tail = max(1, math.ceil(remaining / (2 * self._slots(shape[0]))))
        return max(1, min(by_time, by_tail, 512))

    def _fill(self) -> None:
        while len(self._in_flight) < self.max_in_flight and self.queued:
            for shape, queue in list(self._queues.items()):
                if not queue or len(self._in_flight) >= self.max_in_flight:
                    continue
                size = self._next_chunk_size(shape, self.queued)
                chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                sweep = chunk[0][0]
                task = _run_chunk.options(
                    num_cpus=shape[0], num_gpus=shape[1], max_retries=self.max_retries,
                    retry_exceptions=False,
                )
                ref = task.remote(sweep, [(cid, cfg) for _, cid, cfg in chunk], self.cell_fn, self.hooks)
                self._in_flight[ref] = [cid for _, cid, _ in chunk]
                if not queue:
                    del self._queues[shape]

    # -- the executor API ------------------------------------------------------------------------
    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None:
        for cell in cells:
            self._queues.setdefault(self._shape(cell), deque()).append((sweep, cell.id, cell.config))
        self._fill()

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        self._fill()
        if not self._in_flight:
            return []
        refs = list(self._in_flight)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # gather every other task that is finished too
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        outcomes: list[Outcome] = []
        for ref in ready:
            ids = self._in_flight.pop(ref)
            try:
                got: list[Outcome] = ray.get(ref)
            except Exception as exc:  # the task itself failed: its worker died past max_retries, or it was cancelled
                line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                got = [
                    Outcome(
                        cid, "error", error=f"task failed: {line}", traceback=str(exc),
                        attempts=self.max_retries + 1, lost=True,
                    )
                    for cid in ids
                ]
            for outcome in got:
                if outcome.ok:
                    self._measured_seconds += outcome.seconds
                    self._measured_cells += 1
            outcomes.extend(got)
        self._fill()
        return outcomes

    def cancel(self) -> list[str]:
        ids = [cid for q in self._queues.values() for _, cid, _ in q]
        self._queues.clear()
        for ref, chunk in self._in_flight.items():
            ids.extend(chunk)
            try:
                ray.cancel(ref, force=False)
            except Exception:  # already finished or gone: nothing to stop
                pass
        self._in_flight.clear()
        return ids

    def close(self) -> None:
        if self._in_flight or self._queues:
            self.cancel()
