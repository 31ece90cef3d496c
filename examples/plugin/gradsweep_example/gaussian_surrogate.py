"""``gaussian``: a surrogate derivative for the whole STE family.

``g'(x) = 2 / (s sqrt(2 pi)) * exp(-x^2 / (2 s^2))``: a Gaussian bump of width ``s`` (``scale``
> 0) whose integral is 2, the height of sign's jump from -1 to +1, so the surrogate is the
derivative of ``2 Phi(x / s) - 1`` (a smoothed sign). Any estimator that takes a ``variant``
(``ste``, ``perturbed_ste``) can use it: ``{kind: ste, variant: gaussian, scale: 0.5}``.
"""

from __future__ import annotations

import math

import torch

from gradsweep.declare import positive_float, surrogate
from gradsweep.problems.surrogates import SteSurrogate


class GaussianDerivative(SteSurrogate):
    """``g'(x) = 2 / (s sqrt(2 pi)) exp(-x^2 / (2 s^2))``."""

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = float(scale)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        return 2.0 / (s * math.sqrt(2.0 * math.pi)) * torch.exp(-(x * x) / (2.0 * s * s))

    def get_config(self) -> dict:
        return {"variant": self.variant, "scale": self.scale}


KIND = surrogate(
    "gaussian",
    impl=f"{__name__}:GaussianDerivative",
    params={"scale": positive_float("width s of the Gaussian bump", 0.5)},
    doc="g'(x) = 2 / (s sqrt(2 pi)) exp(-x^2 / (2 s^2)), the derivative of 2 Phi(x / s) - 1",
)
