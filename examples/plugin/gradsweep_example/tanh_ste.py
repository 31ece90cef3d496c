"""``tanh_ste``: a straight-through estimator whose backward is the derivative of tanh(b x).

Forward: the problem's own step activation, unchanged. Backward: every step unit passes
``g'(x) = b * (1 - tanh(b x)^2)`` times the incoming gradient, so ``g = dL/dw`` through that
surrogate. ``b`` (``beta`` > 0) sets the sharpness: large b approaches the exact (zero) gradient,
small b the plain STE scaled by b.
"""

from __future__ import annotations

import torch

from gradsweep.declare import estimator, positive_float
from gradsweep.estimators.autograd import loss_gradient
from gradsweep.estimators.base import Estimator
from gradsweep.problems.base import Surrogate


class TanhDerivative(Surrogate):
    """``g'(x) = b (1 - tanh(b x)^2)``."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * (1.0 - torch.tanh(self.beta * x) ** 2)


class TanhSte(Estimator):
    """The STE gradient through :class:`TanhDerivative` (parameter ``beta``)."""

    beta: float

    def estimate(self, problem, point, batch, layers, generator):
        return loss_gradient(problem, point, batch, layers, surrogate=TanhDerivative(self.beta))


KIND = estimator(
    "tanh_ste",
    impl=f"{__name__}:TanhSte",
    params={"beta": positive_float("sharpness b of tanh(b x)", 2.0)},
    doc="STE with the derivative of tanh(b x): g'(x) = b (1 - tanh(b x)^2)",
    label="tanh-STE b={beta}",
)
