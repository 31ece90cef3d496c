"""``sigmoid``: a surrogate derivative for the whole STE family.

``g'(x) = 2 a s(a x) (1 - s(a x))``, the derivative of ``2 s(a x) - 1`` (a sigmoid rescaled to
(-1, 1)), with ``s`` the logistic function and ``a`` = ``alpha`` > 0. Any estimator that takes a
``variant`` (``ste``, ``perturbed_ste``) can use it: ``{kind: ste, variant: sigmoid, alpha: 4}``.
"""

from __future__ import annotations

import torch

from gradsweep.declare import positive_float, surrogate
from gradsweep.problems.surrogates import SteSurrogate


class SigmoidDerivative(SteSurrogate):
    """``g'(x) = 2 a s(a x) (1 - s(a x))``."""

    def __init__(self, alpha: float = 4.0) -> None:
        self.alpha = float(alpha)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha * x)
        return 2.0 * self.alpha * s * (1.0 - s)

    def get_config(self) -> dict:
        return {"variant": self.variant, "alpha": self.alpha}


KIND = surrogate(
    "sigmoid",
    impl=f"{__name__}:SigmoidDerivative",
    params={"alpha": positive_float("sharpness a of the sigmoid", 4.0)},
    doc="g'(x) = 2 a s(a x) (1 - s(a x)), the derivative of 2 s(a x) - 1",
)
