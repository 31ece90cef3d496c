"""sr-STE: the stochastic-rounding activation and the estimator built on it."""

from __future__ import annotations

import pytest
import torch

from gradsweep import estimators
from gradsweep.estimators.sr_ste import (
    StochasticRounding, relaxed_bernoulli, scale_preactivation, surrogate_losses,
)
from gradsweep.estimators.ste import Ste
from builders import build_toy as build
from gradsweep.seeding import generator

# exact boundaries included: 0, +-1 (edge of the STE window), the extremes that scale to +-1
X = torch.tensor([-3.0, -1.0, -0.5, -1e-6, 0.0, 1e-6, 0.25, 1.0, 1.5, 2.0])


def toy(activation: str = "binary", batch_size: int = 256):
    cfg = {"kind": "toy_mlp", "dim": 8, "activation": activation, "data": {"batch_size": batch_size, "batches": 2}}
    return build(cfg, seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir=None)


def test_scaling_maps_max_to_one_min_to_minus_one_and_keeps_signs():
    s = scale_preactivation(X)
    assert s.max() == 1.0 and s.min() == -1.0
    assert torch.equal(torch.sign(s), torch.sign(X))
    assert torch.allclose(s[X > 0], X[X > 0] / 2.0) and torch.allclose(s[X < 0], X[X < 0] / 3.0)
    only_negative = scale_preactivation(torch.tensor([-2.0, -1.0]))
    assert torch.equal(only_negative, torch.tensor([-1.0, -0.5]))


@pytest.mark.parametrize("tau", [1e-4, 0.1, 1.0, 10.0])
def test_forward_takes_only_values_plus_minus_one(tau: float):
    sr = StochasticRounding(tau, generator(0, "test"))
    out = sr(X.repeat(1000, 1), None)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("tau", [0.05, 1.0, 5.0])
def test_rounded_mean_is_the_scaled_activation(tau: float):
    # Bernoulli(p) on {-1, +1} has mean 2p - 1 = s(A), whatever the temperature
    rows = 20000
    out = StochasticRounding(tau, generator(1, "mean"))(X.repeat(rows, 1), None)
    se = 4 / rows ** 0.5  # 4 standard errors of a +-1 variable
    assert torch.allclose(out.mean(0), scale_preactivation(X), atol=se)


def test_relaxed_sample_mean_tends_to_p_as_tau_falls():
    p = (scale_preactivation(X) + 1) / 2
    u = torch.rand((20000, X.numel()), generator=generator(2, "relaxed"), dtype=torch.float64)
    errors = [float((relaxed_bernoulli(p, tau, u).mean(0) - p).abs().max()) for tau in (10.0, 1.0, 0.1, 0.01)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.02 < errors[0]


def test_gradient_is_vanilla_ste():
    x = X.clone().requires_grad_(True)
    upstream = torch.linspace(-1, 1, X.numel())
    (StochasticRounding(0.1, generator(0, "g"))(x, None) * upstream).sum().backward()
    assert torch.equal(x.grad, upstream * (X.abs() <= 1).to(X.dtype))


def test_sampling_reproducible_from_seed():
    a = StochasticRounding(0.1, generator(7, "s"))(X.repeat(50, 1), None)
    b = StochasticRounding(0.1, generator(7, "s"))(X.repeat(50, 1), None)
    c = StochasticRounding(0.1, generator(8, "s"))(X.repeat(50, 1), None)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_estimate_is_the_mean_of_n_sampled_ste_gradients_and_reproducible():
    problem = toy()
    point, batch = problem.point(), next(problem.batches())
    layers = problem.select_layers("all")
    est = estimators.get({"kind": "sr_ste", "tau": 0.5, "samples": 3})
    g1 = est.estimate(problem, point, batch, layers, generator(0, "estimate"))
    g2 = est.estimate(problem, point, batch, layers, generator(0, "estimate"))
    assert all(torch.equal(g1[n], g2[n]) for n in layers)

    gen = generator(0, "estimate")
    single = estimators.get({"kind": "sr_ste", "tau": 0.5, "samples": 1})
    draws = [single.estimate(problem, point, batch, layers, gen) for _ in range(3)]
    for n in layers:
        assert torch.allclose(g1[n], sum(d[n] for d in draws) / 3)
    assert not torch.equal(draws[0]["fc1"], draws[1]["fc1"])  # each sample rounds afresh


def test_evaluation_surrogate_replays_one_draw_for_every_point():
    problem = toy()
    point, batch = problem.point(), next(problem.batches())
    est = estimators.get({"kind": "sr_ste"})
    surrogate = est.evaluation_surrogate(problem, point, batch, generator(0, "evaluate"))
    zero = {"fc1": torch.zeros(4, 8, 8, dtype=torch.float64)}
    judged = surrogate_losses(problem, point, batch, zero, surrogate)
    assert torch.allclose(judged, judged[0].expand(4))
    assert torch.allclose(judged[0], problem.loss(point, batch, surrogate=surrogate))
    assert float(judged[0]) != float(problem.loss(point, batch))  # not the plain forward


def test_refuses_a_non_binary_activation():
    problem = toy("ternary")
    est = estimators.get({"kind": "sr_ste"})
    with pytest.raises(ValueError, match="activation 'binary'.*'ternary'"):
        est.estimate(problem, problem.point(), next(problem.batches()), ["fc1"], generator(0))


def test_bad_temperature_names_the_key():
    with pytest.raises(ValueError, match="tau"):
        estimators.get({"kind": "sr_ste", "tau": 0})


def test_many_samples_approach_the_ste_direction_at_large_batch():
    # with a large batch, the average over roundings lands near vanilla STE's direction
    problem = toy(batch_size=4096)
    point, batch = problem.point(), next(problem.batches())
    layers = ["fc1", "fc2", "fc3"]
    ste = Ste().estimate(problem, point, batch, layers, generator(0))
    sr = estimators.get({"kind": "sr_ste", "samples": 10}).estimate(problem, point, batch, layers, generator(0))
    flat = lambda g: torch.cat([g[n].flatten() for n in layers])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(ste), flat(sr), dim=0) > 0.5
