"""Problems by spec name. Each module defines ``build(cfg, *, seed, dtype, device, cache_dir)``.

Modules are imported on first use, so a cell of one kind never pays for another kind's imports.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

import torch

from gradsweep.problems.base import Batch, Point, Problem, Surrogate, straight_through

__all__ = ["build_problem", "Problem", "Surrogate", "Point", "Batch", "straight_through", "MODULES"]

MODULES = {
    "toy_mlp": "gradsweep.problems.toy_mlp",
    "rosenbrock": "gradsweep.problems.rosenbrock",
    "xnor_resnet18": "gradsweep.problems.xnor_resnet",
}


def build_problem(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path,
) -> Problem:
    """The problem of a canonical ``problem`` config (its ``kind`` picks the module)."""
    kind = cfg["kind"]
    if kind not in MODULES:
        raise ValueError(f"problem: unknown kind {kind!r} (known: {', '.join(MODULES)})")
    module = importlib.import_module(MODULES[kind])
    return module.build(cfg, seed=seed, dtype=dtype, device=device, cache_dir=cache_dir)
