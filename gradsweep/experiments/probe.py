"""The probe: how much does one normalised step along the estimate lower the loss?

``run(problem, estimator, config, *, generator_for) -> pandas.DataFrame`` (see
:mod:`gradsweep.experiments`). For every batch ``b`` of ``problem.batches()``:

1. ``g = estimator.estimate(...)`` on the layers of ``config["params"]`` (timed:
   ``estimator_seconds``), with the generator ``generator_for("estimate", b, estimator seed)``;
2. ``g_hat = g / ||g||`` with one norm over all estimated layers (``grad_norm`` = ``||g||``);
3. ``L(w - lr * g_hat)`` for every lr of ``measure.lrs`` in batched ``problem.losses`` calls,
   together with ``L(w)`` itself (a zero step in the same call: ``loss_before`` goes through the
   same arithmetic as ``loss_after``, so a tiny lr's decrease is not a rounding difference
   between two code paths);
4. rows ``record="probe"``: ``batch, lr, loss_before, loss_after, loss_decrease
   (= loss_before - loss_after), grad_norm, estimator_seconds``;
5. with ``measure.reference``: the reference's estimate on the same batch and rows
   ``record="cosine"``: ``batch, layer, reference (its label), cosine, norm_ratio`` per layer
   and for ``layer="all"`` (``norm_ratio = ||g|| / ||g_ref||`` of the raw estimates).

``measure.evaluate: estimator`` judges the losses with the estimator's own forward: sr-STE's
stochastic rounding (its ``evaluation_surrogate``), the plain sign for the STE family (whose
forward *is* sign: ``forward_is_plain``, so one spec judges sr-STE as the notes did beside
vanilla STE), and an error for estimators with no forward of their own (CDG, NES, autograd).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pandas as pd
import torch

from gradsweep import estimators
from gradsweep.spec.validate import complete_sections
from gradsweep.experiments import (
    GeneratorFor, cosines, estimator_seed, norm_ratios, normalized, step_losses, timed_estimate,
)
from gradsweep.problems.base import Batch, Point, Problem

__all__ = ["run"]


def _loss_function(
    estimator: Any, evaluate: str, problem: Problem, point: Point, batch: Batch, generator: torch.Generator
) -> Callable[[Point, Batch, dict[str, torch.Tensor]], torch.Tensor] | None:
    """The batched loss that judges before/after: the plain one (None), or the estimator's forward.

    The estimator's forward is drawn once per batch and replayed for every lr, so the loss before
    and after share their randomness.
    """
    if evaluate == "plain":
        return None
    if evaluate != "estimator":
        raise ValueError(f"measure.evaluate: expected 'plain' or 'estimator', got {evaluate!r}")
    if getattr(estimator, "forward_is_plain", False):
        return None  # its own forward is the plain sign (the STE family changes only the backward)
    if not hasattr(estimator, "evaluation_surrogate"):
        raise NotImplementedError(
            f"measure.evaluate: 'estimator' needs an estimator with its own forward (sr_ste); "
            f"{estimator.name!r} has none, use 'plain'"
        )
    from gradsweep.estimators.sr_ste import surrogate_losses

    surrogate = estimator.evaluation_surrogate(problem, point, batch, generator)

    def losses(at: Point, on: Batch, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        return surrogate_losses(problem, at, on, deltas, surrogate)

    return losses


def run(problem: Problem, estimator: Any, config: Mapping[str, Any], *, generator_for: GeneratorFor) -> pd.DataFrame:
    """The probe rows of one cell (see the module docstring)."""
    config = complete_sections(config, "probe")
    measure = config["measure"]
    lrs = [float(v) for v in measure["lrs"]]
    if not lrs:
        raise ValueError("measure.lrs: expected at least one learning rate")
    reference = estimators.get(measure["reference"]) if measure["reference"] else None
    same_as_reference = reference is not None and reference.get_config() == estimator.get_config()
    evaluate = measure["evaluate"]
    if evaluate == "estimator" and not (hasattr(estimator, "evaluation_surrogate") or getattr(estimator, "forward_is_plain", False)):
        _loss_function(estimator, evaluate, problem, {}, None, generator_for("evaluate"))  # raises, before any work
    layers = problem.select_layers(config.get("params", "all"))
    point = problem.point()

    rows: list[dict[str, Any]] = []
    for b, batch in enumerate(problem.batches()):
        grads, seconds = timed_estimate(
            estimator, problem, point, batch, layers, generator_for("estimate", b, estimator_seed(estimator))
        )
        direction, norm = normalized(grads)
        losses = _loss_function(
            estimator, evaluate, problem, point, batch, generator_for("evaluate", b, estimator_seed(estimator))
        )
        values = step_losses(problem, point, batch, direction, [0.0, *lrs], losses=losses).double().cpu()
        before = float(values[0])
        for lr, after in zip(lrs, values[1:].tolist()):
            rows.append({
                "record": "probe", "batch": b, "lr": lr, "loss_before": before, "loss_after": after,
                "loss_decrease": before - after, "grad_norm": norm, "estimator_seconds": seconds,
            })
        if reference is not None:
            # The same estimator and settings draw from the same generator parts, so its estimate
            # is the one just made: CDG over a grid that holds the reference's epsilon runs once.
            ref = grads if same_as_reference else reference.estimate(
                problem, point, batch, layers, generator_for("estimate", b, estimator_seed(reference))
            )
            ratios = norm_ratios(grads, ref)
            for layer, value in cosines(grads, ref).items():
                rows.append({"record": "cosine", "batch": b, "layer": layer, "reference": reference.label,
                             "cosine": value, "norm_ratio": ratios[layer]})
    return pd.DataFrame(rows)
