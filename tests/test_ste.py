"""The STE family: every variant's backward is its formula, and the ``ste`` estimator's gradient
is the hand-written backprop of the toy with that surrogate."""

from __future__ import annotations

import math

import pytest
import torch

from gradsweep import estimators
from gradsweep import registry
from gradsweep.problems.surrogates import Clipped, surrogate

SURROGATES = list(registry.kinds("surrogate"))
from gradsweep.problems.quantizers import get_quantizer
from gradsweep.problems.toy_mlp import ToyMLP


def _box(t: float, h: float = 1.0):
    return lambda x: h if abs(x) <= t else 0.0


def _swish(b: float):
    return lambda x: b * (2 - b * x * math.tanh(b * x / 2)) / (1 + math.cosh(b * x))


# (variant, params, g' written independently from SCIENCE.md)
CASES = [
    ("identity", {}, lambda x: 1.0),
    ("clipped", {}, _box(1.0)),
    ("clipped", {"threshold": 0.5}, _box(0.5)),
    ("clipped", {"threshold": 0.1}, _box(0.1)),
    ("steep2", {}, _box(0.5, 2.0)),
    ("polynomial", {}, lambda x: 2 - 2 * abs(x) if abs(x) <= 1 else 0.0),
    ("swish_sign", {}, _swish(5.0)),
    ("swish_sign", {"beta": 2.0}, _swish(2.0)),
]

# boundary values of every window (|x| = 0.1, 0.5, 1), zero, and points around them
POINTS = [-3.0, -1.0 - 1e-9, -1.0, -0.7, -0.5, -0.3, -0.1, -0.05, 0.0, 0.05, 0.1, 0.25, 0.5, 0.5 + 1e-9, 0.9, 1.0, 1.5, 40.0]


def test_cases_cover_every_registered_variant():
    assert {v for v, _, _ in CASES} == set(SURROGATES)


@pytest.mark.parametrize("variant, params, formula", CASES, ids=[f"{v}{p}" for v, p, _ in CASES])
def test_backward_equals_formula(variant, params, formula):
    s = surrogate(variant, **params)
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    dy = torch.linspace(0.5, 2.0, len(POINTS), dtype=torch.float64)
    out = s(x, get_quantizer("binary"))
    out.backward(dy)
    expected = torch.tensor([formula(v) for v in POINTS], dtype=torch.float64) * dy
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    # the forward is the quantizer's, untouched by the surrogate
    assert torch.equal(out.detach(), torch.where(x.detach() >= 0, 1.0, -1.0).double())


@pytest.mark.parametrize("variant", list(SURROGATES))
def test_derivative_is_finite_for_huge_inputs_in_float32(variant):
    x = torch.tensor([-1e6, -100.0, 100.0, 1e6], dtype=torch.float32)
    g = surrogate(variant).derivative(x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("variant", list(SURROGATES))
def test_config_round_trips(variant):
    s = surrogate(variant)
    assert surrogate(**s.get_config()).get_config() == s.get_config()


def test_unknown_variant_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"variant: surrogate: unknown kind 'cliped'; did you mean 'clipped'"):
        surrogate("cliped")


def test_bad_threshold_is_named():
    with pytest.raises(ValueError, match="threshold"):
        Clipped(-1.0)
    with pytest.raises(ValueError, match=r"unexpected parameters \['beta'\]"):
        surrogate("clipped", beta=2.0)


def test_estimator_rejects_unknown_variant_naming_it():
    with pytest.raises(ValueError, match=r"estimator\.variant"):
        estimators.get({"kind": "ste", "variant": "nope"})


def _toy(activation: str = "binary", depth: int = 3) -> ToyMLP:
    return ToyMLP(dim=5, depth=depth, activation=activation, teacher_activation=None, batch_size=64,
                  batches=1, seed=3, dtype=torch.float64, device=torch.device("cpu"))


@pytest.mark.parametrize("variant, params", [("clipped", {}), ("polynomial", {}), ("swish_sign", {"beta": 3.0})])
def test_ste_estimator_equals_hand_written_backprop(variant, params):
    toy = _toy(depth=2)
    point, batch = toy.point(), next(toy.batches())
    est = estimators.get({"kind": "ste", "variant": variant, **params})
    g = est.estimate(toy, point, batch, ["fc1", "fc2"], torch.Generator())

    x, y = batch
    w1, w2 = point["fc1"], point["fc2"]
    z1 = x @ w1.T
    h1 = torch.where(z1 >= 0, 1.0, -1.0).double()
    out = h1 @ w2.T
    dout = 2 * (out - y) / x.shape[0]
    gprime = surrogate(variant, **params).derivative(z1)
    torch.testing.assert_close(g["fc2"], dout.T @ h1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g["fc1"], ((dout @ w2) * gprime).T @ x, rtol=1e-12, atol=1e-14)


def test_ste_on_a_subset_of_layers_returns_only_those():
    toy = _toy()
    g = estimators.get("ste").estimate(toy, toy.point(), next(toy.batches()), ["fc2"], torch.Generator())
    assert list(g) == ["fc2"] and g["fc2"].shape == toy.point()["fc2"].shape


def test_autograd_is_zero_below_a_step_function_and_exact_at_the_top():
    toy = _toy()
    point, batch = toy.point(), next(toy.batches())
    g = estimators.get("autograd").estimate(toy, point, batch, ["fc1", "fc2", "fc3"], torch.Generator())
    assert torch.count_nonzero(g["fc1"]) == 0 and torch.count_nonzero(g["fc2"]) == 0
    ste = estimators.get("ste").estimate(toy, point, batch, ["fc3"], torch.Generator())
    torch.testing.assert_close(g["fc3"], ste["fc3"])


def test_autograd_equals_cdg_for_the_fp_student():
    toy = _toy("fp")
    point, batch = toy.point(), next(toy.batches())
    layers = ["fc1", "fc2", "fc3"]
    exact = estimators.get("autograd").estimate(toy, point, batch, layers, torch.Generator())
    cdg = estimators.get({"kind": "cdg", "epsilon": 1e-5}).estimate(toy, point, batch, layers, torch.Generator())
    for name in layers:
        torch.testing.assert_close(cdg[name], exact[name], rtol=1e-6, atol=1e-9)


def test_ste_equals_autograd_for_the_fp_student():
    toy = _toy("fp")
    point, batch = toy.point(), next(toy.batches())
    a = estimators.get("autograd").estimate(toy, point, batch, ["fc1"], torch.Generator())
    s = estimators.get({"kind": "ste", "variant": "steep2"}).estimate(toy, point, batch, ["fc1"], torch.Generator())
    torch.testing.assert_close(a["fc1"], s["fc1"])
