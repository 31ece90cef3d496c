"""Build a problem from a loose config (missing keys take their declared defaults), as a test or
a notebook would: through :func:`gradsweep.problems.build_problem`, the one front door that
completes a config before an implementation reads it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import torch

from gradsweep.problems import build_problem


def _build(kind: str, cfg: Mapping[str, Any], *, seed: int = 0, dtype: torch.dtype = torch.float32,
           device: torch.device | None = None, cache_dir: str | Path | None = None) -> Any:
    return build_problem({"kind": kind, **cfg}, seed=seed, dtype=dtype, device=device or torch.device("cpu"),
                         cache_dir=Path(cache_dir) if cache_dir is not None else Path("/nonexistent-cache"))


build_toy = functools.partial(_build, "toy_mlp")
build_rosenbrock = functools.partial(_build, "rosenbrock")
build_xnor = functools.partial(_build, "xnor_resnet18")
