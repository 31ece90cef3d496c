"""Rosenbrock: the function, its analytic gradient, x0, batched losses, CDG against the gradient,
and the notes' descent (normalised CDG, lr 0.1, eps 0.01) going downhill step after step."""

from __future__ import annotations

import pytest
import torch

from gradsweep import estimators
from gradsweep.cell import run_cell
from builders import build_rosenbrock as build
from gradsweep.problems.rosenbrock import Rosenbrock

F64 = torch.float64
CPU = torch.device("cpu")


def rosen(variant: str = "pairs", n: int = 6, x0=None, seed: int = 0) -> Rosenbrock:
    cfg = {"kind": "rosenbrock", "variant": variant, "n": n}
    if x0 is not None:
        cfg["x0"] = x0
    return build(cfg, seed=seed, dtype=F64, device=CPU)


def reference_f(x: list[float], variant: str) -> float:
    """The SCIENCE.md formulas, written as plain loops."""
    if variant == "pairs":
        return sum(100 * (x[i] ** 2 - x[i + 1]) ** 2 + (x[i] - 1) ** 2 for i in range(0, len(x), 2))
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


@pytest.mark.parametrize("variant", ["pairs", "chain"])
def test_value_matches_the_formula_and_is_zero_at_ones(variant):
    x = [0.5, -1.2, 2.0, 0.3, -0.7, 1.1]
    p = rosen(variant, x0=x)
    assert p.loss(p.point(), None).item() == pytest.approx(reference_f(x, variant), rel=1e-14)
    assert p.loss({"x": torch.ones(6, dtype=F64)}, None).item() == 0.0


@pytest.mark.parametrize("variant", ["pairs", "chain"])
def test_analytic_gradient_matches_autodiff(variant):
    p = rosen(variant, n=8)
    x = p.point()["x"].clone().requires_grad_()
    p.loss({"x": x}, None).backward()
    torch.testing.assert_close(p.analytic_gradient(x.detach()), x.grad, rtol=1e-13, atol=0)


@pytest.mark.parametrize("variant", ["pairs", "chain"])
def test_batched_losses_equal_one_by_one(variant):
    p = rosen(variant)
    deltas = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    batched = p.losses(p.point(), None, {"x": deltas})
    single = torch.stack([p.loss({"x": p.point()["x"] + d}, None) for d in deltas])
    torch.testing.assert_close(batched, single, rtol=1e-15, atol=0)


@pytest.mark.parametrize("variant", ["pairs", "chain"])
def test_central_cdg_matches_the_analytic_gradient(variant):
    p = rosen(variant, n=100, seed=4)
    x = p.point()["x"]
    g = estimators.get({"kind": "cdg", "epsilon": 1e-6}).estimate(p, p.point(), None, ["x"], torch.Generator())["x"]
    exact = p.analytic_gradient(x)
    assert float((g - exact).norm() / exact.norm()) < 1e-6


def test_randint_start_is_seeded_and_in_range():
    a, b, c = rosen(n=100, seed=0), rosen(n=100, seed=0), rosen(n=100, seed=1)
    x = a.point()["x"]
    assert torch.equal(x, b.point()["x"]) and not torch.equal(x, c.point()["x"])
    assert x.dtype == F64 and torch.equal(x, x.round())
    assert x.min() >= -10 and x.max() <= 10
    assert set(rosen(n=200, x0={"randint": [-1, 1]}).point()["x"].tolist()) == {-1.0, 0.0, 1.0}


def test_bad_n_and_x0_are_named():
    with pytest.raises(ValueError, match=r"problem: n must be even for variant pairs \(x_\(2i-1\), x_\(2i\)\), got n = 7"):
        rosen("pairs", n=7)
    assert rosen("chain", n=7).n == 7
    with pytest.raises(ValueError, match=r"problem: x0 must have n = 4 numbers, got 3"):
        rosen(n=4, x0=[1, 2, 3])
    with pytest.raises(ValueError, match=r"problem.x0: expected a list of numbers or \{randint: \[lo, hi\]\}, got a mapping"):
        rosen(n=4, x0={"uniform": [0, 1]})


def test_one_batch_of_nothing():
    assert list(rosen().batches()) == [None]


def test_notes_descent_lowers_f_at_every_logged_step_from_a_random_integer_start():
    """SCIENCE.md: lr 0.1, eps 0.01, normalised CDG, x0 random integers in [-10, 10], f logged
    every 100 steps as in the notes. (Step by step, f falls for the first ~500 steps; after that
    the fixed step length 0.1 overshoots the valley floor and f zigzags by ~2% from one step to
    the next while still falling over every 100: the reason the notes decay lr later.)"""
    table = run_cell({
        "experiment": "descent",
        "problem": {"kind": "rosenbrock", "variant": "pairs", "n": 100, "x0": {"randint": [-10, 10]}},
        "estimator": {"kind": "cdg", "epsilon": 0.01},
        "step": {"lr": 0.1, "normalize": True, "steps": 1000, "log_every": 100},
        "seed": 0,
    })
    assert table["step"].tolist() == list(range(0, 1001, 100))
    loss = table["loss"].to_numpy()
    assert (loss[1:] < loss[:-1]).all()
    assert loss[-1] < 1e-4 * loss[0]
