"""The batched conv perturbation path equals the plain per-weight loop (float64, tiny net)."""

from __future__ import annotations

import pytest
import torch

from gradsweep.problems.base import Problem
from gradsweep.problems.xnor_resnet import XnorResNet, architecture, init_params
from gradsweep.seeding import generator


# tiny tensors on a shared 2-core machine: one thread avoids thread-pool contention
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_problem(weights: str, bn: str = "running", channels: int = 2, size: int = 8,
                 coords_sample: int | None = None) -> XnorResNet:
    """A c=2 net on 8x8 images with non-trivial BN statistics, so activations do flip."""
    dtype = torch.float64
    w, state = init_params(architecture(channels), channels, 0, dtype, torch.device("cpu"))
    g = generator("test_xnor_cdg_state")
    for name in state:
        if name.endswith("running_mean") or name.endswith(".bias"):
            state[name] = 0.1 * torch.randn(state[name].shape, generator=g, dtype=dtype)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(state[name].shape, generator=g, dtype=dtype)
    x = torch.randn(6, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (6,), generator=g)
    return XnorResNet(channels=channels, binary_weights=weights == "binary", weights=w, state=state,
                      probe_batches=[(x, y)], bn=bn, coords_sample=coords_sample)


def plain_loop(problem: XnorResNet, layer: str, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The researchers' method: copy the weights, move one, run the whole network."""
    point, batch = problem.point(), next(problem.batches())
    out = []
    for i, d in zip(index.tolist(), delta.tolist()):
        moved = {n: t.clone() for n, t in point.items()}
        moved[layer].view(-1)[i] += d
        out.append(problem.loss(moved, batch))
    return torch.stack(out)


@pytest.mark.parametrize("weights", ["binary", "fp"])
@pytest.mark.parametrize("layer", ["conv:1", "conv:2", "conv:8", "conv:-2", "conv:-1"])
def test_batched_conv_perturbations_equal_the_plain_loop(weights: str, layer: str) -> None:
    problem = tiny_problem(weights)
    name = problem.select_layers([layer])[0]
    n = problem.point()[name].numel()
    # 40 seeded coordinates, each moved both ways
    index = torch.randperm(n, generator=generator("test_xnor_cdg_index", layer))[:40]
    k = index.numel()
    index = index.repeat(2)
    delta = torch.cat([torch.full((k,), 0.3), torch.full((k,), -0.3)]).double()
    expected = plain_loop(problem, name, index, delta)
    got = problem.perturbed_losses(problem.point(), next(problem.batches()), name, index, delta)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert (expected != problem.loss(problem.point(), next(problem.batches()))).any(), "no perturbation changed the loss"


@pytest.mark.parametrize("weights", ["binary", "fp"])
def test_batch_statistics_are_taken_per_perturbed_copy(weights: str) -> None:
    problem = tiny_problem(weights, bn="batch")
    for layer in ("layer1.0.conv1", "layer3.1.conv2"):
        n = problem.point()[layer].numel()
        index = torch.arange(0, n, max(1, n // 30))
        delta = torch.full(index.shape, 0.5, dtype=torch.float64)
        got = problem.perturbed_losses(problem.point(), next(problem.batches()), layer, index, delta)
        torch.testing.assert_close(got, plain_loop(problem, layer, index, delta), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", ["layer2.1.conv2", "layer2.0.conv1"])
def test_small_chunks_give_the_same_losses(layer: str) -> None:
    problem = tiny_problem("fp")
    index = torch.arange(problem.point()[layer].numel())
    delta = torch.full(index.shape, 0.2, dtype=torch.float64)
    batch = next(problem.batches())
    whole = problem.perturbed_losses(problem.point(), batch, layer, index, delta)
    problem.chunk_bytes = 1  # one perturbation (or one flipped image) per chunk
    problem._prefix_cache = None
    torch.testing.assert_close(problem.perturbed_losses(problem.point(), batch, layer, index, delta), whole)
    torch.testing.assert_close(whole, plain_loop(problem, layer, index, delta), rtol=1e-10, atol=1e-12)


def test_changes_are_exactly_zero_where_no_activation_flips() -> None:
    problem = tiny_problem("fp")
    layer = "layer1.0.conv1"
    batch = next(problem.batches())
    index = torch.arange(problem.point()[layer].numel())
    tiny = torch.full(index.shape, 1e-12, dtype=torch.float64)
    changes = problem.perturbed_loss_changes(problem.point(), batch, layer, index, tiny)
    assert torch.count_nonzero(changes) < index.numel()
    base = problem.loss(problem.point(), batch)
    torch.testing.assert_close(problem.perturbed_losses(problem.point(), batch, layer, index, tiny), base + changes)


def test_sampled_coordinates_map_back_to_the_layer() -> None:
    problem = tiny_problem("binary", coords_sample=10)
    layer = "layer1.1.conv2"
    point = problem.point()
    assert point[layer].shape == (10,)
    assert point["fc"].shape == (10,)  # every layer with more than 10 weights is sampled
    full = problem.weights[layer].flatten()
    torch.testing.assert_close(point[layer], full[problem.subsets[layer]])
    index = torch.arange(10)
    delta = torch.full((10,), -0.4, dtype=torch.float64)
    batch = next(problem.batches())
    got = problem.perturbed_losses(point, batch, layer, index, delta)
    torch.testing.assert_close(got, plain_loop(problem, layer, index, delta), rtol=1e-10, atol=1e-12)


def test_layers_other_than_binary_convs_use_the_generic_path() -> None:
    problem = tiny_problem("binary")
    batch = next(problem.batches())
    index = torch.arange(0, 54, 5)
    delta = torch.full(index.shape, 0.1, dtype=torch.float64)
    got = problem.perturbed_losses(problem.point(), batch, "stem", index, delta)
    want = Problem.perturbed_losses(problem, problem.point(), batch, "stem", index, delta)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, plain_loop(problem, "stem", index, delta), rtol=1e-10, atol=1e-12)
