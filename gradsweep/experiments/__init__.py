"""What one cell does (``probe``, ``descent``, ``train``) and the update rules, declared once.

Each :func:`~gradsweep.declare.experiment` names its implementation (a module's ``run``, see
:mod:`gradsweep.experiments.common`), the top-level spec sections it reads (``measure`` for the
probe, ``step`` for descent and train) and how its cost grows with the estimator's. The update
rules of ``step`` and ``pretrain`` are :func:`~gradsweep.declare.optimizer` kinds. Torch-free.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from gradsweep.declare import (
    Choice, Group, OneOf, Param, ProblemCost, experiment, optimizer, positive_float, positive_int,
)

__all__ = ["KINDS", "MEASURE", "STEP", "DECAY", "get_experiment"]

MEASURE = Group(
    {
        "lrs": Param("number_list", {"logspace": [-5, 0, 6]}, "learning rates of the probe"),
        "reference": OneOf("estimator", doc="estimator whose gradient the cosine is taken against",
                           nullable=True, default=None),
        "evaluate": Param(
            "str", "plain",
            "forward that judges the loss before/after the update: plain sign (for sr_ste: 'fixed sr-STE', "
            "the notes' default), or the estimator's own (sr_ste's stochastic rounding; plain sign for ste, whose "
            "forward is sign; an error for the others)",
            choices=("plain", "estimator"),
        ),
    },
)

DECAY = Group(
    {
        "factor": positive_float("multiply by this", 0.1),
        "every": positive_int("steps between decays", 10000),
        "after": Param("int", 0, "first decay at this step", low=0),
        "applies_to": Param("str_list", ["lr"], "what decays: lr, epsilon, sigma", choices=("lr", "epsilon", "sigma")),
    },
    nullable=True,
    default=None,
)

STEP = Group(
    {
        "lr": positive_float("learning rate", 0.1),
        "normalize": Param("bool", True, "step along the unit-norm estimate"),
        "steps": positive_int("updates", 1000),
        "log_every": positive_int("steps between logged rows", 100),
        "optimizer": Choice("optimizer", "sgd", "update rule"),
        "batches": Param("str", "fresh", "train: a fresh batch per step, or the probe batches in turn", choices=("fresh", "fixed")),
        "decay": DECAY,
        "switch": OneOf("estimator", doc="train: change to this estimator when the loss stops falling",
                        nullable=True, default=None),
        "patience": positive_int("train: logged rows without improvement before switching", 5),
    },
)


def _probe_cost(config: Mapping[str, Any], problem: ProblemCost, evaluations: float) -> float:
    """Per batch: one estimate, then one loss per learning rate."""
    lrs = (config.get("measure") or {}).get("lrs") or [1]
    return problem.batches * (evaluations + len(lrs)) * problem.eval_flops


def _steps_cost(config: Mapping[str, Any], problem: ProblemCost, evaluations: float) -> float:
    """One estimate per update step, on one batch."""
    return int((config.get("step") or {}).get("steps", 1)) * evaluations * problem.eval_flops


KINDS = [
    experiment("probe", impl="gradsweep.experiments.probe:run", sections={"measure": MEASURE}, cost=_probe_cost,
               doc="one estimate per batch, the loss after a step of each lr, cosines to a reference"),
    experiment("descent", impl="gradsweep.experiments.descent:run", sections={"step": STEP}, cost=_steps_cost,
               doc="K normalised steps along the estimate, with a decay schedule"),
    experiment("train", impl="gradsweep.experiments.train:run", sections={"step": STEP}, cost=_steps_cost,
               doc="K optimizer steps with an estimator, switching estimator when the loss stops falling"),
    optimizer("sgd", impl="gradsweep.optimizers:SGD", doc="w <- w - lr g"),
    optimizer("momentum", impl="gradsweep.optimizers:Momentum", doc="SGD with momentum (torch's rule)",
              params={"momentum": Param("float", 0.9, "momentum of 'momentum'", low=0.0, high=1.0)}),
    optimizer("adam", impl="gradsweep.optimizers:Adam", doc="Adam (torch's defaults)"),
]


def get_experiment(name: str) -> Callable[..., Any]:
    """The ``run`` function of experiment ``name`` (imported on first use)."""
    from gradsweep import registry

    return registry.implementation("experiment", name)


def __getattr__(name: str) -> Any:
    # The shared helpers import torch: load them only when asked for.
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)
    common = importlib.import_module("gradsweep.experiments.common")
    if name in common.__all__ or name == "STEP_CHUNK_BYTES":
        return getattr(common, name)
    raise AttributeError(f"module 'gradsweep.experiments' has no attribute {name!r}")
