"""gradsweep: gradient-estimator sweeps for binary neural networks.

The package root stays light (no torch, no Ray) so that the spec layer, the CLI's ``plan`` and the
offline analysis import quickly. ``run_cell`` and ``load`` are imported on first use.

``gradsweep.load("results/toy-raw")`` gives a results folder as one tidy pandas table, with a
readable ``estimator`` label column (:func:`gradsweep.store.load`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "run_cell", "load"]


def __getattr__(name: str) -> Any:
    if name == "run_cell":
        from gradsweep.cell import run_cell

        return run_cell
    if name == "load":
        from gradsweep.store import load

        return load
    raise AttributeError(f"module 'gradsweep' has no attribute {name!r}")
