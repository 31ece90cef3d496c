"""A Ray executor whose Ray starts in the background, so that its start-up overlaps other work.

Starting or joining Ray takes seconds (an embedded local Ray: 5-20 s on a loaded 2-core machine),
and so do the driver's own checks of a big results folder (listing, footers, quarantine). Made
first, :class:`LazyRay` starts Ray in a thread at once; the driver checks its folder meanwhile,
and the first call that needs Ray (:meth:`check`, :meth:`submit`) waits for it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

from gradsweep.executors.base import CELL_FUNCTION, CellLike, Executor, Outcome

__all__ = ["LazyRay"]


class _NoSigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class LazyRay(Executor):
    """A :class:`~gradsweep.executors.ray_executor.RayExecutor` made once Ray, started now in a thread, is up.

    ``address``/``num_cpus`` go to :func:`~gradsweep.executors.ray_executor.ensure_ray`, ``options``
    to the executor. An error while starting Ray is raised by the first call that needs it.
    """

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 options: dict[str, Any] | None = None, prepare: Any = None) -> None:
        options = dict(options or {})
        super().__init__(cell_fn=options.get("cell_fn", CELL_FUNCTION), hooks=options.get("hooks"),
                         timeout=options.get("timeout"))
        self._options = options
        self._inner: Any = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._prepare = prepare  # called once ray is imported, before it starts (the CLI hides its banners)
        self._thread = threading.Thread(target=self._start, args=(address, num_cpus), daemon=True,
                                        name="gradsweep-ray-start")
        self._thread.start()

    def _start(self, address: str | None, num_cpus: int | None) -> None:
        # Ray warns that it sets no SIGTERM handler off the main thread: the runner handles signals
        logging.getLogger("ray._private.worker").addFilter(_NoSigtermWarning())
        try:
            from gradsweep.executors.ray_executor import ensure_ray

            if self._prepare is not None:
                self._prepare()
            ensure_ray(address, num_cpus=num_cpus)
        except BaseException as exc:  # handed to the caller on first use
            self._error = exc
        finally:
            self._ready.set()
        # Ray's own processes (GCS, raylet) die with the *thread* that started them (Linux's
        # parent-death signal follows the thread), so this thread lives as long as the process.
        threading.Event().wait()

    @property
    def ray(self) -> Any:
        """The started executor (waits for Ray)."""
        if self._inner is None:
            self._ready.wait()
            if self._error is not None:
                raise self._error
            from gradsweep.executors.ray_executor import RayExecutor

            self._inner = RayExecutor(**self._options)
        return self._inner

    def check(self, cells: Sequence[CellLike]) -> None:
        self.ray.check(cells)

    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None:
        self.ray.submit(cells, sweep=sweep)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        return self.ray.wait(timeout)

    @property
    def pending(self) -> int:
        return self._inner.pending if self._inner is not None else 0

    @property
    def running(self) -> int:
        return self._inner.running if self._inner is not None else 0

    def cancel(self) -> list[str]:
        return self._inner.cancel() if self._inner is not None else []

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
