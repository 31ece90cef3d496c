"""CDG and NES: the batched paths equal the plain loops, and both estimate the right gradient."""

from __future__ import annotations

import math

import pytest
import torch

from gradsweep import estimators, seeding
from gradsweep.estimators.nes import NES, centered_ranks
from gradsweep.problems.base import Problem
from builders import build_rosenbrock
from gradsweep.problems.toy_mlp import ToyMLP
from tests.reference_loops import cdg_plain, nes_plain

TINY_CHUNK = 20_000  # bytes: forces one coordinate per chunk and many pair chunks on the toys below


def toy(activation: str, *, depth: int = 3, dim: int = 5, batch: int = 400, dtype=torch.float64, seed: int = 0):
    problem = ToyMLP(
        dim=dim, depth=depth, activation=activation, teacher_activation=None,
        batch_size=batch, batches=1, seed=seed, dtype=dtype, device=torch.device("cpu"),
    )
    return problem, problem.point(), next(problem.batches())


def max_relative_difference(got: dict, want: dict) -> float:
    """max |got - want| over every layer, relative to the largest |want|."""
    scale = max(float(w.abs().max()) for w in want.values())
    return max(float((got[n] - want[n]).abs().max()) for n in want) / max(scale, 1e-300)


# -- CDG: batched == plain loop -----------------------------------------------------------------

@pytest.mark.parametrize("activation", ["fp", "binary", "ternary", "2bit"])
@pytest.mark.parametrize("mode", ["central", "forward"])
@pytest.mark.parametrize("depth", [3, 4])
def test_batched_cdg_equals_the_plain_loop_in_float64(activation, mode, depth):
    problem, point, batch = toy(activation, depth=depth)
    layers = problem.layer_names()
    for epsilon in (0.5, 0.05):
        want = cdg_plain(problem, point, batch, layers, epsilon, mode)
        got = estimators.get({"kind": "cdg", "epsilon": epsilon, "mode": mode}).estimate(
            problem, point, batch, layers, torch.Generator())
        assert max_relative_difference(got, want) < 1e-9
        assert any(float(g.abs().max()) > 0 for g in want.values())  # something to compare


def test_cdg_does_not_depend_on_the_memory_budget():
    problem, point, batch = toy("binary", depth=4)
    cdg = estimators.get({"kind": "cdg", "epsilon": 0.3})
    roomy = cdg.estimate(problem, point, batch, problem.layer_names(), torch.Generator())
    problem.chunk_bytes = TINY_CHUNK
    tight = cdg.estimate(problem, point, batch, problem.layer_names(), torch.Generator())
    assert max_relative_difference(tight, roomy) < 1e-12


def test_batched_cdg_matches_the_plain_loop_in_float32_within_rounding():
    """Both sides round; the plain loop's numerator L(w+) - L(w-) carries a few ulps of L, /eps."""
    problem, point, batch = toy("binary", dtype=torch.float32)
    epsilon = 0.1
    want = cdg_plain(problem, point, batch, problem.layer_names(), epsilon)
    got = estimators.get({"kind": "cdg", "epsilon": epsilon}).estimate(
        problem, point, batch, problem.layer_names(), torch.Generator())
    loss = float(problem.loss(point, batch))
    tolerance = 16 * torch.finfo(torch.float32).eps * loss / epsilon
    assert max(float((got[n] - want[n]).abs().max()) for n in want) < tolerance


@pytest.mark.parametrize("activation", ["fp", "ternary", "2bit"])
def test_losses_of_arbitrary_coordinates_and_steps_equal_the_plain_loop(activation):
    problem, point, batch = toy(activation, depth=4)
    gen = seeding.generator("coordinates")
    base = problem.loss(point, batch)
    for layer in problem.layer_names():
        w = point[layer]
        index = torch.randint(0, w.numel(), (30,), generator=gen)
        delta = torch.randn(30, generator=gen, dtype=w.dtype)
        want = []
        for i, d in zip(index.tolist(), delta.tolist()):
            moved = point[layer].clone()
            moved.view(-1)[i] += d
            want.append(problem.loss({**point, layer: moved}, batch))
        want = torch.stack(want)
        changes = problem.perturbed_loss_changes(point, batch, layer, index, delta)
        torch.testing.assert_close(changes, want - base, rtol=1e-9, atol=1e-12)
        losses = problem.perturbed_losses(point, batch, layer, index, delta)
        torch.testing.assert_close(losses, want, rtol=1e-12, atol=1e-12)


def test_the_kept_base_forward_follows_an_in_place_change_of_the_point():
    problem, point, batch = toy("binary", depth=4)
    index, delta = torch.arange(10), torch.full((10,), 0.3, dtype=torch.float64)
    problem.perturbed_loss_changes(point, batch, "fc2", index, delta)  # keeps the base forward
    point["fc1"].mul_(-1.5)  # the same tensor, changed in place
    got = problem.perturbed_loss_changes(point, batch, "fc2", index, delta)
    fresh = {n: w.clone() for n, w in point.items()}
    want = problem.perturbed_loss_changes(fresh, batch, "fc2", index, delta)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_autograd_equals_cdg_for_the_fp_student():
    """An fp student's loss is quadratic in each single weight, so central differences are exact."""
    problem, point, batch = toy("fp", dim=6)
    layers = problem.layer_names()
    exact = estimators.get("autograd").estimate(problem, point, batch, layers, torch.Generator())
    cdg = estimators.get({"kind": "cdg", "epsilon": 0.1}).estimate(problem, point, batch, layers, torch.Generator())
    assert max_relative_difference(cdg, exact) < 1e-9


# -- CDG on Rosenbrock ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["pairs", "chain"])
def test_cdg_matches_rosenbrock_analytic_gradient(variant):
    problem = build_rosenbrock({"variant": variant, "n": 100, "x0": {"randint": [-10, 10]}},
                               seed=3, dtype=torch.float64, device=torch.device("cpu"))
    point = problem.point()
    got = estimators.get({"kind": "cdg", "epsilon": 1e-5}).estimate(problem, point, None, ["x"], torch.Generator())
    want = problem.analytic_gradient(point["x"])
    assert float((got["x"] - want).norm() / want.norm()) < 1e-6


# -- NES: batched == per-sample loop ------------------------------------------------------------

@pytest.mark.parametrize("activation", ["fp", "binary", "ternary"])
@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("shaping", ["none", "centered_rank"])
def test_batched_nes_equals_the_per_sample_loop(activation, antithetic, shaping):
    problem, point, batch = toy(activation, batch=200)
    problem.chunk_bytes = TINY_CHUNK * 20  # several direction chunks and several loss chunks
    layers = ["fc1", "fc3"]
    nes = estimators.get({"kind": "nes", "sigma": 0.2, "samples": 100, "antithetic": antithetic,
                          "shaping": shaping, "seed": 4})
    u = nes.directions(point, layers, seeding.generator("nes-test"))
    want = nes_plain(problem, point, batch, layers, u, nes.sigma, antithetic, shaping)
    got = nes.estimate(problem, point, batch, layers, seeding.generator("nes-test"))
    assert set(got) == set(layers)
    assert max_relative_difference(got, want) < 1e-9


@pytest.mark.parametrize("activation", ["fp", "binary", "ternary", "2bit"])
@pytest.mark.parametrize("layers", [["fc1"], ["fc2", "fc4"], ["fc3"], ["fc4"], ["fc1", "fc2", "fc3", "fc4"]])
def test_batched_losses_equal_one_forward_per_point_whatever_the_tile(activation, layers):
    """Every perturbed-layer pattern, and tiles that split the batch rows (with a short last tile)."""
    problem, point, batch = toy(activation, depth=4, dim=6, batch=333)
    gen = seeding.generator("losses", activation, *layers)
    deltas = {n: 0.3 * torch.randn((21, *point[n].shape), generator=gen, dtype=point[n].dtype) for n in layers}
    want = torch.stack([
        problem.loss({**point, **{n: point[n] + deltas[n][k] for n in layers}}, batch) for k in range(21)
    ])
    for budget in (1 << 30, 4_000, 40_000):  # one tile; a few rows per tile; some points per tile
        problem.chunk_bytes = budget
        torch.testing.assert_close(problem.losses(point, batch, deltas), want, rtol=1e-12, atol=1e-14)


def test_nes_directions_depend_on_seed_and_generator_but_not_on_sample_count():
    problem, point, _ = toy("binary")
    layers = problem.layer_names()

    def draw(samples: int, seed: int, stream: str) -> torch.Tensor:
        nes = estimators.get({"kind": "nes", "samples": samples, "seed": seed})
        return nes.directions(point, layers, seeding.generator(stream))

    few, many = draw(70, 0, "a"), draw(200, 0, "a")
    assert torch.equal(few, many[:70])
    assert not torch.equal(draw(70, 1, "a"), few)
    assert not torch.equal(draw(70, 0, "b"), few)


def test_nes_advances_the_generator_so_successive_estimates_differ():
    problem, point, batch = toy("fp")
    nes = estimators.get({"kind": "nes", "samples": 20, "sigma": 0.1})
    g = seeding.generator("descent")
    first = nes.estimate(problem, point, batch, ["fc1"], g)["fc1"]
    second = nes.estimate(problem, point, batch, ["fc1"], g)["fc1"]
    assert not torch.equal(first, second)


def test_centered_ranks_scale_to_half_and_share_ties():
    ranks = centered_ranks(torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0]))
    assert ranks.tolist() == [0.25, -0.5, -0.125, -0.125, 0.5]


class IsotropicQuadratic(Problem):
    """``f(x) = a/2 |x - c|^2``; its batched ``losses`` is the base class's vmap path."""

    def __init__(self, a: float, x: torch.Tensor, c: torch.Tensor) -> None:
        self.a, self.x, self.c = a, x, c
        self.dtype, self.device = x.dtype, x.device

    def point(self):
        return {"x": self.x}

    def batches(self):
        yield None

    def loss(self, point, batch, *, surrogate=None):
        return self.a / 2 * ((point["x"] - self.c) ** 2).sum()


@pytest.mark.parametrize("antithetic", [False, True])
def test_nes_on_a_quadratic_matches_the_gradient_within_its_standard_error(antithetic):
    """NES is unbiased on a quadratic; its error is bounded through its exact variance.

    With ``f(x + s u) = f0 + s g.u + s^2 a/2 |u|^2`` (u ~ N(0, I_P), s = sigma, g = a (x - c)),
    one sample's term is ``X = f(x + s u) u / s``. Odd Gaussian moments vanish, so E[X] = g, and
    with E[u_i^2] = 1, E[(g.u)^2 u_i^2] = |g|^2 + 2 g_i^2, E[|u|^2 u_i^2] = P + 2 and
    E[|u|^4 u_i^2] = (P + 2)(P + 4):

        sum_i Var X_i = P f0^2 / s^2 + (P + 1) |g|^2 + a f0 P (P + 2) + s^2 a^2 P (P + 2)(P + 4) / 4.

    Antithetic pairs cancel the even terms exactly, X = (g.u) u, so sum_i Var X_i = (P + 1) |g|^2.
    The mean of n samples has E|g_hat - g|^2 = V / n; by Chebyshev |g_hat - g| exceeds 5 sqrt(V / n)
    with probability at most 1/25 for a random seed (the seed here is fixed). The bound is kept
    well below |g| so that a wrong scale or sign would fail.
    """
    dim, a, sigma, n = 4, 2.0, 0.5, 50_000
    c = torch.zeros(dim, dtype=torch.float64)
    x = torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64)
    problem = IsotropicQuadratic(a, x, c)
    g = a * (x - c)
    f0 = a / 2 * float(((x - c) ** 2).sum())
    if antithetic:
        variance = (dim + 1) * float(g @ g)
    else:
        variance = (dim * f0**2 / sigma**2 + (dim + 1) * float(g @ g) + a * f0 * dim * (dim + 2)
                    + sigma**2 * a**2 * dim * (dim + 2) * (dim + 4) / 4)
    bound = 5 * math.sqrt(variance / n)
    assert bound < 0.3 * float(g.norm())

    nes = estimators.get({"kind": "nes", "sigma": sigma, "samples": n, "antithetic": antithetic})
    got = nes.estimate(problem, problem.point(), None, ["x"], seeding.generator("quadratic"))["x"]
    assert float((got - g).norm()) < bound


# -- bad parameters -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "config, name",
    [
        ({"kind": "cdg", "epsilon": -0.1}, "epsilon"),
        ({"kind": "cdg", "epsilon": 0.0}, "epsilon"),
        ({"kind": "cdg", "mode": "backward"}, "mode"),
        ({"kind": "nes", "samples": 0}, "samples"),
        ({"kind": "nes", "sigma": -1.0}, "sigma"),
        ({"kind": "nes", "shaping": "ranks"}, "shaping"),
    ],
)
def test_bad_parameters_raise_one_error_naming_the_parameter(config, name):
    with pytest.raises(ValueError, match=name):
        estimators.get(config)


@pytest.mark.parametrize("kind", ["cdg", "nes", "autograd", "ste"])
def test_an_unknown_layer_is_one_error_naming_it_for_every_estimator(kind):
    problem, point, batch = toy("binary")
    with pytest.raises(ValueError, match=r"params: unknown layer 'fc9'; valid layers: fc1, fc2, fc3"):
        estimators.get(kind).estimate(problem, point, batch, ["fc1", "fc9"], torch.Generator())


def test_the_problem_names_an_unknown_layer_too():
    problem, point, batch = toy("binary")
    with pytest.raises(ValueError, match="fc9"):
        problem.perturbed_loss_changes(point, batch, "fc9", torch.tensor([0]), torch.tensor([0.1]))


def test_nes_is_registered_with_its_class():
    assert isinstance(estimators.get("nes"), NES)
