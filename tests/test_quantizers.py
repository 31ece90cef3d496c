"""The activation forwards: levels, tie rules at the thresholds, no gradient, vmap-safe."""

from __future__ import annotations

import pytest
import torch

from gradsweep import registry
from gradsweep.problems.quantizers import get_quantizer, quantize_

QUANTIZERS = list(registry.kinds("activation"))

X = torch.tensor([-3.0, -1.0, -2 / 3, -0.5, -0.4, -0.0, 0.0, 0.2, 1 / 3, 0.5, 2 / 3, 0.9, 4.0], dtype=torch.float64)


def test_binary_is_sign_with_sign_zero_plus_one():
    out = get_quantizer("binary")(X)
    expected = torch.where(X >= 0, 1.0, -1.0).to(torch.float64)
    assert torch.equal(out, expected)
    assert get_quantizer("binary")(torch.zeros(1)).item() == 1.0


def test_ternary_levels_and_ties():
    out = get_quantizer("ternary")(X)
    expected = torch.tensor([-1, -1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float64)
    assert torch.equal(out, expected)


def test_2bit_levels_and_ties():
    out = get_quantizer("2bit")(X)
    a = 1 / 3
    expected = torch.tensor([-1, -1, -a, -a, -a, a, a, a, a, a, 1, 1, 1], dtype=torch.float64)
    assert torch.allclose(out, expected, rtol=0, atol=1e-15)


def test_fp_is_identity_with_gradient():
    x = X.clone().requires_grad_()
    get_quantizer("fp")(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(X))


@pytest.mark.parametrize("name", [n for n in QUANTIZERS if n != "fp"])
def test_step_quantizers_carry_no_gradient_and_keep_dtype(name):
    q = get_quantizer(name)
    x = torch.randn(5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = q(x)
    assert not out.requires_grad
    assert out.dtype == x.dtype


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_quantizers_work_under_vmap(name):
    q = get_quantizer(name)
    x = torch.linspace(-2, 2, 12, dtype=torch.float64).view(3, 4)
    assert torch.equal(torch.func.vmap(q)(x), q(x))


def test_unknown_quantizer_names_it_and_suggests():
    with pytest.raises(ValueError, match=r"activation: unknown kind 'binray'; did you mean 'binary'"):
        get_quantizer("binray")


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_in_place_quantize_gives_the_same_values_into_the_same_tensor(name):
    q = get_quantizer(name)
    x = torch.cat([X, torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)])
    buffer = x.clone()
    out = quantize_(q, buffer)
    assert out.data_ptr() == buffer.data_ptr()
    assert torch.equal(out, q(x))


def test_step_levels_are_exactly_the_declared_levels():
    # a level is written, not summed from steps: -1 + 2/3 + 2/3 would miss 1/3 by rounding
    q = get_quantizer("2bit")
    out = q(torch.linspace(-2, 2, 101, dtype=torch.float32))
    assert set(out.tolist()) <= {float(torch.tensor(v, dtype=torch.float32)) for v in q.levels}
