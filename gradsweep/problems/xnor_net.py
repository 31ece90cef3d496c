"""The thin XNOR-ResNet-18's network as pure functions of named weights: the architecture, the
functional forward pieces and the XNOR weight quantiser. :mod:`gradsweep.problems.xnor_resnet`
(the problem) and :mod:`gradsweep.problems.xnor_cdg` (its batched CDG) both build on it, and
neither imports the other for it. See :mod:`gradsweep.problems.xnor_resnet` for the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from gradsweep.nn import binary_weight as scaled_binary_weight
from gradsweep.problems.base import Surrogate
from gradsweep.problems.quantizers import get_quantizer
from gradsweep.seeding import generator

NUM_CLASSES = 10
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


# ---------------------------------------------------------------------------------------------
# Architecture and the functional forward


@dataclass(frozen=True)
class Block:
    """One basic block: its module-name prefix, channels in and out, and stride."""

    name: str
    cin: int
    cout: int
    stride: int

    @property
    def has_shortcut(self) -> bool:
        return self.stride != 1 or self.cin != self.cout


def architecture(channels: int) -> list[Block]:
    """The eight basic blocks of ResNet-18 with initial channel ``channels``."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"problem.channels: expected a positive integer, got {channels!r}")
    blocks, cin = [], channels
    for stage in range(4):
        cout = channels * 2 ** stage
        for b in range(2):
            stride = 2 if (stage > 0 and b == 0) else 1
            blocks.append(Block(f"layer{stage + 1}.{b}", cin, cout, stride))
            cin = cout
    return blocks


def weight_names(blocks: list[Block]) -> list[str]:
    """Point keys, ordered from the input."""
    names = ["stem"]
    for blk in blocks:
        names += [f"{blk.name}.conv1", f"{blk.name}.conv2"]
        if blk.has_shortcut:
            names.append(f"{blk.name}.shortcut")
    return names + ["fc"]


def binary_conv_names(blocks: list[Block]) -> list[str]:
    return [f"{blk.name}.conv{i}" for blk in blocks for i in (1, 2)]


#: sign with sign(0) = +1, in x's dtype; a plain forward with no gradient (the surrogate adds one)
binary_sign = get_quantizer("binary")


def binary_weight(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net weights ``alpha_o * sign(W)``, alpha_o = mean |W[o]|; sign's backward is 1{|W| <= 1}
    (the public quantiser of :mod:`gradsweep.nn`, which users' binary layers use too)."""
    return scaled_binary_weight(w, True)


@dataclass
class Ctx:
    """How one forward runs.

    ``surrogate``: backward of the binary activation (None: plain sign). ``batch_stats``: BN
    normalises with the statistics of the batch; with ``groups = G`` the batch is G stacked
    sub-batches (G perturbed copies of one batch) and each is normalised on its own.
    ``updates``: when a dict, BN running statistics updated by this (training) forward go there.
    """

    surrogate: Surrogate | None = None
    batch_stats: bool = False
    binary_weights: bool = True
    groups: int = 1
    updates: dict[str, torch.Tensor] | None = None


def init_params(blocks: list[Block], channels: int, seed: int, dtype: torch.dtype, device: torch.device
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """He-normal convs, PyTorch-style classifier, BN at (1, 0) with running stats (0, 1)."""
    g = generator(seed, "xnor_init")
    weights: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        weights[name] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    def bn(name: str, n: int) -> None:
        state.update({f"{name}.weight": torch.ones(n), f"{name}.bias": torch.zeros(n),
                      f"{name}.running_mean": torch.zeros(n), f"{name}.running_var": torch.ones(n)})

    conv("stem", channels, 3, 3)
    bn("stem_bn", channels)
    for blk in blocks:
        bn(f"{blk.name}.bn1", blk.cin)
        conv(f"{blk.name}.conv1", blk.cout, blk.cin, 3)
        bn(f"{blk.name}.bn2", blk.cout)
        conv(f"{blk.name}.conv2", blk.cout, blk.cout, 3)
        if blk.has_shortcut:
            conv(f"{blk.name}.shortcut", blk.cout, blk.cin, 1)
            bn(f"{blk.name}.shortcut_bn", blk.cout)
    width = blocks[-1].cout
    bn("bn_final", width)
    bound = 1.0 / math.sqrt(width)
    weights["fc"] = (torch.rand(NUM_CLASSES, width, generator=g) * 2 - 1) * bound
    state["fc.bias"] = (torch.rand(NUM_CLASSES, generator=g) * 2 - 1) * bound
    ordered = {n: weights[n].to(device=device, dtype=dtype) for n in weight_names(blocks)}
    return ordered, {n: v.to(device=device, dtype=dtype) for n, v in state.items()}


def batch_norm(x: torch.Tensor, state: Mapping[str, torch.Tensor], name: str, ctx: Ctx) -> torch.Tensor:
    """BN of (N, C, H, W) with running or per-group batch statistics."""
    shape = (1, -1, 1, 1)
    if ctx.batch_stats:
        xg = x.reshape(ctx.groups, -1, *x.shape[1:])
        mean = xg.mean(dim=(1, 3, 4), keepdim=True)
        var = xg.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
        y = ((xg - mean) / torch.sqrt(var + BN_EPS)).reshape(x.shape)
        if ctx.updates is not None:
            with torch.no_grad():
                n = xg[0].numel() / x.shape[1]
                m = BN_MOMENTUM
                ctx.updates[f"{name}.running_mean"] = (1 - m) * state[f"{name}.running_mean"] + m * mean.flatten()
                ctx.updates[f"{name}.running_var"] = (1 - m) * state[f"{name}.running_var"] + m * var.flatten() * n / max(n - 1, 1)
    else:
        mean, var = state[f"{name}.running_mean"].view(shape), state[f"{name}.running_var"].view(shape)
        y = (x - mean) / torch.sqrt(var + BN_EPS)
    return y * state[f"{name}.weight"].view(shape) + state[f"{name}.bias"].view(shape)


def activation(x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    return binary_sign(x) if ctx.surrogate is None else ctx.surrogate(x, binary_sign)


def quantized(w: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    return binary_weight(w) if ctx.binary_weights else w


def stem_forward(weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    return batch_norm(F.conv2d(x, weights["stem"], padding=1), state, "stem_bn", ctx)


def shortcut_forward(blk: Block, weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                     x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    if not blk.has_shortcut:
        return x
    return batch_norm(F.conv2d(x, weights[f"{blk.name}.shortcut"], stride=blk.stride), state, f"{blk.name}.shortcut_bn", ctx)


def block_forward(blk: Block, weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                  x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    a1 = activation(batch_norm(x, state, f"{blk.name}.bn1", ctx), ctx)
    h1 = F.conv2d(a1, quantized(weights[f"{blk.name}.conv1"], ctx), stride=blk.stride, padding=1)
    a2 = activation(batch_norm(h1, state, f"{blk.name}.bn2", ctx), ctx)
    h2 = F.conv2d(a2, quantized(weights[f"{blk.name}.conv2"], ctx), padding=1)
    return h2 + shortcut_forward(blk, weights, state, x, ctx)


def head_forward(weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    h = F.relu(batch_norm(x, state, "bn_final", ctx)).mean(dim=(2, 3))
    return h @ weights["fc"].T + state["fc.bias"]


def logits(blocks: list[Block], weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
           x: torch.Tensor, ctx: Ctx, *, start: int = 0) -> torch.Tensor:
    """The network's logits; with ``start = j``, ``x`` is the input of block j (stem skipped)."""
    h = stem_forward(weights, state, x, ctx) if start == 0 else x
    for blk in blocks[start:]:
        h = block_forward(blk, weights, state, h, ctx)
    return head_forward(weights, state, h, ctx)


def grouped_cross_entropy(out: torch.Tensor, y: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean cross-entropy of each of ``groups`` stacked copies of the batch labelled ``y``."""
    ce = F.cross_entropy(out, y.repeat(groups), reduction="none")
    return ce.view(groups, -1).mean(1)


# ---------------------------------------------------------------------------------------------
# The problem
