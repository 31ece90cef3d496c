"""NES, natural evolution strategies (Gaussian smoothing), batched over directions."""

from __future__ import annotations

from typing import Iterator

import torch

from gradsweep import seeding
from gradsweep.estimators.base import Estimator, check_layers
from gradsweep.problems.base import Batch, Point, Problem

__all__ = ["NES", "centered_ranks"]


def centered_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values`` scaled to [-0.5, 0.5]; tied values share their mean rank.

    Ties matter here: a binary network's loss is piecewise constant, so several perturbed points
    often have exactly the same loss, and they must get the same weight whatever their order.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if n < 2:
        return torch.zeros_like(flat).reshape(values.shape)
    unique, inverse, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank (0-based) of each unique value's first copy
    mean_rank = first.to(flat.dtype) + (counts.to(flat.dtype) - 1) / 2
    return (mean_rank[inverse] / (n - 1) - 0.5).reshape(values.shape)


class NES(Estimator):
    """Gaussian-smoothing gradient from ``n = samples`` directions ``u_k ~ N(0, I)``.

    plain:      ``g = 1 / (n sigma) * sum_k F(w + sigma u_k) u_k``
    antithetic: ``g = 1 / (2 n sigma) * sum_k [F(w + sigma u_k) - F(w - sigma u_k)] u_k``
    (n directions, 2n loss evaluations), where ``F = L``, or with ``shaping: centered_rank`` the
    ranks of all 2n (or n) losses scaled to [-0.5, 0.5] (:func:`centered_ranks`).

    Parameters: ``sigma`` (> 0), ``samples`` (>= 1), ``antithetic``, ``shaping``
    (``none`` | ``centered_rank``), ``seed`` (the estimator's own seed).

    Directions are drawn in blocks of :attr:`block` from generators seeded by
    :func:`gradsweep.seeding.derive_seed` of (one draw from the ``generator`` passed in, ``seed``,
    the block index): the numbers do not depend on the memory budget or on how many samples are
    asked for (the first m directions of n are those of m), and the directions can be drawn again
    instead of stored (centred-rank shaping needs every loss before any weight is known). Only
    ``problem.chunk_bytes / 4`` of directions exist at a time; the losses of a chunk come from one
    call of :meth:`Problem.losses`, which the problem evaluates batched.
    """

    sigma: float
    samples: int
    antithetic: bool
    shaping: str
    seed: int
    #: directions per seeded block (fixed: part of what the numbers are)
    block: int = 64

    # -- directions ---------------------------------------------------------------------------
    def base_seed(self, generator: torch.Generator) -> int:
        """One draw from ``generator`` combined with this estimator's own ``seed``.

        Drawing (rather than reading the generator's initial seed) advances it, so successive
        estimates with one generator (a descent) use fresh directions.
        """
        draw = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        return seeding.derive_seed("nes", self.seed, int(draw))

    def direction_blocks(
        self, base: int, count: int, size: int, start: int = 0, stop: int | None = None, *,
        dtype: torch.dtype, device: torch.device,
    ) -> Iterator[torch.Tensor]:
        """The directions ``u_start .. u_{stop-1}`` of ``size`` coordinates, one block at a time.

        ``start`` and ``stop`` must be multiples of :attr:`block` (``stop`` may be ``count``).
        """
        stop = count if stop is None else stop
        for b in range(start // self.block, -(-stop // self.block)):
            # a whole block is drawn even when fewer rows are used: a shorter draw is not a
            # prefix of a longer one, and u_k must not depend on n
            g = seeding.generator(base, "block", b, device=device)
            u = torch.randn((self.block, size), generator=g, dtype=dtype, device=device)
            yield u[: min(self.block, count - b * self.block)]

    def directions(
        self, point: Point, layers: list[str], generator: torch.Generator
    ) -> torch.Tensor:
        """All ``samples`` directions (n, size) that :meth:`estimate` would use with ``generator``.

        For tests and small problems: this materialises them all at once.
        """
        w = point[layers[0]]
        size = sum(point[n].numel() for n in layers)
        base = self.base_seed(generator)
        return torch.cat(list(self.direction_blocks(base, self.samples, size, dtype=w.dtype, device=w.device)))

    # -- the estimate -------------------------------------------------------------------------
    def estimate(
        self,
        problem: Problem,
        point: Point,
        batch: Batch,
        layers: list[str],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        check_layers(point, layers)
        w0 = point[layers[0]]
        dtype, device = w0.dtype, w0.device
        sizes = [point[n].numel() for n in layers]
        size = sum(sizes)
        n = self.samples
        per_direction = size * w0.element_size() * 2  # u and sigma * u
        blocks_per_call = max(1, int(problem.chunk_bytes // 4 // (per_direction * self.block)))
        per_call = blocks_per_call * self.block

        base = self.base_seed(generator)

        def chunks() -> Iterator[tuple[int, torch.Tensor]]:
            for start in range(0, n, per_call):
                stop = min(start + per_call, n)
                blocks = self.direction_blocks(base, n, size, start, stop, dtype=dtype, device=device)
                yield start, torch.cat(list(blocks))

        def evaluate(u: torch.Tensor, sign: float) -> torch.Tensor:
            parts = torch.split(u, sizes, dim=1)
            deltas = {
                name: (sign * self.sigma) * part.reshape(-1, *point[name].shape)
                for name, part in zip(layers, parts)
            }
            return problem.losses(point, batch, deltas)

        grad = torch.zeros(size, dtype=dtype, device=device)
        with torch.no_grad():
            if self.shaping == "none":
                for _, u in chunks():
                    fitness = evaluate(u, 1.0)
                    if self.antithetic:
                        fitness = fitness - evaluate(u, -1.0)
                    grad += fitness @ u
            else:
                losses = torch.empty((n, 2 if self.antithetic else 1), dtype=dtype, device=device)
                for start, u in chunks():
                    losses[start:start + u.shape[0], 0] = evaluate(u, 1.0)
                    if self.antithetic:
                        losses[start:start + u.shape[0], 1] = evaluate(u, -1.0)
                shaped = centered_ranks(losses)
                fitness_all = shaped[:, 0] - shaped[:, 1] if self.antithetic else shaped[:, 0]
                for start, u in chunks():  # the same directions again, from their seeds
                    grad += fitness_all[start:start + u.shape[0]] @ u
            grad /= (2 if self.antithetic else 1) * n * self.sigma
        return {name: part.reshape(point[name].shape) for name, part in zip(layers, torch.split(grad, sizes))}
