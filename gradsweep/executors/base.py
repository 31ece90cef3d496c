"""The executor interface, the outcome of a cell, and the wrapper that runs a cell on a worker.

A small API in the style of submitit: an executor takes cells with :meth:`Executor.submit` and
hands back :class:`Outcome` objects, in completion order, from :meth:`Executor.wait`. A cell's
exception is data (``status == "error"`` with the traceback), never raised in the driver, so one
bad cell cannot stop a sweep.

The wrapper (:func:`execute_cell`) imports the cell function by its path (``"module:function"``,
by default ``gradsweep.cell:run_cell``): the scheduler knows nothing of problems or estimators.
It also applies the debugging hooks of :class:`FaultHooks` (``docs/results.md``).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

__all__ = [
    "CELL_FUNCTION", "CellLike", "Outcome", "FaultHooks", "Executor", "Unsatisfiable", "resolve_function",
    "execute_cell", "cell_timeout",
]

CELL_FUNCTION = "gradsweep.cell:run_cell"


class Unsatisfiable(ValueError):
    """Cells ask for more than the cluster can give (CPUs, GPUs, memory of its largest node).

    Raised before anything runs, naming the key and what the cluster has; without this check Ray
    would keep the task pending for ever.
    """


def cell_timeout(resources: Mapping[str, Any] | None, default: float | None) -> float | None:
    """The time limit of a cell in seconds: its spec's ``resources.timeout``, else ``default``."""
    value = (resources or {}).get("timeout")
    return float(value) if value is not None else default


class CellLike(Protocol):
    """What an executor needs of a cell (``gradsweep.spec.Cell``)."""

    id: str
    config: Mapping[str, Any]
    resources: Mapping[str, Any]


@dataclass
class Outcome:
    """What became of one cell: ``"success"`` with its Parquet bytes, or ``"error"`` with a traceback."""

    cell_id: str
    status: str
    data: bytes | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    host: str = ""
    device: str | None = None
    attempts: int = 1
    lost: bool = False  # the task died around the cell (worker lost, cancelled): not the cell's own error

    @property
    def ok(self) -> bool:
        return self.status == "success"


@dataclass(frozen=True)
class FaultHooks:
    """Debugging aids read from the driver's environment and applied inside every cell.

    - ``GRADSWEEP_FAIL_CELLS=<id>,<id>``: those cells raise ``RuntimeError`` (a deterministic
      failing cell, to try failure records and ``resume``);
    - ``GRADSWEEP_CELL_DELAY=<seconds>``: every cell sleeps first (counted in ``cell_seconds``;
      makes a sweep slow enough to interrupt, or cells of a known length);
    - ``GRADSWEEP_PID_DIR=<folder>``: every cell writes ``<folder>/<cell_id>.pid`` with the pid of
      the process running it (to kill a worker mid-cell), and ``<folder>/<cell_id>.json`` with where
      it runs: ``pid``, ``started`` (epoch seconds), ``cuda_visible_devices`` and, on a Ray worker,
      ``node_id`` and ``gpu_ids`` (the GPUs Ray assigned; to check placement on a cluster).

    They travel to the workers as an argument of each task, so they reach remote nodes too.
    """

    fail_cells: frozenset[str] = frozenset()
    delay: float = 0.0
    pid_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "FaultHooks":
        env = os.environ if env is None else env
        fail = frozenset(x.strip() for x in env.get("GRADSWEEP_FAIL_CELLS", "").split(",") if x.strip())
        raw_delay = env.get("GRADSWEEP_CELL_DELAY", "").strip()
        try:
            delay = float(raw_delay) if raw_delay else 0.0
        except ValueError:
            raise ValueError(f"GRADSWEEP_CELL_DELAY: expected a number of seconds, got {raw_delay!r}") from None
        if delay < 0:
            raise ValueError(f"GRADSWEEP_CELL_DELAY: expected seconds >= 0, got {raw_delay!r}")
        return cls(fail, delay, env.get("GRADSWEEP_PID_DIR") or None)

    def apply(self, cell_id: str) -> None:
        if self.pid_dir:
            os.makedirs(self.pid_dir, exist_ok=True)
            tmp = os.path.join(self.pid_dir, f".{cell_id}.{os.getpid()}")
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, os.path.join(self.pid_dir, f"{cell_id}.pid"))
            where = {"pid": os.getpid(), "started": time.time(),
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **_ray_placement()}
            with open(tmp, "w") as f:
                json.dump(where, f)
            os.replace(tmp, os.path.join(self.pid_dir, f"{cell_id}.json"))
        if self.delay:
            time.sleep(self.delay)
        if cell_id in self.fail_cells:
            raise RuntimeError(f"GRADSWEEP_FAIL_CELLS: injected failure in cell {cell_id}")


def _ray_placement() -> dict[str, Any]:
    """The Ray node and assigned GPU ids of this process, when it is a Ray worker (Ray is not imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


def resolve_function(path: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"``."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"cell function: expected 'module:function', got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cell function: cannot import {path!r}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def execute_cell(
    sweep: str,
    cell_id: str,
    config: Mapping[str, Any],
    *,
    cell_fn: str = CELL_FUNCTION,
    device: str | None = None,
    hooks: FaultHooks = FaultHooks(),
) -> Outcome:
    """Run one cell and encode its rows as a Parquet file; any exception becomes an error outcome.

    ``seconds`` (the ``cell_seconds`` column) times the cell function and the delay hook, not the
    encoding.
    """
    from gradsweep.provenance import cell_provenance
    from gradsweep.store import cell_table, encode_cell

    host = socket.gethostname()
    start = time.perf_counter()
    try:
        fn = resolve_function(cell_fn)
        hooks.apply(cell_id)
        rows = fn(dict(config), device=device)
        seconds = time.perf_counter() - start
        table = cell_table(sweep, cell_id, config, rows, cell_provenance(run_device=device, cell_seconds=seconds, config=config))
        return Outcome(cell_id, "success", data=encode_cell(table), seconds=seconds, host=host, device=device)
    except Exception as exc:  # the cell's failure is data for the driver
        return Outcome(
            cell_id, "error", error=_first_line(exc), traceback=traceback.format_exc(),
            seconds=time.perf_counter() - start, host=host, device=device,
        )


class Executor(ABC):
    """Runs cells and reports their outcomes in completion order.

    ``submit`` queues cells; ``wait`` blocks until at least one outcome is ready (or ``timeout``
    seconds pass) and returns every outcome ready; ``pending`` counts cells not yet reported;
    ``cancel`` drops the cells not started and returns their ids.
    """

    def __init__(
        self, *, cell_fn: str = CELL_FUNCTION, hooks: FaultHooks | None = None, timeout: float | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
        self.cell_fn = cell_fn
        self.hooks = FaultHooks.from_env() if hooks is None else hooks
        self.timeout = timeout

    def timeout_for(self, cell: CellLike) -> float | None:
        """The cell's time limit: its ``resources.timeout``, else this executor's default."""
        return cell_timeout(cell.resources, self.timeout)

    def check(self, cells: Sequence[CellLike]) -> None:
        """Raise :class:`Unsatisfiable` if some cell can never run here; by default all can."""

    @abstractmethod
    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None: ...

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[Outcome]: ...

    @property
    @abstractmethod
    def pending(self) -> int:
        """Cells submitted and not yet returned by :meth:`wait`."""

    @property
    def running(self) -> int:
        """Cells being computed now (a lower bound where the backend cannot tell)."""
        return 0

    @abstractmethod
    def cancel(self) -> list[str]:
        """Stop: drop queued cells, stop running ones where possible; the ids not completed."""

    def close(self) -> None:
        """Release the backend's resources."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
