"""The ``train`` experiment: deterministic, falls on the raw toy, switches estimators, decays."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch

from gradsweep import estimators
from gradsweep.experiments import train
from gradsweep.problems.rosenbrock import Rosenbrock
from builders import build_toy as build
from gradsweep.seeding import generator


def toy(dim: int = 8):
    cfg = {"kind": "toy_mlp", "dim": dim, "data": {"batch_size": 512, "batches": 2}}
    return build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=None)


def step_config(**step: Any) -> dict[str, Any]:
    base = {"lr": 0.02, "normalize": True, "steps": 60, "log_every": 10, "optimizer": "adam",
            "batches": "fresh", "decay": None, "switch": None, "patience": 5}
    return {"seed": 0, "params": "all", "step": {**base, **step}}


def run(problem, estimator="ste", **step: Any) -> pd.DataFrame:
    return train.run(problem, estimators.get(estimator), step_config(**step),
                     generator_for=lambda *parts: generator(0, *parts))


def test_logs_every_log_every_steps_and_the_last():
    rows = run(toy(), steps=25, log_every=10)
    assert rows["step"].tolist() == [0, 10, 20, 25]
    assert (rows["record"] == "train").all() and (rows["estimator"] == "ste").all()
    assert rows["accuracy"].isna().all()  # a regression problem has no accuracy


def test_deterministic():
    a = run(toy(), estimator={"kind": "random_ste", "randomize": "noise"}, steps=30).drop(columns="estimator_seconds")
    b = run(toy(), estimator={"kind": "random_ste", "randomize": "noise"}, steps=30).drop(columns="estimator_seconds")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("optimizer,batches", [("sgd", "fresh"), ("momentum", "fixed"), ("adam", "fresh")])
def test_loss_falls_on_the_raw_toy_with_ste(optimizer: str, batches: str):
    rows = run(toy(), optimizer=optimizer, batches=batches, lr=0.05 if optimizer == "sgd" else 0.02)
    assert rows["loss"].iloc[-1] < 0.7 * rows["loss"].iloc[0]


def test_switches_estimator_when_the_loss_stops_falling():
    # autograd's gradient through sign is zero for fc1: the loss cannot move until the switch
    rows = train.run(
        toy(), estimators.get("autograd"),
        {**step_config(switch={"kind": "ste"}, patience=2, steps=80), "params": ["fc1"]},
        generator_for=lambda *parts: generator(0, *parts),
    )
    names = rows["estimator"].tolist()
    assert names[:3] == ["autograd"] * 3 and set(names[3:]) == {"ste"}
    assert rows["loss"].iloc[:3].nunique() == 1
    assert rows["loss"].iloc[-1] < rows["loss"].iloc[0]


def test_decay_scales_lr_and_the_estimators_sigma():
    decay = {"factor": 0.5, "every": 10, "after": 20, "applies_to": ["lr", "sigma"]}
    problem = Rosenbrock("pairs", torch.tensor([-1.0, 2.0, 0.5, 0.5], dtype=torch.float64),
                         dtype=torch.float64, device=torch.device("cpu"))
    seen: list[float] = []
    nes = estimators.get({"kind": "nes", "sigma": 0.1, "samples": 20})
    original = type(nes).estimate

    def spy(self, *args, **kw):
        seen.append(self.sigma)
        return original(self, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(nes), "estimate", spy)
        rows = train.run(problem, nes, step_config(lr=0.01, steps=40, log_every=10, decay=decay),
                         generator_for=lambda *parts: generator(0, *parts))
    assert rows["lr"].tolist() == pytest.approx([0.01, 0.01, 0.005, 0.0025, 0.00125])
    assert seen[:20] == [0.1] * 20 and seen[20] == pytest.approx(0.05) and seen[30] == pytest.approx(0.025)


def test_bad_decay_target_names_the_key():
    decay = {"factor": 0.5, "every": 10, "after": 0, "applies_to": ["momentum"]}
    with pytest.raises(ValueError, match="step.decay.applies_to.*momentum"):
        run(toy(), decay=decay)


def test_run_cell_dispatches_a_train_cell():
    from gradsweep.cell import run_cell

    rows = run_cell({
        "experiment": "train",
        "problem": {"kind": "toy_mlp", "dim": 4, "data": {"batch_size": 256, "batches": 1}},
        "estimator": {"kind": "sr_ste", "samples": 2},
        "step": {"steps": 4, "log_every": 2, "optimizer": "momentum"},
        "device": "cpu",
    })
    assert rows["record"].tolist() == ["train"] * 3 and rows["step"].tolist() == [0, 2, 4]
    assert (rows["estimator"] == "sr_ste").all() and rows["loss"].notna().all()
