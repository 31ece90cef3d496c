"""The straight-through estimator (STE) family.

Forward: the problem's step activation (``sign``, or ``ternary`` / ``2bit``), unchanged.
Backward: the incoming gradient times a surrogate derivative ``g'(x)`` of the pre-activation
``x``. Each variant is a :class:`~gradsweep.problems.base.Surrogate` subclass registered under its
spec name (``estimator.variant``); :func:`surrogate` builds one by name, and the ``ste`` estimator
is the gradient of ``problem.loss(point, batch, surrogate=...)``.

References: Bengio et al. 2013 (STE); Hubara et al. 2016 (clipped / hardtanh); Liu et al. 2018,
Bi-Real Net (polynomial, "ApproxSign"); Darabi et al. 2018, BNN+ (swish_sign).

The window ``|x| <= t`` is closed: at exactly ``|x| = t`` the clipped derivatives still pass the
gradient (larq's ``_clipped_gradient`` does the same).
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, TypeVar

import torch

from gradsweep.estimators.autograd import loss_gradient
from gradsweep.estimators.base import Estimator, register
from gradsweep.problems.base import Batch, Point, Problem, Surrogate

__all__ = [
    "SteSurrogate", "Identity", "Clipped", "Steep2", "Polynomial", "SwishSign",
    "SURROGATES", "surrogate", "Ste",
]

# -- shared backward pieces ------------------------------------------------------------------


def _inside(x: torch.Tensor, clip: float) -> torch.Tensor:
    """``[|x| <= clip]`` as 0/1 in ``x``'s dtype: the closed window the clipped variants share."""
    return (x.abs() <= clip).to(x.dtype)


def _clipped_gradient(x: torch.Tensor, clip: float, height: float = 1.0) -> torch.Tensor:
    """``height * [|x| <= clip]``: the box derivative of ``clipped`` and ``steep2``."""
    return height * _inside(x, clip)


# -- the variants ----------------------------------------------------------------------------

SURROGATES: dict[str, type["SteSurrogate"]] = {}

S = TypeVar("S", bound=type["SteSurrogate"])


def _register_variant(name: str):
    def wrap(cls: S) -> S:
        cls.variant = name
        SURROGATES[name] = cls
        return cls

    return wrap


class SteSurrogate(Surrogate):
    """A deterministic STE surrogate that holds its hyper-parameters (larq style)."""

    variant: ClassVar[str]

    def get_config(self) -> dict[str, Any]:
        """``{"variant": ..., <hyper-parameters>}``; ``surrogate(**cfg)`` rebuilds this object."""
        return {"variant": self.variant}

    def __repr__(self) -> str:
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "variant")
        return f"{type(self).__name__}({args})"


@_register_variant("identity")
class Identity(SteSurrogate):
    """g'(x) = 1: the plain straight-through estimator (Bengio et al. 2013)."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


@_register_variant("clipped")
class Clipped(SteSurrogate):
    """g'(x) = 1 where |x| <= t, else 0 (vanilla / hardtanh STE; "variant STE" with t != 1).

    Args:
        threshold: t > 0, the clip value (1 by default).
    """

    def __init__(self, threshold: float = 1.0) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold: expected a number > 0, got {threshold!r}")
        self.threshold = float(threshold)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _clipped_gradient(x, self.threshold)

    def get_config(self) -> dict[str, Any]:
        return {"variant": self.variant, "threshold": self.threshold}


@_register_variant("steep2")
class Steep2(SteSurrogate):
    """g'(x) = 2 where |x| <= 0.5, else 0 (the derivative of hardtanh(2x))."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _clipped_gradient(x, 0.5, 2.0)


@_register_variant("polynomial")
class Polynomial(SteSurrogate):
    """g'(x) = 2 - 2|x| where |x| <= 1, else 0 (ApproxSign, Bi-Real Net, Liu et al. 2018)."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (2.0 - 2.0 * x.abs()) * _inside(x, 1.0)


@_register_variant("swish_sign")
class SwishSign(SteSurrogate):
    """g'(x) = b (2 - b x tanh(b x / 2)) / (1 + cosh(b x)) (SignSwish, BNN+, Darabi et al. 2018).

    Computed with ``1 / (1 + cosh y) = 2 e^{-|y|} / (1 + e^{-|y|})^2``, which stays finite where
    ``cosh`` overflows (float32, |b x| > 89).

    Args:
        beta: b > 0, the sharpness (5 by default).
    """

    def __init__(self, beta: float = 5.0) -> None:
        if not beta > 0:
            raise ValueError(f"beta: expected a number > 0, got {beta!r}")
        self.beta = float(beta)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        b = self.beta
        y = b * x
        e = torch.exp(-y.abs())
        inv_one_plus_cosh = 2.0 * e / (1.0 + e) ** 2
        return b * (2.0 - y * torch.tanh(y / 2.0)) * inv_one_plus_cosh

    def get_config(self) -> dict[str, Any]:
        return {"variant": self.variant, "beta": self.beta}


def surrogate(variant: str, **params: Any) -> SteSurrogate:
    """The STE surrogate called ``variant`` with its hyper-parameters.

    An unknown variant or parameter is a ``ValueError`` naming it and the valid ones.
    """
    if variant not in SURROGATES:
        near = difflib.get_close_matches(str(variant), SURROGATES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"variant: unknown STE variant {variant!r}{hint} (known: {', '.join(SURROGATES)})")
    cls = SURROGATES[variant]
    try:
        return cls(**params)
    except TypeError:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(
            f"variant {variant!r}: unexpected parameters {sorted(params)}; valid: {valid or 'none'}"
        ) from None


# -- the estimator ---------------------------------------------------------------------------


@register("ste")
class Ste(Estimator):
    """``g = dL/dw`` with every step activation's backward replaced by the variant's ``g'``.

    Parameters (catalog ``estimator: {kind: ste}``): ``variant`` and its hyper-parameter
    (``threshold`` for clipped, ``beta`` for swish_sign).
    """

    #: the forward is the plain sign: ``measure.evaluate: estimator`` judges it plainly
    forward_is_plain = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        extra = {k: v for k, v in self.params.items() if k not in ("kind", "variant")}
        self.surrogate: SteSurrogate = surrogate(self.params["variant"], **extra)

    def estimate(
        self,
        problem: Problem,
        point: Point,
        batch: Batch,
        layers: list[str],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        return loss_gradient(problem, point, batch, layers, surrogate=self.surrogate)
