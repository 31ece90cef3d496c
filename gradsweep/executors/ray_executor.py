"""Cells as Ray tasks: chunked, bounded in flight, handled in completion order.

- Each task runs a *chunk* of cells that share resources, to amortise Ray's per-task overhead on
  small cells. The chunk size is a flag, or adapts to the cell time measured so far: chunks aim at
  ``target_chunk_seconds`` and shrink near the end so that no worker is left with a long tail.
- A task is a streaming generator: it yields a marker when it starts computing (after importing
  the cell's code), then each cell's outcome as soon as it is done. The driver therefore knows
  which cell of a chunk runs and since when: ``running`` counts cells executing, not queued
  tasks, and a cell past its time limit (``resources.timeout`` or the executor's ``timeout``) has
  its task cancelled with ``force=True`` (its worker process is killed, so a hung cell really
  stops); it is reported "timed out after N s" and the rest of its chunk is queued again.
- At most ``max_in_flight`` tasks are submitted at once (``ray.wait``): the driver's memory and
  Ray's object store stay bounded on a grid of a million cells, and results come back in
  completion order.
- A task asks for the spec's ``cpu``, (fractional) ``gpu`` and ``memory`` (GB) per cell; ``gpu`` is
  dropped where the cluster has no GPUs. The worker passes the device Ray assigned to the cell
  function. :meth:`RayExecutor.check` refuses, before anything runs, cells that no node can hold.
- A worker process that dies mid-cell (killed, or by Ray's memory monitor: "out of memory") costs
  that cell one of ``max_retries`` attempts; the cells of its chunk not started yet are queued
  again. An exception inside a cell is that cell's error outcome and the rest of its chunk runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import ray

from gradsweep.executors.base import (
    CellLike, Executor, FaultHooks, Outcome, Unsatisfiable, execute_cell, resolve_function,
)

__all__ = ["RayExecutor", "ensure_ray", "assigned_device"]

_GB = 1024**3
_started_here = False  # whether ensure_ray started an embedded Ray (no autoscaler can add nodes)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start an embedded local Ray; reuse one already started.

    The embedded Ray listens on 127.0.0.1 only (:func:`_loopback_only`): its servers take
    requests without authentication from anyone who can reach them.
    """
    global _started_here
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
        _started_here = True
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


STARTED = "gradsweep:started"  # the first item a chunk task yields


@ray.remote(num_returns="streaming")
def _run_chunk(sweep: str, cells: list[tuple[str, Mapping[str, Any]]], cell_fn: str, hooks: FaultHooks) -> Any:
    try:  # import the cell's code (torch) before the clock of the first cell starts
        resolve_function(cell_fn)
    except ValueError:
        pass  # execute_cell reports it as each cell's error
    yield STARTED
    for cid, cfg in cells:
        yield execute_cell(sweep, cid, cfg, cell_fn=cell_fn, device=assigned_device(cfg.get("device")), hooks=hooks)


@dataclass(eq=False)
class _Task:
    """A chunk in flight: its cells, how many have reported, and when the current one started."""

    cells: list[tuple[str, str, Mapping[str, Any], float | None]]  # (sweep, id, config, timeout)
    shape: tuple[float, float, float]
    reported: int = 0
    started: bool = False
    since: float = field(default_factory=time.monotonic)

    @property
    def current(self) -> tuple[str, str, Mapping[str, Any], float | None] | None:
        return self.cells[self.reported] if self.started and self.reported < len(self.cells) else None

    def deadline(self) -> float | None:
        cur = self.current
        return None if cur is None or cur[3] is None else self.since + cur[3]


def _task_error(exc: BaseException, asked_gb: float = 0.0) -> str:
    """A failed task's error in one line; a kill by Ray's memory monitor says so, with the figures."""
    text = str(exc).strip()
    if isinstance(exc, getattr(ray.exceptions, "OutOfMemoryError", ())):
        node = re.search(r"was ([0-9.]+)\s*GB(?: used)?\s*/\s*([0-9.]+)\s*GB", text)
        own = re.search(r"actual memory used=([0-9.]+)\s*GB", text)
        figures = [f"{float(own.group(1)):.2f} GB used by the cell's worker"] if own else []
        if node:
            figures.append(f"its node at {float(node.group(1)):.1f} of {float(node.group(2)):.1f} GB")
        asked = f"; the cell declared resources.memory {asked_gb:g} GB" if asked_gb else "; declare resources.memory so Ray schedules by it"
        return f"out of memory ({'; '.join(figures) or 'its node ran out'}): killed by Ray's memory monitor{asked}"
    line = text.splitlines()[0] if text else ""
    return f"task failed: {type(exc).__name__}: {line}"


class RayExecutor(Executor):
    """Runs cells as Ray tasks on the cluster ``ray`` is connected to (see :func:`ensure_ray`).

    ``chunk_size``: cells per task (None: adaptive). ``max_in_flight``: tasks submitted at once
    (None: twice the cells the cluster can run at once, so every worker has its next task
    queued). ``max_retries``: how often a cell is run again after its worker process died.
    ``timeout``: the default per-cell time limit in seconds (a cell's ``resources.timeout`` wins).
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
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected an integer >= 0, got {max_retries!r}")
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
        self._queues: dict[tuple[float, float, float], deque[tuple[str, str, Mapping[str, Any], float | None]]] = {}
        self._in_flight: dict[Any, _Task] = {}  # ObjectRefGenerator -> its chunk
        self._deaths: dict[str, int] = {}  # cell id -> times its worker died under it
        self._measured_seconds = 0.0
        self._measured_cells = 0

    # -- the up-front check ----------------------------------------------------------------------
    def check(self, cells: Sequence[CellLike]) -> None:
        """Refuse cells that no node of the cluster can hold (Ray would keep them pending for ever).

        Compared with the nodes alive now, and with the node groups an autoscaler publishes where
        there is one; a cluster whose autoscaler does not publish them is not refused (a warning
        is printed): it may still add a node that fits.
        """
        nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
        nodes += _autoscaler_node_groups()
        problems: list[str] = []
        for cell in cells:
            problems += _misfits(cell, nodes, self._has_gpu)
        problems = list(dict.fromkeys(problems))
        if not problems:
            return
        if not _started_here and _autoscaler_may_add_nodes():
            import sys

            print("warning: " + "; ".join(problems) + " (the cluster's autoscaler may still add such a node)",
                  file=sys.stderr)
            return
        raise Unsatisfiable("cells ask for more than any node of the cluster has: " + "; ".join(problems)
                            + f" (cluster: {_describe(nodes)})")

    # -- bookkeeping -----------------------------------------------------------------------------
    def _shape(self, cell: CellLike) -> tuple[float, float, float]:
        res = cell.resources or {}
        gpu = float(res.get("gpu") or 0.0) if self._has_gpu else 0.0
        memory = float(res.get("memory") or 0.0)
        return float(res.get("cpu") or 1.0), gpu, memory

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
        return self.queued + sum(len(t.cells) - t.reported for t in self._in_flight.values())

    @property
    def running(self) -> int:
        """Cells executing now: one per task that has started and not finished."""
        return sum(1 for t in self._in_flight.values() if t.current is not None)

    def _next_chunk_size(self, shape: tuple[float, float, float], remaining: int) -> int:
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
                options: dict[str, Any] = {"num_cpus": shape[0], "num_gpus": shape[1], "max_retries": 0}
                if shape[2]:
                    options["memory"] = int(shape[2] * _GB)
                gen = _run_chunk.options(**options).remote(
                    sweep, [(cid, cfg) for _, cid, cfg, _ in chunk], self.cell_fn, self.hooks,
                )
                self._in_flight[gen] = _Task(chunk, shape)
                if not queue:
                    del self._queues[shape]

    def _requeue(self, task: _Task, start: int) -> None:
        """Put the cells of ``task`` from index ``start`` on back at the front of their queue."""
        queue = self._queues.setdefault(task.shape, deque())
        queue.extendleft(reversed(task.cells[start:]))

    # -- the executor API ------------------------------------------------------------------------
    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None:
        for cell in cells:
            self._queues.setdefault(self._shape(cell), deque()).append(
                (sweep, cell.id, cell.config, self.timeout_for(cell))
            )
        self._fill()

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        self._fill()
        end = None if timeout is None else time.monotonic() + timeout
        outcomes: list[Outcome] = []
        while self._in_flight:
            deadlines = [d for d in (t.deadline() for t in self._in_flight.values()) if d is not None]
            limit = min([*deadlines, *([end] if end is not None else [])], default=None)
            gens = list(self._in_flight)
            ready, _ = ray.wait(gens, num_returns=1,
                                timeout=None if limit is None else max(0.0, limit - time.monotonic()))
            while ready:  # take every item that is there, from every task
                for gen in ready:
                    outcomes += self._advance(gen)
                gens = list(self._in_flight)
                ready = ray.wait(gens, num_returns=len(gens), timeout=0)[0] if gens else []
            outcomes += self._expire()
            self._fill()
            if outcomes or (end is not None and time.monotonic() >= end):
                break
        return outcomes

    def _advance(self, gen: Any) -> list[Outcome]:
        """Take the next item of a ready task: its start marker, a cell's outcome, its end or its failure."""
        task = self._in_flight[gen]
        try:
            ref = next(gen)
        except StopIteration:
            del self._in_flight[gen]
            if task.reported < len(task.cells):  # ended early (should not happen): run the rest again
                self._requeue(task, task.reported)
            return []
        try:
            item = ray.get(ref)
        except Exception as exc:  # the task died: its worker crashed, was killed for memory, or cancelled
            del self._in_flight[gen]
            return self._task_failed(task, exc)
        task.since = time.monotonic()
        if item == STARTED:
            task.started = True
            return []
        task.reported += 1
        if item.ok:
            self._measured_seconds += item.seconds
            self._measured_cells += 1
        return [item]

    def _task_failed(self, task: _Task, exc: BaseException) -> list[Outcome]:
        # the cell it was on is blamed (the first one if it died while importing: a worker that
        # cannot even start must not be retried for ever)
        index = task.reported
        if index >= len(task.cells):
            return []
        self._requeue(task, index + 1)
        sweep, cid, cfg, limit = task.cells[index]
        deaths = self._deaths[cid] = self._deaths.get(cid, 0) + 1
        if deaths <= self.max_retries:
            self._queues.setdefault(task.shape, deque()).appendleft((sweep, cid, cfg, limit))
            return []
        return [Outcome(cid, "error", error=_task_error(exc, task.shape[2]), traceback=str(exc), attempts=deaths,
                        seconds=time.monotonic() - task.since, lost=True)]

    def _expire(self) -> list[Outcome]:
        """Stop every task whose current cell is past its time limit; that cell failed, its chunk-mates wait again."""
        now = time.monotonic()
        out = []
        for gen, task in list(self._in_flight.items()):
            deadline = task.deadline()
            if deadline is None or now < deadline:
                continue
            del self._in_flight[gen]
            try:
                ray.cancel(gen, force=True)
            except Exception:  # already finished: its outcome is dropped, the time limit passed
                pass
            sweep, cid, cfg, limit = task.cells[task.reported]
            self._requeue(task, task.reported + 1)
            out.append(Outcome(
                cid, "error", error=f"timed out after {limit:g} s",
                traceback=f"the cell ran longer than its time limit of {limit:g} s; its Ray task was cancelled "
                          "and its worker process killed",
                seconds=now - task.since,
            ))
        return out

    def cancel(self) -> list[str]:
        ids = [cid for q in self._queues.values() for _, cid, _, _ in q]
        self._queues.clear()
        for gen, task in self._in_flight.items():
            ids.extend(cid for _, cid, _, _ in task.cells[task.reported:])
            try:
                ray.cancel(gen, force=False)
            except Exception:  # already finished or gone: nothing to stop
                pass
        self._in_flight.clear()
        return ids

    def close(self) -> None:
        if self._in_flight or self._queues:
            self.cancel()


# -- what the cluster can hold ---------------------------------------------------------------------


def _misfits(cell: CellLike, nodes: list[dict[str, float]], has_gpu: bool) -> list[str]:
    """Why no node can run ``cell``, one phrase per key that fits on no node (empty: some node fits)."""
    res = cell.resources or {}
    device = (cell.config or {}).get("device")
    want = {"CPU": float(res.get("cpu") or 1.0), "memory": float(res.get("memory") or 0.0) * _GB}
    if has_gpu:
        want["GPU"] = float(res.get("gpu") or 0.0)
    if device == "cuda" and not has_gpu:
        return ["device: cuda, but the cluster has no GPU"]
    if any(all(n.get(k, 0.0) >= v for k, v in want.items() if v) for n in nodes):
        return []
    largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU", "memory")}
    words = {"CPU": ("resources.cpu", "CPUs"), "GPU": ("resources.gpu", "GPUs"), "memory": ("resources.memory", "GB")}
    out = []
    for k, v in want.items():
        if v and v > largest[k]:
            key, unit = words[k]
            scale = _GB if k == "memory" else 1
            out.append(f"{key}: a cell asks for {v / scale:g} {unit}, but the largest node has {largest[k] / scale:g}")
    return out or ["resources: no single node has " + ", ".join(f"{k} {v:g}" for k, v in want.items() if v)]


def _describe(nodes: list[dict[str, float]]) -> str:
    parts = []
    for n in nodes:
        parts.append(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs, {n.get('memory', 0) / _GB:.1f} GB")
    return f"{len(nodes)} node(s): " + "; ".join(parts)


def _autoscaler_node_groups() -> list[dict[str, float]]:
    """The resources of each node type an autoscaler may add, where it publishes them (KubeRay, v2)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # not published, or an internal API that moved
        return []
    if config is None:
        return []
    return [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]


def _autoscaler_may_add_nodes() -> bool:
    """Whether an autoscaler that launches nodes watches this cluster (not Ray's own stand-in for
    a fixed cluster, which names each node ``node_<id>``)."""
    import json

    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
    except Exception:
        return False
    if not raw:
        return False
    try:
        mapping = json.loads(raw).get("autoscaler_report", {}).get("node_type_mapping") or {}
    except ValueError:
        return False
    return any(not str(t).startswith("node_") for t in mapping.values())

