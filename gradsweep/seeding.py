"""Seeds derived from their purpose, so a cell's numbers depend only on its config.

Every random draw in gradsweep uses a ``torch.Generator`` seeded by :func:`derive_seed` of named
parts (the cell seed, what the draw is for, the batch index, an estimator's own seed), never the
global RNG: two cells that share a seed share the teacher, the data and the NES directions, and a
change of grid order or of scheduling changes nothing.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash of ``parts`` (their ``repr``), the same on every machine."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded by :func:`derive_seed` of ``parts``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
