"""The exact gradient by reverse-mode autodiff, and the backward helper the STE family shares.

``autograd`` is the true gradient of the problem's loss. Through a step activation (``sign``,
``ternary``, ``2bit``) it is **zero**: the quantizers' forwards carry no autograd connection, so
every layer below the first step function gets an exactly zero gradient (only the last linear
layer, which sees the activations directly, gets a non-zero one). It is meaningful where the loss
is smooth (an ``fp`` toy student, Rosenbrock) and is used there to validate CDG and NES.
"""

from __future__ import annotations

from typing import Sequence

import torch

from gradsweep.estimators.base import Estimator, check_layers
from gradsweep.problems.base import Batch, Point, Problem, Surrogate

__all__ = ["Autograd", "loss_gradient"]


def loss_gradient(
    problem: Problem,
    point: Point,
    batch: Batch,
    layers: Sequence[str],
    surrogate: Surrogate | None = None,
) -> dict[str, torch.Tensor]:
    """``d loss / d point[layer]`` for each of ``layers``, with ``surrogate`` as the steps' backward.

    Layers the loss does not reach (below a step function with no surrogate) get exact zeros
    rather than an autograd error: that *is* their gradient.
    """
    check_layers(point, layers)
    leaves = {name: point[name].detach().clone().requires_grad_(True) for name in layers}
    moved = {name: leaves.get(name, p.detach()) for name, p in point.items()}
    with torch.enable_grad():
        loss = problem.loss(moved, batch, surrogate=surrogate)
        if not loss.requires_grad:
            return {name: torch.zeros_like(point[name]) for name in layers}
        grads = torch.autograd.grad(loss, [leaves[n] for n in layers], allow_unused=True)
    return {
        name: (g.detach() if g is not None else torch.zeros_like(point[name]))
        for name, g in zip(layers, grads)
    }


class Autograd(Estimator):
    """The exact gradient ``g = dL/dw`` (zero through step functions; see the module docstring)."""

    def estimate(
        self,
        problem: Problem,
        point: Point,
        batch: Batch,
        layers: list[str],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        return loss_gradient(problem, point, batch, layers)
