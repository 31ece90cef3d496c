"""Quantiser modules for your own ``torch.nn.Module``: how a user's BNN tells gradsweep where
its step functions are.

A binary network written with these modules runs unchanged as a gradsweep problem
(:mod:`gradsweep.problems.torch_module`), and every estimator applies to it:

- activations: :class:`Sign` (``sign`` with ``sign(0) = +1``), :class:`Ternary`, :class:`TwoBit`,
  or :class:`Quantize` with any quantiser of :mod:`gradsweep.problems.quantizers`. Their forward is
  the staircase; their backward is a *surrogate* (:class:`gradsweep.problems.base.Surrogate`).
  Inside :func:`surrogate_scope` every quantiser module uses the scope's surrogate: that is how
  the STE family, sr-STE (:class:`~gradsweep.estimators.sr_ste.StochasticRounding` replaces the
  forward too) and the follow-ups reach into a user's module, and how CDG and NES get the plain
  step forward (``surrogate_scope(None)``: no gradient through the step). Outside any scope a
  module uses its own ``surrogate`` (None: plain step, no gradient), so the same module trains
  with STE in the user's own loop: ``Sign(surrogate="clipped")``.
- weights: :class:`BinaryConv2d` and :class:`BinaryLinear` use ``Q(W)`` in place of ``W``:
  XNOR-Net's ``alpha_o * sign(W[o])`` with ``alpha_o = mean |W[o]|`` per output unit
  (``scale=False``: plain ``sign(W)``). Its backward is straight-through with XNOR-Net's clip
  ``|W| <= 1`` (alpha differentiated exactly), whatever the scope says, as in the built-in
  XNOR-ResNet. ``Q`` works row by row (output unit ``o`` of ``Q(W)`` depends on ``W[o]`` only),
  which CDG's fast path relies on.

The quantisers are plain comparisons, so modules built from them work under ``torch.func``
(``vmap``, ``functional_call``), which the problem's batched evaluations use.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gradsweep.problems.base import Surrogate, straight_through
from gradsweep.problems.quantizers import BINARY, Staircase, get_quantizer, identity

__all__ = [
    "surrogate_scope", "active_surrogate", "Quantize", "Sign", "Ternary", "TwoBit",
    "binary_weight", "BinaryConv2d", "BinaryLinear", "QUANTIZER_MODULES",
]

#: (inside a scope?, the scope's surrogate); a context variable so threads do not share it
_SCOPE: contextvars.ContextVar[tuple[bool, Surrogate | None]] = contextvars.ContextVar(
    "gradsweep_surrogate_scope", default=(False, None)
)


@contextlib.contextmanager
def surrogate_scope(surrogate: Surrogate | None) -> Iterator[None]:
    """Every quantiser module called inside uses ``surrogate`` (None: the plain step forward).

    :meth:`TorchModuleProblem.loss <gradsweep.problems.torch_module.TorchModuleProblem.loss>`
    wraps its forward in this, with the surrogate the estimator passed.
    """
    token = _SCOPE.set((True, surrogate))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def active_surrogate(own: Surrogate | None) -> Surrogate | None:
    """The surrogate in force: the scope's inside :func:`surrogate_scope`, else ``own``."""
    inside, scoped = _SCOPE.get()
    return scoped if inside else own


def _resolve_surrogate(surrogate: Surrogate | str | None) -> Surrogate | None:
    """A surrogate object from an object, an STE variant name (``"clipped"``) or None."""
    if surrogate is None or isinstance(surrogate, Surrogate):
        return surrogate
    if isinstance(surrogate, str):
        from gradsweep.problems.surrogates import surrogate as ste_surrogate  # the STE family's variants

        return ste_surrogate(surrogate)
    raise TypeError(f"surrogate: expected a Surrogate, an STE variant name or None, got {surrogate!r}")


class Quantize(nn.Module):
    """An activation step ``q`` (a quantiser of :mod:`gradsweep.problems.quantizers`).

    Forward ``q(x)``; backward ``s.derivative(x) * dy`` with ``s`` the surrogate in force
    (:func:`active_surrogate`); with no surrogate, no gradient (the exact derivative of a step
    is 0 almost everywhere). A stochastic surrogate (sr-STE) also replaces the forward.

    Args:
        quantizer: a quantiser name (``binary``, ``ternary``, ``2bit``, ``fp``) or a
            :class:`~gradsweep.problems.quantizers.Staircase`.
        surrogate: the backward outside a :func:`surrogate_scope` (a Surrogate, an STE variant
            name such as ``"clipped"``, or None).
    """

    def __init__(self, quantizer: str | Staircase = "binary", surrogate: Surrogate | str | None = None) -> None:
        super().__init__()
        self.quantize: Callable[[torch.Tensor], torch.Tensor] = (
            get_quantizer(quantizer) if isinstance(quantizer, str) else quantizer
        )
        self.surrogate = _resolve_surrogate(surrogate)

    @property
    def quantizer_name(self) -> str:
        """``binary``, ``ternary``, ``2bit``, ``fp`` or the staircase's own name."""
        return "fp" if self.quantize is identity else getattr(self.quantize, "name", type(self.quantize).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize is identity:
            return x
        surrogate = active_surrogate(self.surrogate)
        if surrogate is None:
            return self.quantize(x)
        return surrogate(x, self.quantize)

    def extra_repr(self) -> str:
        return f"{self.quantizer_name!r}, surrogate={self.surrogate!r}"


class Sign(Quantize):
    """``sign(x)`` with ``sign(0) = +1``, values in {-1, +1}: the binary activation."""

    def __init__(self, surrogate: Surrogate | str | None = None) -> None:
        super().__init__("binary", surrogate)


class Ternary(Quantize):
    """Levels {-1, 0, +1}, thresholds +-0.5 (see :mod:`gradsweep.problems.quantizers`)."""

    def __init__(self, surrogate: Surrogate | str | None = None) -> None:
        super().__init__("ternary", surrogate)


class TwoBit(Quantize):
    """Four uniform levels {-1, -1/3, 1/3, 1} on [-1, 1]."""

    def __init__(self, surrogate: Surrogate | str | None = None) -> None:
        super().__init__("2bit", surrogate)


#: the activation quantiser module classes (the problem counts them; CDG treats them as elementwise)
QUANTIZER_MODULES: tuple[type[nn.Module], ...] = (Quantize,)

_sign = BINARY


def binary_weight(w: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """``alpha_o * sign(W[o])`` row by row (``alpha_o = mean |W[o]|``; 1 when not ``scale``).

    Backward: straight-through with the clip ``1{|W| <= 1}`` (XNOR-Net); alpha exactly.
    """
    q = straight_through(w, _sign(w), (w.abs() <= 1).to(w.dtype))
    if not scale:
        return q
    alpha = w.abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))
    return alpha * q


class BinaryConv2d(nn.Conv2d):
    """``nn.Conv2d`` with binary weights ``Q(W)`` (:func:`binary_weight`); the bias stays real.

    Takes ``nn.Conv2d``'s arguments and ``scale`` (XNOR-Net's per-channel alpha, default True).
    """

    def __init__(self, *args: Any, scale: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = scale

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``Q(w)`` for a weight shaped like this layer's, or for K rows stacked (K, Cin, kh, kw)."""
        return binary_weight(w, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(self.weight), self.bias)


class BinaryLinear(nn.Linear):
    """``nn.Linear`` with binary weights ``Q(W)`` (:func:`binary_weight`); the bias stays real."""

    def __init__(self, *args: Any, scale: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = scale

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``Q(w)`` for a weight shaped like this layer's, or for K rows stacked (K, in)."""
        return binary_weight(w, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(self.weight), self.bias)
