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

from gradsweep import catalog, estimators
from gradsweep.experiments import GeneratorFor, estimator_seed, normalized, timed_estimate
from gradsweep.optimizers import OPTIMIZERS, Optimizer
from gradsweep.problems.base import Problem

__all__ = ["run", "decays_before"]

DECAYABLE = ("lr", "epsilon", "sigma")


def decays_before(step: int, *, every: int, after: int) -> int:
    """How many decays have happened by update ``step`` (see the module docstring)."""
    start = after if after > 0 else every
    return 0 if step < start else 1 + (step - start) // every


def _option(group: Mapping[str, Any], key: str, declared: catalog.Group) -> Any:
    return declared.value(group, key, where="step.")


def _scale_name(estimator: Any) -> str | None:
    params = getattr(estimator, "params", {})
    return "epsilon" if "epsilon" in params else "sigma" if "sigma" in params else None


def run(problem: Problem, estimator: Any, config: Mapping[str, Any], *, generator_for: GeneratorFor) -> pd.DataFrame:
    """The descent rows of one cell (see the module docstring)."""
    step_cfg = dict(config.get("step") or {})
    lr0 = float(_option(step_cfg, "lr", catalog.STEP))
    normalize = bool(_option(step_cfg, "normalize", catalog.STEP))
    steps = int(_option(step_cfg, "steps", catalog.STEP))
    log_every = int(_option(step_cfg, "log_every", catalog.STEP))
    optimizer_name = str(_option(step_cfg, "optimizer", catalog.STEP))
    decay = step_cfg.get("decay")
    factor, every, after, applies_to = 1.0, 1, 0, []
    if decay:
        factor = float(_option(decay, "factor", catalog.DECAY))
        every = int(_option(decay, "every", catalog.DECAY))
        after = int(_option(decay, "after", catalog.DECAY))
        applies_to = list(_option(decay, "applies_to", catalog.DECAY))
        for name in applies_to:
            if name not in DECAYABLE:
                raise ValueError(f"step.decay.applies_to: expected names among {DECAYABLE}, got {name!r}")
            if name != "lr" and name not in estimator.params:
                raise ValueError(
                    f"step.decay.applies_to: {name!r} is not a parameter of estimator {estimator.name!r}"
                )

    layers = problem.select_layers(config.get("params", "all"))
    batch = next(iter(problem.batches()))
    start = problem.point()
    params = {n: start[n].detach().clone() for n in layers}
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f"step.optimizer: expected one of {OPTIMIZERS}, got {optimizer_name!r}")
    momentum = float(_option(step_cfg, "momentum", catalog.STEP)) if optimizer_name == "momentum" else 0.0
    optimizer = Optimizer(optimizer_name, lr0, momentum=momentum)

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
