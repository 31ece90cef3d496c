"""The hand-written update rules equal torch.optim's, step for step, with an lr that changes."""

from __future__ import annotations

import pytest
import torch

from gradsweep.optimizers import make


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_updates_equal_torch_optim(kind):
    g = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(4, 3, generator=g, dtype=torch.float64), "b": torch.randn(5, generator=g, dtype=torch.float64)}
    grads = [{n: torch.randn(w.shape, generator=g, dtype=torch.float64) for n, w in start.items()} for _ in range(6)]

    ours = {n: w.clone() for n, w in start.items()}
    opt = make(kind, 0.1, {"momentum": 0.8})
    theirs = {n: w.clone().requires_grad_() for n, w in start.items()}
    if kind == "adam":
        ref = torch.optim.Adam(theirs.values(), lr=0.1)
    else:
        ref = torch.optim.SGD(theirs.values(), lr=0.1, momentum=0.8 if kind == "momentum" else 0.0)
    for i, step in enumerate(grads):
        if i == 3:  # a decay between steps
            opt.lr = 0.05
            for group in ref.param_groups:
                group["lr"] = 0.05
        opt.step(ours, step)
        for n, w in theirs.items():
            w.grad = step[n].clone()
        ref.step()
    for n in start:
        torch.testing.assert_close(ours[n], theirs[n].detach(), rtol=1e-13, atol=1e-15)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match=r"optimizer: unknown kind 'rmsprop' \(known: sgd, momentum, adam\)"):
        make("rmsprop", 0.1)
