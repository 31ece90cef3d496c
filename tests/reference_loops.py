"""The plain loops that the batched CDG and NES must reproduce: one full forward per evaluation.

No structure, no batching, no tricks: each perturbed point is built by copying the parameters,
moving them, and calling ``problem.loss``. Slow on purpose; the tests and the benchmark compare
the fast paths against these.
"""

from __future__ import annotations

from typing import Iterable

import torch

from gradsweep.estimators.nes import centered_ranks


def _moved(point: dict[str, torch.Tensor], name: str, flat_index: int, step: float) -> dict[str, torch.Tensor]:
    out = {n: p.clone() for n, p in point.items()}
    out[name].view(-1)[flat_index] += step
    return out


def cdg_plain(
    problem,
    point: dict[str, torch.Tensor],
    batch,
    layers: list[str],
    epsilon: float,
    mode: str = "central",
    coordinates: dict[str, Iterable[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """``[L(w + eps e_i) - L(w - eps e_i)] / (2 eps)`` (or forward), one coordinate at a time.

    ``coordinates`` restricts each layer to some flat indices (the others are left NaN), for the
    benchmark's timed subset.
    """
    out = {}
    with torch.no_grad():
        base = problem.loss(point, batch) if mode == "forward" else None
        for name in layers:
            w = point[name]
            grad = torch.full((w.numel(),), float("nan"), dtype=w.dtype, device=w.device)
            indices = range(w.numel()) if coordinates is None else coordinates[name]
            for i in indices:
                up = problem.loss(_moved(point, name, i, epsilon), batch)
                if mode == "central":
                    down = problem.loss(_moved(point, name, i, -epsilon), batch)
                    grad[i] = (up - down) / (2 * epsilon)
                else:
                    grad[i] = (up - base) / epsilon
            out[name] = grad.reshape(w.shape)
    return out


def nes_plain(
    problem,
    point: dict[str, torch.Tensor],
    batch,
    layers: list[str],
    directions: torch.Tensor,
    sigma: float,
    antithetic: bool = False,
    shaping: str = "none",
) -> dict[str, torch.Tensor]:
    """NES with the given directions (n, size), one sample (one forward) at a time."""
    sizes = [point[n].numel() for n in layers]
    n = directions.shape[0]

    def loss_at(u: torch.Tensor, sign: float) -> torch.Tensor:
        moved = dict(point)
        for name, part in zip(layers, torch.split(u, sizes)):
            moved[name] = point[name] + (sign * sigma) * part.reshape(point[name].shape)
        return problem.loss(moved, batch)

    with torch.no_grad():
        values = torch.stack([
            torch.stack([loss_at(u, 1.0)] + ([loss_at(u, -1.0)] if antithetic else [])) for u in directions
        ])  # (n, 1 or 2)
        if shaping == "centered_rank":
            values = centered_ranks(values)
        fitness = values[:, 0] - values[:, 1] if antithetic else values[:, 0]
        grad = torch.zeros(directions.shape[1], dtype=directions.dtype, device=directions.device)
        for f, u in zip(fitness, directions):
            grad += f * u
        grad /= (2 if antithetic else 1) * n * sigma
    return {name: part.reshape(point[name].shape) for name, part in zip(layers, torch.split(grad, sizes))}
