"""What the experiments share; each experiment (``probe``, ``descent``, ``train``) is a module
declared in :mod:`gradsweep.experiments` that defines::

    run(problem, estimator, config, *, generator_for) -> pandas.DataFrame

- ``problem``: a built :class:`~gradsweep.problems.base.Problem` (on its device and dtype);
- ``estimator``: a built :class:`~gradsweep.estimators.base.Estimator`;
- ``config``: the canonical cell config (``params``, ``measure``, ``step`` ... as in SPEC.md);
- ``generator_for(*parts) -> torch.Generator``: a generator on the problem's device seeded by
  ``derive_seed(cell seed, *parts)``. Experiments ask for ``("estimate", i, estimator seed)``
  before each estimate (``i`` the batch or step): the same cell always draws the same numbers,
  and two estimators with one config draw the same ones.

The table has a ``record`` column and metric columns of
:data:`gradsweep.results_schema.METRIC_FIELDS`; :func:`gradsweep.cell.run_cell` adds the device.

The helpers below are shared by the experiments: the one normalisation over all estimated
layers, the cosine, and the batched evaluation of many step lengths along one direction.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from gradsweep.devices import synchronize
from gradsweep.problems.base import Batch, Point, Problem

__all__ = [
    "GeneratorFor", "estimator_seed", "timed_estimate",
    "global_norm", "normalized", "cosines", "norm_ratios", "step_losses",
]

GeneratorFor = Callable[..., torch.Generator]

#: bytes of perturbation deltas handed to ``problem.losses`` in one call (it chunks further)
STEP_CHUNK_BYTES = 1 << 28


def estimator_seed(estimator: Any) -> int:
    """The estimator's own ``seed`` parameter, 0 for the deterministic ones."""
    return int(getattr(estimator, "params", {}).get("seed", 0))


def timed_estimate(
    estimator: Any,
    problem: Problem,
    point: Point,
    batch: Batch,
    layers: list[str],
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], float]:
    """``(estimate, seconds)``; on CUDA the clock stops only after the kernels have finished."""
    synchronize(problem.device)
    start = time.perf_counter()
    grads = estimator.estimate(problem, point, batch, layers, generator)
    synchronize(problem.device)
    return grads, time.perf_counter() - start


def global_norm(grads: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm over every layer together (float64 accumulation)."""
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))


def normalized(grads: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
    """``(g / ||g||, ||g||)`` with one norm over all layers; a zero estimate stays zero."""
    norm = global_norm(grads)
    if norm == 0.0 or not math.isfinite(norm):
        return {n: torch.zeros_like(g) if norm == 0.0 else g / norm for n, g in grads.items()}, norm
    return {n: g / norm for n, g in grads.items()}, norm


def cosines(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Cosine of ``a`` and ``b`` per layer and over all layers (``"all"``); NaN where a norm is 0."""

    def cos(dot: float, na: float, nb: float) -> float:
        return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else math.nan

    out: dict[str, float] = {}
    dots = norms_a = norms_b = 0.0
    for name in a:
        x, y = a[name].double().flatten(), b[name].double().flatten()
        d, na, nb = float(x @ y), float(x @ x), float(y @ y)
        out[name] = cos(d, na, nb)
        dots, norms_a, norms_b = dots + d, norms_a + na, norms_b + nb
    out["all"] = cos(dots, norms_a, norms_b)
    return out


def norm_ratios(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``||a|| / ||b||`` per layer and over all layers (``"all"``); NaN where ``||b||`` is 0.

    Beside the cosine it tells a noisy estimate (NES at small sigma: a large norm made of
    variance, pointing anywhere) from one that is small but well aimed.
    """
    out: dict[str, float] = {}
    total_a = total_b = 0.0
    for name in a:
        na, nb = float(a[name].double().pow(2).sum()), float(b[name].double().pow(2).sum())
        out[name] = math.sqrt(na / nb) if nb > 0 else math.nan
        total_a, total_b = total_a + na, total_b + nb
    out["all"] = math.sqrt(total_a / total_b) if total_b > 0 else math.nan
    return out


def step_losses(
    problem: Problem,
    point: Point,
    batch: Batch,
    direction: Mapping[str, torch.Tensor],
    lrs: Sequence[float] | torch.Tensor,
    *,
    losses: Callable[[Point, Batch, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[L(w - lr_k * direction) for k]`` in batched calls of ``problem.losses``.

    Deltas for as many lrs as fit in :data:`STEP_CHUNK_BYTES` go to one call; there is no Python
    loop per lr, so a scan of 50,000 lrs costs a few calls. ``losses`` replaces
    ``problem.losses`` (a non-plain forward judging the loss).
    """
    evaluate = losses or problem.losses
    lr = torch.as_tensor(lrs, dtype=problem.dtype, device=problem.device).flatten()
    per_lr = sum(d.numel() * d.element_size() for d in direction.values())
    chunk = max(1, STEP_CHUNK_BYTES // max(per_lr, 1))
    out = []
    with torch.no_grad():
        for start in range(0, lr.numel(), chunk):
            block = lr[start:start + chunk]
            deltas = {
                n: -block.view(-1, *([1] * d.dim())) * d.unsqueeze(0) for n, d in direction.items()
            }
            out.append(evaluate(point, batch, deltas).reshape(-1))
    return torch.cat(out) if out else torch.empty(0, dtype=problem.dtype, device=problem.device)
