"""Rosenbrock's function: a smooth, full-precision check that CDG and NES compute the right thing.

Two variants over x in R^n (minimum 0 at x = 1):

- ``pairs`` (n even, n/2 uncoupled pairs (a_i, b_i) = (x_{2i-1}, x_{2i})):
  ``f(x) = sum_i [100 (a_i^2 - b_i)^2 + (a_i - 1)^2]``
- ``chain``: ``f(x) = sum_{i<n} [100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2]``

The point is ``{"x": tensor of shape (n,)}``; there is no data, so :meth:`Rosenbrock.batches`
yields a single ``None``. ``x0`` is a list of n numbers, or ``{randint: [lo, hi]}``: integers drawn
uniformly from ``[lo, hi]`` (both included) by ``generator(seed, "x0")``. :meth:`losses` evaluates
any number of points in one vectorised call; :meth:`analytic_gradient` is the exact gradient,
for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from gradsweep.problems.base import Batch, Point, Problem, Surrogate
from gradsweep.seeding import generator

__all__ = ["Rosenbrock", "build", "rosenbrock"]

VARIANTS = ("pairs", "chain")


def rosenbrock(x: torch.Tensor, variant: str) -> torch.Tensor:
    """``f`` over the last axis of ``x`` (any leading axes are a batch of points)."""
    if variant == "pairs":
        a, b = x[..., 0::2], x[..., 1::2]
        return (100.0 * (a * a - b) ** 2 + (a - 1.0) ** 2).sum(-1)
    head, tail = x[..., :-1], x[..., 1:]
    return (100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2).sum(-1)


class Rosenbrock(Problem):
    """Rosenbrock's function of one parameter group ``x`` (see the module docstring)."""

    def __init__(self, variant: str, x0: torch.Tensor, *, dtype: torch.dtype, device: torch.device) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        n = x0.numel()
        if variant == "pairs" and n % 2:
            raise ValueError(f"n: the 'pairs' variant needs an even n, got {n}")
        if n < 2:
            raise ValueError(f"n: expected an integer >= 2, got {n}")
        self.variant, self.n = variant, n
        self.dtype, self.device = dtype, torch.device(device)
        self.x0 = x0.to(self.device, dtype).reshape(n)
        self.indexed_layers = {}

    def point(self) -> Point:
        return {"x": self.x0}

    def batches(self) -> Iterator[Batch]:
        yield None

    def loss(self, point: Point, batch: Batch, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        return rosenbrock(point["x"], self.variant)

    def losses(self, point: Point, batch: Batch, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """All K points ``x + deltas["x"][k]`` at once: the function is vectorised over rows."""
        x = point["x"]
        if "x" not in deltas:
            k = next(iter(deltas.values())).shape[0] if deltas else 1
            return rosenbrock(x, self.variant).expand(k).clone()
        return rosenbrock(x + deltas["x"], self.variant)

    def analytic_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """The exact ``grad f(x)``, written out by hand (an independent check of the estimators)."""
        grad = torch.zeros_like(x)
        if self.variant == "pairs":
            a, b = x[0::2], x[1::2]
            grad[0::2] = 400.0 * a * (a * a - b) + 2.0 * (a - 1.0)
            grad[1::2] = -200.0 * (a * a - b)
            return grad
        head, tail = x[:-1], x[1:]
        grad[:-1] += -400.0 * head * (tail - head * head) - 2.0 * (1.0 - head)
        grad[1:] += 200.0 * (tail - head * head)
        return grad


def _start(x0: Any, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x0, Mapping):
        if set(x0) != {"randint"} or not isinstance(x0["randint"], Sequence) or len(x0["randint"]) != 2:
            raise ValueError(f"x0: expected a list of {n} numbers or {{randint: [lo, hi]}}, got {x0!r}")
        lo, hi = (int(v) for v in x0["randint"])
        if lo > hi:
            raise ValueError(f"x0: randint needs lo <= hi, got [{lo}, {hi}]")
        draw = torch.randint(lo, hi + 1, (n,), generator=generator(seed, "x0"))
        return draw.to(dtype)
    if isinstance(x0, (str, bytes)) or not isinstance(x0, Sequence):
        raise ValueError(f"x0: expected a list of {n} numbers or {{randint: [lo, hi]}}, got {x0!r}")
    if len(x0) != n:
        raise ValueError(f"x0: expected a list of n = {n} numbers, got {len(x0)}")
    return torch.tensor([float(v) for v in x0], dtype=dtype)


def build(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path | str | None = None,
) -> Rosenbrock:
    """The function of a canonical ``problem: {kind: rosenbrock, variant, n, x0}`` config."""
    variant, n = cfg["variant"], int(cfg["n"])
    x0 = _start(cfg["x0"], n, seed, dtype)
    return Rosenbrock(variant, x0, dtype=dtype, device=device)
