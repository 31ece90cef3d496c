"""In-process, sequential execution: for tests, debugging (``pdb`` works) and ``run --local``.

A cell with a time limit cannot be stopped inside this process (a hung C loop ignores every
signal), so such a cell runs in one worker subprocess instead (:class:`ProcessExecutor`), which is
killed when the limit passes.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

from gradsweep.executors.base import CellLike, Executor, Outcome, Unsatisfiable, execute_cell

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs one cell per :meth:`wait` call, in submission order, in this process.

    ``device`` is passed to the cell function (None: the cell's own ``device`` setting decides).
    Cells with a time limit (``timeout=`` or their ``resources.timeout``) run in a subprocess.
    """

    def __init__(self, *, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = device
        self._queue: deque[tuple[str, CellLike]] = deque()
        self._isolated: Any = None  # a ProcessExecutor, made for the first cell with a time limit
        self._current: str | None = None

    def check(self, cells: Sequence[CellLike]) -> None:
        """Refuse ``device: cuda`` where this machine has no CUDA GPU (every cell would fail)."""
        if self.device is None and any((c.config or {}).get("device") == "cuda" for c in cells):
            import torch

            if not torch.cuda.is_available():
                raise Unsatisfiable("device: cuda, but this machine has no CUDA GPU (torch.cuda.is_available() "
                                    "is false); use device: auto or cpu, or run on a cluster with GPUs")

    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None:
        self._queue.extend((sweep, c) for c in cells)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if self._current is not None:  # a cell with a time limit runs in the subprocess
            got = self._isolated.wait(timeout)
            if got:
                self._current = None
            return got
        if not self._queue:
            return []
        sweep, cell = self._queue.popleft()
        if self.timeout_for(cell) is not None:
            if self._isolated is None:
                from gradsweep.executors.process import ProcessExecutor

                self._isolated = ProcessExecutor(
                    workers=1, device=self.device, cell_fn=self.cell_fn, hooks=self.hooks, timeout=self.timeout,
                )
            self._isolated.submit([cell], sweep=sweep)
            self._current = cell.id
            return self.wait(timeout)
        return [execute_cell(sweep, cell.id, cell.config, cell_fn=self.cell_fn, device=self.device, hooks=self.hooks)]

    @property
    def pending(self) -> int:
        return len(self._queue) + (self._current is not None)

    @property
    def running(self) -> int:
        return int(self._current is not None)

    def cancel(self) -> list[str]:
        ids = [c.id for _, c in self._queue]
        self._queue.clear()
        if self._isolated is not None:
            ids = self._isolated.cancel() + ids
            self._current = None
        return ids

    def close(self) -> None:
        if self._isolated is not None:
            self._isolated.close()
            self._isolated = None
