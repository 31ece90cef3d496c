"""A user's own torch.nn.Module as a problem: the quantiser modules, the problem's evaluations,
CDG's chain fast path against a plain per-coordinate loop, and every estimator family on it.

The reference loops here never go through :class:`TorchModuleProblem`: they move one weight of a
deep copy of the module in place and call the module as a user would.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsweep.estimators import get
from gradsweep.problems.surrogates import Clipped
from gradsweep.nn import BinaryConv2d, BinaryLinear, Sign, Ternary, binary_weight, surrogate_scope
from gradsweep.problems.base import Problem
from gradsweep.problems.torch_module import TorchModuleProblem, build, builtin_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tensors: threads only contend

# ---------------------------------------------------------------------------------------------
# test-local model factories (a plugin would register these)


class SmallBinaryCNN(nn.Module):
    """fp stem, two binary 3x3 convs with BN and sign, pooling, fp classifier; a class with its
    own forward, as users write them."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.act0 = Sign()
        self.conv1 = BinaryConv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = Sign()
        self.conv2 = BinaryConv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.act2 = Sign()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def binary_mlp(dim: int = 6, hidden: int = 8, out: int = 2) -> nn.Module:
    """An nn.Sequential MLP: binary linear layers, BN, sign, a real-valued regression head."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), Sign(),
        BinaryLinear(hidden, hidden), nn.BatchNorm1d(hidden), Sign(),
        nn.Linear(hidden, out),
    )


class Residual(nn.Module):
    """A skip connection around a binary conv: no chain through it (the generic path)."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.conv = BinaryConv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = Sign()
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x + self.act(self.bn(self.conv(x)))).mean(dim=(2, 3)))


def _randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine away from (0, 1): every BN term of the fast path matters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return module


def cnn_problem(batch_size: int = 8) -> tuple[TorchModuleProblem, nn.Module]:
    torch.manual_seed(0)
    module = _randomise_bn(SmallBinaryCNN())
    batches = builtin_batches("synthetic_images", {"image_size": 6, "batch_size": batch_size, "batches": 1}, seed=0)
    reference = copy.deepcopy(module).double().eval()
    return TorchModuleProblem(module, batches, dtype=torch.float64), reference


def mlp_problem() -> tuple[TorchModuleProblem, nn.Module]:
    torch.manual_seed(1)
    module = _randomise_bn(binary_mlp())
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(2))
    y = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    reference = copy.deepcopy(module).double().eval()
    return TorchModuleProblem(module, [(x, y)], dtype=torch.float64), reference


def some_coordinates(n: int, k: int = 40, seed: int = 0) -> torch.Tensor:
    """At most ``k`` seeded coordinates of ``n`` (the plain loop is slow on a shared CPU)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def loop_changes(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], layer: str,
                 index: torch.Tensor, delta: torch.Tensor, criterion) -> torch.Tensor:
    """``L(w + d e_i) - L(w)`` by moving each weight of ``module`` in place: one forward each."""
    x, y = batch
    param = dict(module.named_parameters())[layer]
    out = []
    with torch.no_grad():
        base = criterion(module(x), y)
        for i, d in zip(index.tolist(), delta.tolist()):
            param.view(-1)[i] += d
            out.append(float(criterion(module(x), y) - base))
            param.view(-1)[i] -= d
    return torch.tensor(out, dtype=torch.float64)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


# ---------------------------------------------------------------------------------------------
# the quantiser modules


def test_sign_trains_with_its_own_surrogate_and_follows_the_scope():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    sign = Sign(surrogate="clipped")
    y = sign(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]  # sign(0) = +1
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # clipped STE, closed window
    with surrogate_scope(None):  # CDG / NES: the plain step, no gradient
        assert not sign(x).requires_grad
    x.grad = None
    with surrogate_scope(Clipped(0.25)):  # an estimator's surrogate wins over the module's own
        sign(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_ternary_levels_and_binary_weight_rows():
    assert Ternary()(torch.tensor([-0.6, -0.5, 0.0, 0.5])).tolist() == [-1.0, 0.0, 0.0, 1.0]
    w = torch.tensor([[0.5, -1.5], [-0.25, 0.0]])
    assert binary_weight(w).tolist() == [[1.0, -1.0], [-0.125, 0.125]]  # alpha_o * sign(W[o]), row by row
    assert binary_weight(w, scale=False).tolist() == [[1.0, -1.0], [-1.0, 1.0]]


# ---------------------------------------------------------------------------------------------
# the problem


def test_point_layers_and_selectors():
    problem, _ = cnn_problem()
    assert list(problem.point())[:3] == ["stem.weight", "stem.bias", "bn0.weight"]
    assert problem.indexed_layers == {"conv": ["stem.weight", "conv1.weight", "conv2.weight"], "linear": ["fc.weight"]}
    assert problem.select_layers(["conv:2", "linear:-1", "bn1", "stem.bias"]) == [
        "conv1.weight", "fc.weight", "bn1.weight", "stem.bias"]
    assert problem.activation == "binary"
    with pytest.raises(ValueError, match=r"'conv:4' selects no layer: this problem has 3 conv layers"):
        problem.select_layers(["conv:4"])
    with pytest.raises(ValueError, match=r"unknown layer 'conv3'; valid layers: stem.weight"):
        problem.select_layers("conv3")
    mlp, _ = mlp_problem()
    with pytest.raises(ValueError, match=r"'conv:1' selects no layer: this problem has 0 conv layers"):
        mlp.select_layers("conv:1")


def test_loss_is_the_modules_own_loss():
    problem, reference = cnn_problem()
    batch = next(problem.batches())
    assert problem.criterion == "cross_entropy"
    with torch.no_grad():
        expected = F.cross_entropy(reference(batch[0]), batch[1])
    assert float(problem.loss(problem.point(), batch)) == pytest.approx(float(expected), rel=1e-14)


def test_batched_losses_match_one_loss_per_point():
    problem, _ = mlp_problem()
    point, batch = problem.point(), next(problem.batches())
    g = torch.Generator().manual_seed(5)
    deltas = {n: 0.3 * torch.randn(7, *point[n].shape, generator=g, dtype=torch.float64)
              for n in ("0.weight", "3.weight")}
    batched = problem.losses(point, batch, deltas)
    one_by_one = [float(problem.loss({**point, **{n: point[n] + d[k] for n, d in deltas.items()}}, batch))
                  for k in range(7)]
    assert batched.tolist() == pytest.approx(one_by_one, rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("layer", [
    "stem.weight", "stem.bias", "bn0.weight", "conv1.weight", "bn1.bias", "conv2.weight", "fc.weight", "fc.bias",
])
def test_cnn_cdg_fast_path_matches_the_plain_loop(layer):
    problem, reference = cnn_problem()
    assert problem.fast_path(layer) is None  # structurally on the chain path
    point, batch = problem.point(), next(problem.batches())
    some = some_coordinates(point[layer].numel())
    n = some.numel()
    index = torch.cat([some, some])
    delta = torch.cat([torch.full((n,), 0.3), torch.full((n,), -0.05)]).double()
    fast = problem.perturbed_loss_changes(point, batch, layer, index, delta)
    plain = loop_changes(reference, batch, layer, index, delta, F.cross_entropy)
    assert (plain != 0).any()  # some moves flip activations: the comparison is not trivial
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)
    if not layer.startswith("fc"):  # before a sign: a move that flips nothing changes exactly nothing
        assert torch.equal(fast == 0, plain == 0)


@pytest.mark.parametrize("layer", ["0.weight", "0.bias", "1.weight", "3.weight", "4.bias", "6.weight", "6.bias"])
def test_mlp_cdg_fast_path_matches_the_plain_loop(layer):
    problem, reference = mlp_problem()
    assert problem.criterion == "mse" and problem.fast_path(layer) is None
    point, batch = problem.point(), next(problem.batches())
    n = point[layer].numel()
    index = torch.arange(n).repeat(2)
    delta = torch.cat([torch.full((n,), 0.4), torch.full((n,), -0.4)]).double()
    fast = problem.perturbed_loss_changes(point, batch, layer, index, delta)
    plain = loop_changes(reference, batch, layer, index, delta, _mse)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)
    losses = problem.perturbed_losses(point, batch, layer, index, delta)
    torch.testing.assert_close(losses - problem.loss(point, batch), plain, rtol=0, atol=1e-12)


class SequentialBinaryCNN(nn.Module):
    """The example plugin's tiny_bnn layout (an nn.Sequential of stages, then pooling, a flatten
    in ``forward`` and the classifier), unpadded: each binary conv sums ``width * 9`` products of
    +-1, an odd count for width 3, so no pre-activation is an exact tie whose sign float rounding
    would decide (zero padding makes a border's fan-in even: 12 or 18 products)."""

    def __init__(self, width: int = 3, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), Sign()]
        for _ in range(depth):
            layers += [BinaryConv2d(width, width, 3, bias=False), nn.BatchNorm2d(width), Sign()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


_SEQUENTIAL_LAYERS = [
    "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias", "features.3.weight",
    "features.4.weight", "features.4.bias", "features.6.weight", "features.7.bias", "classifier.weight",
    "classifier.bias",
]


@pytest.mark.parametrize("layer", _SEQUENTIAL_LAYERS)
def test_sequential_binary_cnn_fast_path_equals_the_general_path(layer):
    """Freshly initialised (BN at mean 0, var 1), as a plugin's model is probed: every coordinate,
    both signs, the fast path against one-hot moves through the batched functional forward."""
    torch.manual_seed(0)
    module = SequentialBinaryCNN()
    batches = builtin_batches("synthetic_images", {"image_size": 10, "batch_size": 12, "batches": 1}, seed=0)
    reference = copy.deepcopy(module).double().eval()
    problem = TorchModuleProblem(module, batches, dtype=torch.float64)
    assert problem.chain.targets[-3:] == ["pool", None, "classifier"]
    assert problem.fast_path(layer) is None
    point, batch = problem.point(), next(problem.batches())
    n = point[layer].numel()
    index = torch.arange(n).repeat(2)
    delta = torch.cat([torch.full((n,), 0.05), torch.full((n,), -0.05)]).double()
    fast = problem.perturbed_loss_changes(point, batch, layer, index, delta)
    general = Problem.perturbed_losses(problem, point, batch, layer, index, delta) - problem.loss(point, batch)
    torch.testing.assert_close(fast, general, rtol=0, atol=1e-9)
    plain = loop_changes(reference, batch, layer, index, delta, F.cross_entropy)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)


def test_a_skip_connection_uses_batched_functional_evaluation():
    torch.manual_seed(3)
    module = _randomise_bn(Residual())
    batches = builtin_batches("synthetic_images", {"image_size": 4, "batch_size": 6, "batches": 1}, seed=1)
    reference = copy.deepcopy(module).double().eval()
    problem = TorchModuleProblem(module, batches, dtype=torch.float64)
    assert "not a parameter of a layer called once as one stage" in problem.fast_path("conv.weight")
    point, batch = problem.point(), next(problem.batches())
    index = some_coordinates(point["conv.weight"].numel(), 30)
    delta = torch.full(index.shape, 0.5, dtype=torch.float64)
    fast = problem.perturbed_loss_changes(point, batch, "conv.weight", index, delta)
    plain = loop_changes(reference, batch, "conv.weight", index, delta, F.cross_entropy)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)


class HalfSignConv(BinaryConv2d):
    """A user's own row-wise weight quantiser: ``sign(W) / 2``."""

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        return binary_weight(w, scale=False) / 2


class CentredMLP(nn.Module):
    """A chain whose last stages couple the samples (``h - mean over the batch``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = BinaryLinear(5, 6), Sign(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(h - h.mean(0))


def test_a_users_own_weight_quantiser_moves_whole_rows():
    torch.manual_seed(4)
    module = _randomise_bn(SmallBinaryCNN())
    module.conv1 = HalfSignConv(4, 4, 3, padding=1, bias=False)
    batches = builtin_batches("synthetic_images", {"image_size": 5, "batch_size": 6, "batches": 1}, seed=2)
    reference = copy.deepcopy(module).double().eval()
    problem = TorchModuleProblem(module, batches, dtype=torch.float64)
    assert problem.fast_path("conv1.weight") is None
    point, batch = problem.point(), next(problem.batches())
    some = some_coordinates(point["conv1.weight"].numel(), 30)
    delta = torch.where(point["conv1.weight"].flatten()[some] > 0, -0.3, 0.3).double()  # every move flips a sign
    fast = problem.perturbed_loss_changes(point, batch, "conv1.weight", some, delta)
    plain = loop_changes(reference, batch, "conv1.weight", some, delta, F.cross_entropy)
    assert (plain != 0).any()
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)


def test_a_chain_that_couples_samples_is_caught_and_evaluated_in_full():
    torch.manual_seed(5)
    module = CentredMLP()
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(6))
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(7))
    reference = copy.deepcopy(module).double().eval()
    problem = TorchModuleProblem(module, [(x, y)], dtype=torch.float64)
    point, batch = problem.point(), next(problem.batches())
    assert problem.fast_path("fc1.weight") is None  # structurally a chain ...
    assert problem._fast_plan(point, batch, "fc1.weight") is None  # ... but not per sample
    index = torch.arange(30)
    delta = torch.full((30,), 0.5, dtype=torch.float64)
    fast = problem.perturbed_loss_changes(point, batch, "fc1.weight", index, delta)
    plain = loop_changes(reference, batch, "fc1.weight", index, delta, F.cross_entropy)
    assert (plain != 0).any()
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)


def test_cdg_estimator_on_a_user_module_equals_central_differences_of_the_loop():
    problem, reference = cnn_problem()
    point, batch = problem.point(), next(problem.batches())
    cdg = get({"kind": "cdg", "epsilon": 0.2, "mode": "central"})
    grad = cdg.estimate(problem, point, batch, ["conv1.weight"], torch.Generator())["conv1.weight"]
    some = some_coordinates(point["conv1.weight"].numel(), 30, seed=1)
    up = loop_changes(reference, batch, "conv1.weight", some, torch.full((30,), 0.2), F.cross_entropy)
    down = loop_changes(reference, batch, "conv1.weight", some, torch.full((30,), -0.2), F.cross_entropy)
    torch.testing.assert_close(grad.flatten()[some], (up - down) / 0.4, rtol=0, atol=1e-11)


def test_ste_on_a_user_module_is_autograd_through_its_own_surrogate():
    problem, reference = cnn_problem()
    point, batch = problem.point(), next(problem.batches())
    ste = get({"kind": "ste", "variant": "clipped"})
    grads = ste.estimate(problem, point, batch, ["conv1.weight", "fc.weight"], torch.Generator())
    for m in reference.modules():  # the user's own training set-up: Sign with clipped STE
        if isinstance(m, Sign):
            m.surrogate = Clipped(1.0)
    reference.zero_grad()
    F.cross_entropy(reference(batch[0]), batch[1]).backward()
    torch.testing.assert_close(grads["conv1.weight"], reference.conv1.weight.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads["fc.weight"], reference.fc.weight.grad, rtol=1e-12, atol=1e-14)
    assert grads["conv1.weight"].abs().sum() > 0


def test_autograd_nes_sr_ste_and_followups_run_on_a_user_module():
    problem, _ = cnn_problem()
    point, batch = problem.point(), next(problem.batches())
    layers = problem.select_layers(["conv:2", "linear:1"])
    exact = get("autograd").estimate(problem, point, batch, layers, torch.Generator())
    assert exact["conv1.weight"].abs().sum() == 0  # below a step activation the exact gradient is 0
    assert exact["fc.weight"].abs().sum() > 0
    for cfg in ({"kind": "nes", "sigma": 0.1, "samples": 16, "antithetic": True},
                {"kind": "sr_ste", "tau": 1.0, "samples": 2},
                {"kind": "perturbed_ste", "noise": 0.5, "candidates": 3, "step": 0.1},
                {"kind": "random_ste", "randomize": "noise", "scale": 0.5},
                {"kind": "nes_max_point", "sigma": 0.1, "samples": 8}):
        est = get(cfg)
        g1 = est.estimate(problem, point, batch, layers, torch.Generator().manual_seed(7))
        g2 = est.estimate(problem, point, batch, layers, torch.Generator().manual_seed(7))
        for n in layers:
            assert g1[n].shape == point[n].shape and torch.isfinite(g1[n]).all(), cfg
            assert torch.equal(g1[n], g2[n]), cfg  # seeded: the same numbers again
        assert sum(float(g.abs().sum()) for g in g1.values()) > 0, cfg


def test_nes_equals_its_formula_over_one_loss_per_direction():
    problem, _ = mlp_problem()
    point, batch = problem.point(), next(problem.batches())
    nes = get({"kind": "nes", "sigma": 0.2, "samples": 10, "antithetic": False})
    grad = nes.estimate(problem, point, batch, ["3.weight"], torch.Generator().manual_seed(4))["3.weight"]
    u = nes.directions(point, ["3.weight"], torch.Generator().manual_seed(4))
    shape = point["3.weight"].shape
    fitness = torch.tensor([float(problem.loss({**point, "3.weight": point["3.weight"] + 0.2 * uk.view(shape)}, batch))
                            for uk in u], dtype=torch.float64)
    torch.testing.assert_close(grad.flatten(), fitness @ u / (10 * 0.2), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# building from a config


def test_build_from_a_factory_and_builtin_data_is_a_function_of_the_seed():
    cfg = {"kind": "torch_module", "model": {"kind": "small_cnn", "channels": 3},
           "data": {"kind": "synthetic_images", "image_size": 4, "batch_size": 5, "batches": 2}}
    one = build(cfg, seed=3, dtype=torch.float32, device=torch.device("cpu"), factory=SmallBinaryCNN)
    two = build(cfg, seed=3, dtype=torch.float32, device=torch.device("cpu"), factory=SmallBinaryCNN)
    other = build(cfg, seed=4, dtype=torch.float32, device=torch.device("cpu"), factory=SmallBinaryCNN)
    assert [b[0].shape for b in one.batches()] == [torch.Size([5, 3, 4, 4])] * 2
    assert all(torch.equal(one.point()[n], two.point()[n]) for n in one.point())
    assert not torch.equal(one.point()["conv1.weight"], other.point()["conv1.weight"])
    fresh = one.train_batch(3)  # step.batches: fresh
    assert fresh[0].shape == (5, 3, 4, 4) and torch.equal(fresh[0], two.train_batch(3)[0])
    assert not torch.equal(fresh[0], one.train_batch(4)[0])


def test_build_gaussian_data_regresses_on_a_teacher_from_the_same_factory():
    cfg = {"model": {"kind": "mlp", "dim": 4, "hidden": 5, "out": 1},
           "data": {"kind": "gaussian", "shape": [4], "batch_size": 9, "batches": 1}}
    problem = build(cfg, seed=0, dtype=torch.float64, device=torch.device("cpu"), factory=binary_mlp)
    assert problem.criterion == "mse"
    assert float(problem.loss(problem.point(), next(problem.batches()))) > 0


def test_a_data_factory_gives_the_batches():
    def data(*, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g))]

    cfg = {"model": {"kind": "mlp"}, "data": {"kind": "my_data", "n": 7}}
    problem = build(cfg, seed=1, dtype=torch.float32, device=torch.device("cpu"), factory=binary_mlp, data_factory=data)
    assert problem.criterion == "cross_entropy" and next(problem.batches())[0].shape == (7, 6)


def test_bad_factories_and_data_are_clear_errors():
    def broken(**params):
        raise RuntimeError("no such width")

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"problem.model: the factory 'wide' raised RuntimeError: no such width"):
        build({"model": {"kind": "wide"}}, seed=0, dtype=torch.float32, device=cpu, factory=broken)
    with pytest.raises(ValueError, match=r"returned int, not a torch.nn.Module"):
        build({"model": {"kind": "num"}}, seed=0, dtype=torch.float32, device=cpu, factory=lambda: 3)
    with pytest.raises(ValueError, match=r"problem.data: unknown data kind 'cifar' \(built in: synthetic_images, gaussian\)"):
        build({"model": {"kind": "mlp"}, "data": {"kind": "cifar"}}, seed=0, dtype=torch.float32, device=cpu,
              factory=binary_mlp)
    with pytest.raises(ValueError, match=r"the module's forward on the data failed .*input \(2, 3, 8, 8\)"):
        build({"model": {"kind": "mlp"}, "data": {"batch_size": 2, "batches": 1}}, seed=0, dtype=torch.float32,
              device=cpu, factory=binary_mlp)
    with pytest.raises(ValueError, match=r"data batch 0: expected a pair \(x, y\) of tensors"):
        build({"model": {"kind": "mlp"}, "data": {"kind": "mine"}}, seed=0, dtype=torch.float32, device=cpu,
              factory=binary_mlp, data_factory=lambda seed: [torch.zeros(3)])


def test_probe_and_train_experiments_run_on_a_user_module():
    from gradsweep.experiments import get_experiment
    from gradsweep.seeding import generator

    problem, _ = cnn_problem()
    generator_for = lambda *parts: generator(0, *parts)  # noqa: E731
    probe = get_experiment("probe")
    for estimator, measure in [
        ({"kind": "cdg", "epsilon": 0.1}, {"reference": {"kind": "ste", "variant": "clipped"}}),
        ({"kind": "sr_ste", "tau": 1.0, "samples": 2}, {"evaluate": "estimator"}),  # vmapped stochastic forward
    ]:
        rows = probe(problem, get(estimator), {"params": ["conv:2", "linear:1"], "measure": {"lrs": [0.01, 0.1], **measure}},
                     generator_for=generator_for)
        probe_rows = rows[rows.record == "probe"]
        assert len(probe_rows) == 2 and probe_rows.loss_after.notna().all(), estimator
    cfg = {"model": {"kind": "small_cnn", "channels": 3},
           "data": {"kind": "synthetic_images", "image_size": 4, "batch_size": 8, "batches": 1}}
    built = build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), factory=SmallBinaryCNN)
    step = {"steps": 3, "log_every": 1, "lr": 0.01, "optimizer": "adam", "normalize": True, "batches": "fresh",
            "decay": None, "switch": None, "patience": 3}
    rows = get_experiment("train")(built, get({"kind": "ste", "variant": "clipped"}), {"params": "all", "step": step},
                                   generator_for=generator_for)
    assert rows.step.tolist() == [0, 1, 2, 3] and rows.accuracy.between(0, 1).all()
