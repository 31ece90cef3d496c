"""Executors run cells and hand back outcomes: in-process (:class:`LocalExecutor`) or on Ray.

``RayExecutor`` is imported on first use, so importing this package does not import Ray.
"""

from __future__ import annotations

from typing import Any

from gradsweep.executors.base import CELL_FUNCTION, Executor, FaultHooks, Outcome
from gradsweep.executors.local import LocalExecutor

__all__ = ["CELL_FUNCTION", "Executor", "FaultHooks", "Outcome", "LocalExecutor", "RayExecutor"]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from gradsweep.executors.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'gradsweep.executors' has no attribute {name!r}")
