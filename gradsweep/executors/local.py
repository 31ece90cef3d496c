"""In-process, sequential execution: for tests, debugging (``pdb`` works) and ``run --local``."""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Sequence

from gradsweep.executors.base import CellLike, Executor, Outcome, execute_cell

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs one cell per :meth:`wait` call, in submission order, in this process.

    ``device`` is passed to the cell function (None: the cell's own ``device`` setting decides).
    """

    def __init__(self, *, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = device
        self._queue: deque[tuple[str, str, Mapping[str, Any]]] = deque()

    def submit(self, cells: Sequence[CellLike], *, sweep: str) -> None:
        self._queue.extend((sweep, c.id, c.config) for c in cells)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._queue:
            return []
        sweep, cell_id, config = self._queue.popleft()
        return [execute_cell(sweep, cell_id, config, cell_fn=self.cell_fn, device=self.device, hooks=self.hooks)]

    @property
    def pending(self) -> int:
        return len(self._queue)

    def cancel(self) -> list[str]:
        ids = [cell_id for _, cell_id, _ in self._queue]
        self._queue.clear()
        return ids
