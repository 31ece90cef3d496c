"""The straight-through estimator (STE): the gradient through a surrogate derivative.

Forward: the problem's step activation, unchanged. Backward: the incoming gradient times the
surrogate derivative ``g'(x)`` named by ``variant`` (:mod:`gradsweep.problems.surrogates`, or a
plugin's), so ``g = dL/dw`` of ``problem.loss(point, batch, surrogate=...)``.

References: Bengio et al. 2013 (STE); Hubara et al. 2016 (clipped / hardtanh); Liu et al. 2018,
Bi-Real Net (polynomial, "ApproxSign"); Darabi et al. 2018, BNN+ (swish_sign).
"""

from __future__ import annotations


import torch

from gradsweep.estimators.autograd import loss_gradient
from gradsweep.estimators.base import Estimator
from gradsweep.problems.base import Batch, Point, Problem, Surrogate
from gradsweep.problems.surrogates import surrogate_from

__all__ = ["Ste"]


class Ste(Estimator):
    """``g = dL/dw`` with every step activation's backward replaced by the variant's ``g'``.

    Parameters (``estimator: {kind: ste}``): ``variant`` and that variant's own parameters
    (``threshold`` for clipped, ``beta`` for swish_sign).
    """

    #: the forward is the plain sign: ``measure.evaluate: estimator`` judges it plainly
    forward_is_plain = True

    def setup(self) -> None:
        self.surrogate: Surrogate = surrogate_from(self.params)

    def estimate(
        self,
        problem: Problem,
        point: Point,
        batch: Batch,
        layers: list[str],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        return loss_gradient(problem, point, batch, layers, surrogate=self.surrogate)
