"""The notes' fine lr scan (1e-5 .. 0.5 in steps of 1e-5) runs batched and equals a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsweep import estimators
from gradsweep.experiments import normalized, probe
from builders import build_toy as build
from gradsweep.seeding import generator

FINE = np.arange(1, 50_001) * 1e-5  # 1e-5, 2e-5, ..., 0.5: the notes' 50,000 lrs


def generator_for(*parts):
    return generator(0, *parts)


@pytest.fixture()
def toy():
    cfg = {"kind": "toy_mlp", "dim": 8, "data": {"batch_size": 64, "batches": 1}}
    return build(cfg, seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir=None)


def direction(problem, estimator):
    batch = next(problem.batches())
    layers = problem.select_layers("all")
    grads = estimator.estimate(problem, problem.point(), batch, layers,
                               generator_for("estimate", 0, estimator.params.get("seed", 0)))
    return batch, normalized(grads)[0]


def test_fine_scan_is_batched_and_equals_a_plain_loop(toy, monkeypatch):
    calls = []
    batched_losses = toy.losses
    monkeypatch.setattr(toy, "losses", lambda *a, **k: calls.append(1) or batched_losses(*a, **k))
    est = estimators.get({"kind": "sr_ste", "samples": 2})
    config = {"params": "all", "measure": {"lrs": FINE.tolist(), "reference": None, "evaluate": "plain"}}
    rows = probe.run(toy, est, config, generator_for=generator_for)

    assert len(rows) == len(FINE) and np.array_equal(rows["lr"].to_numpy(), FINE)
    assert 1 <= len(calls) <= 20  # a few chunks, not one call per lr

    # the plain loop, over every 10th lr of the grid (all 50,000 one by one would cost the suite ~20 s)
    batch, g_hat = direction(toy, est)
    point = toy.point()
    every = slice(None, None, 10)
    with torch.no_grad():
        before = float(toy.loss(point, batch))
        loop = [float(toy.loss({n: p - lr * g_hat[n] for n, p in point.items()}, batch)) for lr in FINE[every]]
    assert rows["loss_before"].iloc[0] == pytest.approx(before, rel=1e-12)
    np.testing.assert_allclose(rows["loss_after"].to_numpy()[every], loop, rtol=1e-10, atol=1e-12)


def test_scan_judged_by_the_stochastic_forward_equals_a_loop(toy):
    lrs = FINE[::100]  # 500 lrs over the same range
    est = estimators.get({"kind": "sr_ste"})
    config = {"params": "all", "measure": {"lrs": lrs.tolist(), "reference": None, "evaluate": "estimator"}}
    rows = probe.run(toy, est, config, generator_for=generator_for)

    batch, g_hat = direction(toy, est)
    point = toy.point()
    surrogate = est.evaluation_surrogate(toy, point, batch, generator_for("evaluate", 0, 0))
    with torch.no_grad():
        loop = [float(toy.loss({n: p - lr * g_hat[n] for n, p in point.items()}, batch, surrogate=surrogate))
                for lr in lrs]
        before = float(toy.loss(point, batch, surrogate=surrogate))
    assert rows["loss_before"].iloc[0] == pytest.approx(before, rel=1e-12)
    np.testing.assert_allclose(rows["loss_after"].to_numpy(), loop, rtol=1e-10, atol=1e-12)
