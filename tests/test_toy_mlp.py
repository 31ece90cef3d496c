"""The BinaryDuo toy: shapes and names, seeded draws, the loss, the surrogate hook, pretraining."""

from __future__ import annotations

import pytest
import torch

from gradsweep.problems.surrogates import Clipped
from gradsweep.problems import build_problem
from builders import build_toy as build
from gradsweep.problems.toy_mlp import ToyMLP

CPU = torch.device("cpu")


def toy(tmp_path, seed: int = 0, **cfg) -> ToyMLP:
    base = {"kind": "toy_mlp", "dim": 6, "depth": 3, "data": {"batch_size": 128, "batches": 2}}
    return build({**base, **cfg}, seed=seed, dtype=torch.float64, device=CPU, cache_dir=tmp_path)


def test_layers_are_named_from_the_input_with_out_in_shapes(tmp_path):
    p = toy(tmp_path, depth=4)
    assert {n: tuple(w.shape) for n, w in p.point().items()} == {
        "fc1": (6, 6), "fc2": (6, 6), "fc3": (6, 6), "fc4": (1, 6)}
    assert p.select_layers(["linear:1", "linear:-1"]) == ["fc1", "fc4"]
    assert p.select_layers("all") == ["fc1", "fc2", "fc3", "fc4"]


def test_unknown_layer_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"params: unknown layer 'fc9'; valid layers: fc1, fc2, fc3"):
        toy(tmp_path).select_layers(["fc9"])
    with pytest.raises(ValueError, match=r"'linear:5' selects no layer"):
        toy(tmp_path).select_layers(["linear:5"])


def test_draws_depend_only_on_the_seed(tmp_path):
    a, b = toy(tmp_path), toy(tmp_path)
    c = toy(tmp_path, seed=1)
    for name in a.point():
        assert torch.equal(a.point()[name], b.point()[name])
        assert torch.equal(a.teacher[name], b.teacher[name])
        assert not torch.equal(a.point()[name], c.point()[name])
        assert not torch.equal(a.point()[name], a.teacher[name])  # student and teacher differ
    (x0, y0), (x1, _) = list(a.batches())
    assert x0.shape == (128, 6) and y0.shape == (128, 1)
    assert not torch.equal(x0, x1)
    assert torch.equal(next(a.batches())[0], next(b.batches())[0])  # the same batches every call


def test_loss_is_mse_to_the_teacher_and_zero_at_the_teacher(tmp_path):
    p = toy(tmp_path)
    x, y = next(p.batches())
    w = p.point()
    h = torch.where(x @ w["fc1"].T >= 0, 1.0, -1.0).double()
    h = torch.where(h @ w["fc2"].T >= 0, 1.0, -1.0).double()
    expected = ((h @ w["fc3"].T - y) ** 2).mean()
    torch.testing.assert_close(p.loss(w, (x, y)), expected, rtol=1e-14, atol=0)
    assert p.loss(p.teacher, (x, y)).item() == 0.0


def test_teacher_activation_may_differ(tmp_path):
    p = toy(tmp_path, activation="binary", teacher_activation="fp")
    assert p.teacher_activation == "fp" and p.activation == "binary"
    x, y = next(p.batches())
    t = p.teacher
    torch.testing.assert_close(y, x @ t["fc1"].T @ t["fc2"].T @ t["fc3"].T)


@pytest.mark.parametrize("activation", ["binary", "ternary", "2bit"])
def test_surrogate_changes_the_backward_not_the_value(tmp_path, activation):
    p = toy(tmp_path, activation=activation)
    batch = next(p.batches())
    w = {n: t.clone().requires_grad_() for n, t in p.point().items()}
    plain = p.loss(w, batch)
    with_ste = p.loss(w, batch, surrogate=Clipped(1.0))
    assert plain.item() == with_ste.item()
    assert plain.grad_fn is not None
    (g1,) = torch.autograd.grad(with_ste, [w["fc1"]])
    assert torch.count_nonzero(g1) > 0


def test_pretraining_lowers_the_loss_and_is_cached(tmp_path):
    cfg = {"dim": 8, "pretrain": {"steps": 150, "batch_size": 256, "lr": 0.01, "optimizer": "adam"}}
    raw = toy(tmp_path, dim=8)
    first = toy(tmp_path, **cfg)
    assert first.pretrain_cache_hit is False
    losses = first.pretrain_losses
    assert len(losses) == 150
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20
    assert [r["step"] for r in first.records] == list(range(2, 151, 2))  # at most 100 rows of the curve
    assert first.records[-1] == {"record": "pretrain", "step": 150, "loss": losses[-1]}
    assert raw.records == []
    batch = next(raw.batches())
    assert first.loss(first.point(), batch) < raw.loss(raw.point(), batch)

    second = toy(tmp_path, **cfg)
    assert second.pretrain_cache_hit is True
    for name, w in first.point().items():
        assert torch.equal(w, second.point()[name])
    # the probe data size is not part of the key: a cell with other batches shares the student
    other = toy(tmp_path, **cfg, data={"batch_size": 32, "batches": 1})
    assert other.pretrain_cache_hit is True
    # but the training settings are
    changed = toy(tmp_path, dim=8, pretrain={**cfg["pretrain"], "steps": 5})
    assert changed.pretrain_cache_hit is False
    assert len(list((tmp_path / "toy_pretrain").glob("*.pt"))) == 2


def test_build_problem_dispatches_on_kind(tmp_path):
    p = build_problem({"kind": "toy_mlp", "dim": 4}, seed=0, dtype=torch.float32, device=CPU, cache_dir=tmp_path)
    assert isinstance(p, ToyMLP) and p.point()["fc1"].dtype == torch.float32


CONCURRENT = """
import sys, torch
torch.set_num_threads(1)
from gradsweep.problems import build_problem as build
cfg = {"kind": "toy_mlp", "dim": 16, "pretrain": {"steps": 100, "batch_size": 1000}}
p = build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=sys.argv[1])
print(p.pretrain_cache_hit, float(sum(w.double().sum() for w in p.point().values())))
"""


@pytest.mark.slow
def test_concurrent_processes_train_one_student(tmp_path):
    import subprocess
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(hit for hit, _ in outs) == ["False", "True"]  # one trained, the other waited and read
    assert outs[0][1] == outs[1][1]
    assert len(list((tmp_path / "toy_pretrain").glob("*.pt"))) == 1


def test_the_batch_memory_budget_follows_the_device() -> None:
    """Big batched evaluations fill a GPU; on a CPU they stream through memory and run slower."""
    from gradsweep.problems.base import default_chunk_bytes

    problem = build_problem(
        {"kind": "toy_mlp", "dim": 4, "data": {"batch_size": 8, "batches": 1}},
        seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir="/nonexistent",
    )
    assert problem.chunk_bytes == default_chunk_bytes(torch.device("cpu")) < default_chunk_bytes(torch.device("cuda"))
