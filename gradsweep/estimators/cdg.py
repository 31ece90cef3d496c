"""CDG, the coordinate discrete gradient: finite differences, one coordinate at a time."""

from __future__ import annotations

import torch

from gradsweep.estimators.base import Estimator, check_layers
from gradsweep.problems.base import Batch, Point, Problem

__all__ = ["CDG"]


class CDG(Estimator):
    """Finite differences along every coordinate ``e_i`` of the chosen layers.

    central: ``g_i = [L(w + eps e_i) - L(w - eps e_i)] / (2 eps)``;
    forward: ``g_i = [L(w + eps e_i) - L(w)] / eps``.

    Parameters: ``epsilon`` (> 0), ``mode`` (``central`` | ``forward``).

    The losses come from :meth:`Problem.perturbed_loss_changes` as changes ``L(w +- eps e_i) - L(w)``
    (so that the numerator does not lose the digits shared by two large losses), for a block of
    coordinates per call: the problem evaluates them batched (the toy exploits that one weight
    changes one output unit by a rank-one term), never one Python-level forward per coordinate.
    CDG draws nothing at random; ``generator`` is unused.
    """

    epsilon: float
    mode: str
    #: coordinates handed to the problem per call; the problem chunks further to its memory budget
    coordinates_per_call: int = 1 << 16

    def estimate(
        self,
        problem: Problem,
        point: Point,
        batch: Batch,
        layers: list[str],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            check_layers(point, layers)
            for name in layers:
                w = point[name]
                grad = torch.empty(w.numel(), dtype=w.dtype, device=w.device)
                for start in range(0, w.numel(), self.coordinates_per_call):
                    index = torch.arange(start, min(start + self.coordinates_per_call, w.numel()), device=w.device)
                    step = torch.full(index.shape, self.epsilon, dtype=w.dtype, device=w.device)
                    if self.mode == "central":  # one call for both signs: the problem's set-up is shared
                        both = problem.perturbed_loss_changes(
                            point, batch, name, torch.cat([index, index]), torch.cat([step, -step]))
                        up, down = both[: index.numel()], both[index.numel():]
                        grad[index] = (up - down) / (2 * self.epsilon)
                    else:
                        up = problem.perturbed_loss_changes(point, batch, name, index, step)
                        grad[index] = up / self.epsilon
                out[name] = grad.reshape(w.shape)
        return out
