"""The ``train`` experiment: K update steps with a named estimator and optimizer.

One cell trains the problem's point from where the problem puts it (raw or pretrained) for
``step.steps`` updates. At each step the estimator gives ``g`` on the step's batch (a fresh batch
drawn from the cell seed and the step index with ``step.batches: fresh``, else the probe batches
in turn), ``g`` is normalised to unit L2 norm over all estimated layers when ``step.normalize``,
and the optimizer (``sgd``, ``momentum``, ``adam``) applies it at the lr in force (``step.decay``
multiplies lr, and the estimator's ``epsilon``/``sigma`` when listed in ``applies_to``, on the
descent experiment's schedule: :func:`gradsweep.experiments.descent.decays_before`).

Every ``step.log_every`` steps, and at the first and last step, a row ``record = "train"`` logs
``step``, ``loss`` (the plain-forward loss averaged over the probe batches, the same data for every
row, so curves of different estimators compare), ``accuracy`` (where the problem defines one),
``lr``, ``estimator`` (the kind in force), ``grad_norm`` (of the last raw estimate) and
``estimator_seconds`` (time in the estimator since the previous row).

``step.switch``: when the logged loss has not improved on its best for ``step.patience`` rows in a
row, the estimator changes once to ``switch`` (the notes' "train with STE to a local minimum,
then switch to NES"); the optimizer's state (momentum, Adam moments) restarts with it, since the
new estimator's directions have other statistics.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pandas as pd
import torch

from gradsweep.estimators import Estimator, get
from gradsweep.experiments import GeneratorFor, estimator_seed, normalized, timed_estimate
from gradsweep.experiments.descent import decays_before
from gradsweep.optimizers import Optimizer, make as make_optimizer
from gradsweep.spec.validate import complete_sections
from gradsweep.problems.base import Batch, Point, Problem

__all__ = ["run", "fresh_batch"]

def fresh_batch(problem: Problem, step: int) -> Batch:
    """Training batch ``step`` for ``step.batches: fresh``, drawn from the problem's seed.

    A problem may define ``train_batch(step)``; the toy's teacher/student data is drawn here from
    its public ``draw_inputs``/``teacher_outputs`` (inputs from ``generator(seed, "train", step)``,
    apart from the probe's and the pretraining's draws). Problems without data (Rosenbrock, whose
    batches are None) never get here.
    """
    own = getattr(problem, "train_batch", None)
    if callable(own):
        return own(step)
    if hasattr(problem, "draw_inputs") and hasattr(problem, "teacher_outputs"):
        x = problem.draw_inputs("train", step)
        return x, problem.teacher_outputs(x)
    raise ValueError(
        f"step.batches: 'fresh' needs a problem that draws training batches; {type(problem).__name__} "
        "cannot: use 'fixed' (the probe batches in turn)"
    )


def _optimizer(step_cfg: Mapping[str, Any], lr: float) -> Optimizer:
    """A fresh update rule of ``step.optimizer`` (:mod:`gradsweep.optimizers`: torch's rules on point dicts)."""
    return make_optimizer(step_cfg["optimizer"], lr, step_cfg)


def _decayed(estimator: Estimator, base: Mapping[str, Any], factor: float, applies_to: list[str]) -> Estimator:
    """``estimator`` with its decayable parameters (epsilon, sigma) scaled by ``factor``."""
    changed = {k: base[k] * factor for k in ("epsilon", "sigma") if k in applies_to and k in base}
    return get({**base, **changed}) if changed else estimator


def _evaluate(problem: Problem, point: Point, batches: list[Batch]) -> tuple[float, float | None]:
    """Mean plain loss (and accuracy, where the problem has one) over ``batches``."""
    accuracy_of: Callable[..., Any] | None = getattr(problem, "accuracy", None)
    with torch.no_grad():
        losses = [float(problem.loss(point, b)) for b in batches]
        accs = [float(accuracy_of(point, b)) for b in batches] if accuracy_of else None
    return sum(losses) / len(losses), (sum(accs) / len(accs) if accs else None)


def run(
    problem: Problem,
    estimator: Estimator,
    config: Mapping[str, Any],
    *,
    generator_for: GeneratorFor,
) -> pd.DataFrame:
    """Train for ``config["step"]["steps"]`` updates; one ``train`` row per logged step."""
    config = complete_sections(config, "train")
    step_cfg = config["step"]
    steps, log_every = step_cfg["steps"], step_cfg["log_every"]
    decay = step_cfg["decay"]
    applies_to = list(decay["applies_to"]) if decay else []
    layers = problem.select_layers(config.get("params", "all"))
    point = {n: p.detach().clone() for n, p in problem.point().items()}
    probe_batches = list(problem.batches())
    fresh = step_cfg["batches"] == "fresh" and any(b is not None for b in probe_batches)
    if fresh:
        fresh_batch(problem, 0)  # fail before training when the problem cannot draw batches
    lr0 = float(step_cfg["lr"])

    base_est, base_cfg = estimator, estimator.get_config()
    current, factor_in_force = estimator, 1.0
    optimizer = _optimizer(step_cfg, lr0)
    switch_cfg = step_cfg.get("switch")
    best, stale, switched = float("inf"), 0, False

    rows: list[dict[str, Any]] = []
    seconds, grad_norm = 0.0, None
    for step in range(steps + 1):
        factor = decay["factor"] ** decays_before(step, every=decay["every"], after=decay["after"]) if decay else 1.0
        lr = lr0 * factor if "lr" in applies_to else lr0
        if step % log_every == 0 or step == steps:
            loss, accuracy = _evaluate(problem, point, probe_batches)
            rows.append({"record": "train", "step": step, "loss": loss, "accuracy": accuracy, "lr": lr,
                         "estimator": current.name, "grad_norm": grad_norm, "estimator_seconds": seconds})
            seconds = 0.0
            if loss < best:
                best, stale = loss, 0
            else:
                stale += 1
            if switch_cfg is not None and not switched and stale >= step_cfg["patience"]:
                base_est = get(switch_cfg)
                base_cfg, switched, stale = base_est.get_config(), True, 0
                current, factor_in_force = base_est, 1.0
                optimizer = _optimizer(step_cfg, lr)
        if step == steps:
            break
        if factor != factor_in_force:
            current, factor_in_force = _decayed(base_est, base_cfg, factor, applies_to), factor
        optimizer.lr = lr

        if fresh:
            batch = fresh_batch(problem, step)
        else:
            batch = probe_batches[step % len(probe_batches)]
        generator = generator_for("estimate", step, estimator_seed(current))
        grads, spent = timed_estimate(current, problem, point, batch, layers, generator)
        seconds += spent
        direction, grad_norm = normalized(grads)
        used = direction if step_cfg["normalize"] else grads
        optimizer.step(point, {n: used[n].to(point[n].dtype) for n in layers})
    return pd.DataFrame(rows)
