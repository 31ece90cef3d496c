"""Descent: repeated steps along the estimate, on one fixed batch, with a decay schedule.

``run(problem, estimator, config, *, generator_for) -> pandas.DataFrame`` (see
:mod:`gradsweep.experiments`). With ``step = config["step"]``:

- the batch is the problem's first (Rosenbrock has only ``None``; the toy its probe batch 0);
- update ``s = 0, 1, ..., steps - 1``: ``g = estimator.estimate(...)`` on ``config["params"]``
  with ``generator_for("estimate", s, estimator seed)``, ``d = g / ||g||`` when ``normalize`` (one
  norm over all layers; a zero estimate gives no move) else ``g``, and the optimizer's update
  with ``d`` as the gradient (``sgd``: ``w <- w - lr d``; ``momentum`` (``step.momentum``) and
  ``adam``: :class:`gradsweep.optimizers.Optimizer`, torch's rules);
- ``decay: {factor, every, after, applies_to}``: the decays happen at the steps
  ``start, start + every, start + 2 every, ...`` where ``start = after`` (or ``every`` when
  ``after`` is 0); from a decay on, every name in ``applies_to`` (``lr``, ``epsilon``, ``sigma``)
  is multiplied by ``factor`` once more. ``epsilon`` / ``sigma`` decay by rebuilding the
  estimator with the new value (``estimators.get`` of its config), so its validation applies;
- rows ``record="descent"``: ``step, loss, lr, epsilon`` at step 0 (before any update) and after
  every ``log_every`` updates, plus the last step; ``lr`` and ``epsilon`` are those in force for
  the next update; ``epsilon`` is the estimator's perturbation scale (``epsilon`` of CDG,
  ``sigma`` of NES; null for the others). ``estimator_seconds`` is the estimator time spent since
  the previous row.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import torch

from gradsweep import estimators
from gradsweep.experiments import GeneratorFor, estimator_seed, normalized, timed_estimate
from gradsweep.optimizers import make as make_optimizer
from gradsweep.spec.validate import complete_sections
from gradsweep.problems.base import Problem

__all__ = ["run", "decays_before"]



def decays_before(step: int, *, every: int, after: int) -> int:
    """How many decays have happened by update ``step`` (see the module docstring)."""
    start = after if after > 0 else every
    return 0 if step < start else 1 + (step - start) // every


def _scale_name(estimator: Any) -> str | None:
    params = getattr(estimator, "params", {})
    return "epsilon" if "epsilon" in params else "sigma" if "sigma" in params else None


def run(problem: Problem, estimator: Any, config: Mapping[str, Any], *, generator_for: GeneratorFor) -> pd.DataFrame:
    """The descent rows of one cell (see the module docstring)."""
    config = complete_sections(config, "descent")
    step_cfg = config["step"]
    lr0, normalize = float(step_cfg["lr"]), bool(step_cfg["normalize"])
    steps, log_every = int(step_cfg["steps"]), int(step_cfg["log_every"])
    decay = step_cfg["decay"]
    factor, every, after, applies_to = 1.0, 1, 0, []
    if decay:
        factor, every, after = float(decay["factor"]), int(decay["every"]), int(decay["after"])
        applies_to = list(decay["applies_to"])
        for name in applies_to:
            if name != "lr" and name not in estimator.params:
                raise ValueError(
                    f"step.decay.applies_to: {name!r} is not a parameter of estimator {estimator.name!r}"
                )

    layers = problem.select_layers(config.get("params", "all"))
    batch = next(iter(problem.batches()))
    start = problem.point()
    params = {n: start[n].detach().clone() for n in layers}
    optimizer = make_optimizer(step_cfg["optimizer"], lr0, step_cfg)

    base_config = estimator.get_config()
    current, current_decays = estimator, 0
    scale = _scale_name(estimator)
    rows: list[dict[str, Any]] = []
    seconds = 0.0

    def point() -> dict[str, torch.Tensor]:
        return {**start, **params}

    def log(step: int) -> None:
        nonlocal seconds
        with torch.no_grad():
            loss = float(problem.loss(point(), batch))
        rows.append({
            "record": "descent", "step": step, "loss": loss, "lr": optimizer.lr,
            "epsilon": float(current.params[scale]) if scale else None, "estimator_seconds": seconds,
        })
        seconds = 0.0

    for step in range(steps + 1):
        k = decays_before(step, every=every, after=after) if decay else 0
        if k != current_decays:
            current_decays = k
            optimizer.lr = lr0 * factor**k if "lr" in applies_to else lr0
            changed = {n: base_config[n] * factor**k for n in applies_to if n != "lr"}
            if changed:
                current = estimators.get({**base_config, **changed})
        if step % log_every == 0 or step == steps:
            log(step)
        if step == steps:
            break
        grads, spent = timed_estimate(
            current, problem, point(), batch, layers, generator_for("estimate", step, estimator_seed(current))
        )
        seconds += spent
        direction = normalized(grads)[0] if normalize else grads
        optimizer.step(params, {n: direction[n].to(params[n].dtype) for n in layers})
    return pd.DataFrame(rows)
