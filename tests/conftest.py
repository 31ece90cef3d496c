"""Shared fixtures: a tiny real spec, and one embedded Ray for the whole test session.

Starting Ray costs seconds, so every test that needs it shares one local instance with two CPUs
(``ray_local``); tests that need a Ray of their own (a driver started as a subprocess) start it
there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

# A spec whose 8 real toy cells (CDG and clipped STE at dims 4 and 8, two seeds) each take well
# under a second: big enough to exercise grids, unions and seeds, small enough for every test.
TINY_SPEC = """\
name: tiny
description: a tiny real sweep for the runtime tests
experiment: probe
problem:
  kind: toy_mlp
  dim: {grid: [4, 8]}
  depth: 3
  activation: binary
  data: {batch_size: 64, batches: 1}
estimator:
  - kind: cdg
    epsilon: 0.1
  - kind: ste
    variant: clipped
measure:
  lrs: [0.01, 0.1, 1.0]
seeds: [0, 1]
resources: {cpu: 1, gpu: 0}
device: cpu
"""


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test, the previous count restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    """The path of the tiny spec (8 cells) in a fresh folder."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One embedded Ray (2 CPUs) for the session; shut down at the end."""
    import ray

    from gradsweep.executors.ray_executor import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ``python -m gradsweep`` subprocesses: this interpreter's path, no fault hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSWEEP_")}
    env["GRADSWEEP_CACHE"] = str(tmp_path / "cache")
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_DISABLE_IMPORT_WARNING"] = "1"
    return env


PYTHON = sys.executable
