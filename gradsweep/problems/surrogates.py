"""Surrogate derivatives of the step activations: the variants of the STE family.

Forward: the problem's step activation (``sign``, or ``ternary`` / ``2bit``), unchanged.
Backward: the incoming gradient times a surrogate derivative ``g'(x)`` of the pre-activation
``x``. Each variant is a :class:`~gradsweep.problems.base.Surrogate` subclass declared as a
``surrogate`` kind in :mod:`gradsweep.problems` (its spec name is ``estimator.variant``, and
``xnor_resnet18``'s ``ste``); :func:`surrogate` builds one by name. They live with the
quantisers they differentiate: a problem that trains with STE needs no estimator.

References: Bengio et al. 2013 (STE); Hubara et al. 2016 (clipped / hardtanh); Liu et al. 2018,
Bi-Real Net (polynomial, "ApproxSign"); Darabi et al. 2018, BNN+ (swish_sign).

The window ``|x| <= t`` is closed: at exactly ``|x| = t`` the clipped derivatives still pass the
gradient (larq's ``_clipped_gradient`` does the same).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from gradsweep.problems.base import Surrogate

__all__ = ["SteSurrogate", "Identity", "Clipped", "Steep2", "Polynomial", "SwishSign", "surrogate", "surrogate_from"]

# -- shared backward pieces ------------------------------------------------------------------


def _inside(x: torch.Tensor, clip: float) -> torch.Tensor:
    """``[|x| <= clip]`` as 0/1 in ``x``'s dtype: the closed window the clipped variants share."""
    return (x.abs() <= clip).to(x.dtype)


def _clipped_gradient(x: torch.Tensor, clip: float, height: float = 1.0) -> torch.Tensor:
    """``height * [|x| <= clip]``: the box derivative of ``clipped`` and ``steep2``."""
    return height * _inside(x, clip)


# -- the variants ----------------------------------------------------------------------------

class SteSurrogate(Surrogate):
    """A deterministic STE surrogate that holds its hyper-parameters (larq style)."""

    #: the spec name, set from the declaration when built by :func:`surrogate`
    variant: str = ""

    def get_config(self) -> dict[str, Any]:
        """``{"variant": ..., <hyper-parameters>}``; ``surrogate(**cfg)`` rebuilds this object."""
        return {"variant": self.variant}

    def __repr__(self) -> str:
        cfg = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "variant")
        return f"{type(self).__name__}({args})"


class Identity(SteSurrogate):
    """g'(x) = 1: the plain straight-through estimator (Bengio et al. 2013)."""

    variant = "identity"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


class Clipped(SteSurrogate):
    """g'(x) = 1 where |x| <= t, else 0 (vanilla / hardtanh STE; "variant STE" with t != 1).

    Args:
        threshold: t > 0, the clip value (1 by default).
    """

    variant = "clipped"

    def __init__(self, threshold: float = 1.0) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold: expected a number > 0, got {threshold!r}")
        self.threshold = float(threshold)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _clipped_gradient(x, self.threshold)

    def get_config(self) -> dict[str, Any]:
        return {"variant": self.variant, "threshold": self.threshold}


class Steep2(SteSurrogate):
    """g'(x) = 2 where |x| <= 0.5, else 0 (the derivative of hardtanh(2x))."""

    variant = "steep2"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _clipped_gradient(x, 0.5, 2.0)


class Polynomial(SteSurrogate):
    """g'(x) = 2 - 2|x| where |x| <= 1, else 0 (ApproxSign, Bi-Real Net, Liu et al. 2018)."""

    variant = "polynomial"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (2.0 - 2.0 * x.abs()) * _inside(x, 1.0)


class SwishSign(SteSurrogate):
    """g'(x) = b (2 - b x tanh(b x / 2)) / (1 + cosh(b x)) (SignSwish, BNN+, Darabi et al. 2018).

    Computed with ``1 / (1 + cosh y) = 2 e^{-|y|} / (1 + e^{-|y|})^2``, which stays finite where
    ``cosh`` overflows (float32, |b x| > 89).

    Args:
        beta: b > 0, the sharpness (5 by default).
    """

    variant = "swish_sign"

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


def surrogate(variant: str, **params: Any) -> Surrogate:
    """The surrogate declared as ``variant`` (built-in or a plugin's) with its hyper-parameters.

    An unknown variant or parameter is a ``ValueError`` naming it and the valid ones.
    """
    from gradsweep import registry

    try:
        kind = registry.kind("surrogate", variant)
    except ValueError as exc:
        raise ValueError(f"variant: {exc}") from None
    unknown = sorted(set(params) - set(kind.params))
    if unknown:
        raise ValueError(
            f"variant {variant!r}: unexpected parameters {unknown}; valid: {sorted(kind.params) or 'none'}"
        )
    obj = registry.implementation("surrogate", variant)(**params)
    if isinstance(obj, SteSurrogate):
        obj.variant = variant
    return obj


def surrogate_from(config: Mapping[str, Any]) -> Surrogate:
    """The surrogate an estimator's canonical config names (``variant`` and that variant's own
    parameters, which the config holds beside the estimator's)."""
    from gradsweep import registry

    variant = config["variant"]
    declared = registry.kind("surrogate", variant).params
    return surrogate(variant, **{k: config[k] for k in declared if k in config})
