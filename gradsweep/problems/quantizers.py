"""Activation forwards (quantisers): ``fp``, ``binary``, ``ternary``, ``2bit``, declared as
``activation`` kinds in :mod:`gradsweep.problems`.

Every quantizer is a staircase ``q(x) = levels[j]`` where ``j`` counts the thresholds ``<= x``:
a value exactly on a threshold takes the level *above* it. That one rule gives ``sign(0) = +1``
for ``binary`` (the convention of the research notes' ``sign``) and fixes every other tie the
same way. The choices, documented here because results depend on them:

========  =========================  ==========================
name      levels                     thresholds
========  =========================  ==========================
fp        identity                   none
binary    {-1, +1}                   0          (sign, sign(0) = +1)
ternary   {-1, 0, +1}                -0.5, 0.5  (|x| < 0.5 -> 0; x = 0.5 -> 1; x = -0.5 -> 0)
2bit      {-1, -1/3, 1/3, 1}         -2/3, 0, 2/3  (uniform 4 levels on [-1, 1], rounded to nearest)
========  =========================  ==========================

The forwards carry no gradient (their outputs do not depend on ``x`` through autograd): the
exact gradient through a step function is zero almost everywhere, and the STE family supplies
its surrogate derivative separately (:class:`gradsweep.problems.base.Surrogate`). All are built
from comparisons and sums, so they work under ``torch.func.vmap`` (the batched loss paths).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["Staircase", "BINARY", "TERNARY", "TWO_BIT", "get_quantizer", "identity", "quantize_"]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The full-precision activation (none): ``q(x) = x``, gradient 1."""
    return x


def quantize_(quantize: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``quantize(x)`` written into ``x`` (see :meth:`Staircase.apply_`); identity leaves ``x`` as is."""
    if quantize is identity:
        return x
    if isinstance(quantize, Staircase):
        return quantize.apply_(x)
    return x.copy_(quantize(x))


class Staircase:
    """``q(x) = levels[j]`` for the largest j with ``x >= thresholds[j - 1]`` (``levels[0]`` below all).

    ``thresholds`` ascending, one fewer than ``levels``; every output is exactly one of
    ``levels``. The output has ``x``'s dtype and device and no autograd connection to ``x``.
    """

    def __init__(self, name: str, thresholds: Sequence[float], levels: Sequence[float]) -> None:
        if len(levels) != len(thresholds) + 1:
            raise ValueError(f"{name}: need one more level than thresholds, got {levels} / {thresholds}")
        if list(thresholds) != sorted(thresholds):
            raise ValueError(f"{name}: thresholds must ascend, got {thresholds}")
        self.name = name
        self.thresholds = tuple(float(t) for t in thresholds)
        self.levels = tuple(float(v) for v in levels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # This runs on every activation of every perturbed copy in NES and the lr scans, so it is
        # written for speed: one elementwise pass where possible.
        x = x.detach()
        if self.is_sign:
            # sign with sign(0) = +1: copysign is one pass; adding 0.0 turns -0.0 into +0.0 first
            return torch.copysign(x.new_full((), self.levels[1]), x + 0.0)
        return self._fill_levels(x, torch.empty_like(x))

    def apply_(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` overwritten with ``self(x)`` (the same values) and returned.

        For the batched paths, which reuse their activation buffers: a new tensor of a batch's
        size per call costs the CPU more in fresh pages than the quantizer's arithmetic does.
        (The sign case differs from ``__call__`` only by ``out=``, which ``vmap`` does not take.)
        """
        with torch.no_grad():
            if self.is_sign:
                return torch.copysign(x.new_full((), self.levels[1]), x.add_(0.0), out=x)
            return self._fill_levels(x, x)

    def _fill_levels(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (which may be ``x`` itself) filled with the level of each entry of ``x``."""
        reached = [x >= t for t in self.thresholds]  # every comparison before out (maybe x) is written
        out.fill_(self.levels[0])
        for mask, level in zip(reached, self.levels[1:]):
            out.masked_fill_(mask, level)  # thresholds ascend: the highest one reached wins
        return out

    @property
    def is_sign(self) -> bool:
        """Whether this is ``sign`` (one threshold at 0, symmetric levels): the one-pass case."""
        return self.thresholds == (0.0,) and self.levels[0] == -self.levels[1]

    def __repr__(self) -> str:
        return f"Staircase({self.name!r}, thresholds={self.thresholds}, levels={self.levels})"


BINARY = Staircase("binary", [0.0], [-1.0, 1.0])
TERNARY = Staircase("ternary", [-0.5, 0.5], [-1.0, 0.0, 1.0])
TWO_BIT = Staircase("2bit", [-2.0 / 3.0, 0.0, 2.0 / 3.0], [-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0])


def get_quantizer(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation forward declared as ``name`` (built-in or a plugin's); an unknown name is a
    ``ValueError`` naming it."""
    from gradsweep import registry

    registry.kind("activation", name)  # a ValueError naming an unknown one
    return registry.implementation("activation", name)
