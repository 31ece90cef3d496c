"""gradsweep: gradient-estimator sweeps for binary neural networks.

The package root stays light (no torch, no Ray) so that the spec layer, the CLI's ``plan`` and the
offline analysis import quickly. ``run_cell`` is imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "run_cell"]


def __getattr__(name: str) -> Any:
    if name == "run_cell":
        from gradsweep.cell import run_cell

        return run_cell
    raise AttributeError(f"module 'gradsweep' has no attribute {name!r}")
