"""The update rules of ``pretrain`` and ``step`` (``sgd | momentum | adam``), on dicts of tensors.

Written out instead of using ``torch.optim`` for two reasons: a point is a plain
``dict[str, Tensor]`` that the estimators read (no leaf tensors, no ``.grad``), and the first
``torch.optim`` step imports ``torch._dynamo``, seconds that every fresh Ray worker would pay.
The rules are torch's defaults (``SGD(momentum=0.9)`` without dampening or Nesterov;
``Adam(betas=(0.9, 0.999), eps=1e-8)`` with bias correction); a test checks them against
``torch.optim``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

__all__ = ["Optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "momentum", "adam")


class Optimizer:
    """``step(params, grads)`` updates ``params`` in place; ``lr`` may change between steps.

    - ``sgd``: ``w <- w - lr g``
    - ``momentum``: ``b <- m b + g`` (``b = g`` at the first step), ``w <- w - lr b``
    - ``adam``: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
      ``w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``
    """

    def __init__(
        self,
        kind: str,
        lr: float,
        *,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {kind!r}")
        self.kind, self.lr, self.momentum, self.betas, self.eps = kind, float(lr), float(momentum), betas, eps
        self.steps = 0
        self._first: dict[str, torch.Tensor] = {}
        self._second: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        self.steps += 1
        for name, g in grads.items():
            w = params[name]
            if self.kind == "sgd":
                w.add_(g, alpha=-self.lr)
            elif self.kind == "momentum":
                buf = self._first.get(name)
                buf = g.clone() if buf is None else buf.mul_(self.momentum).add_(g)
                self._first[name] = buf
                w.add_(buf, alpha=-self.lr)
            else:
                b1, b2 = self.betas
                m = self._first.setdefault(name, torch.zeros_like(w)).lerp_(g, 1 - b1)
                v = self._second.setdefault(name, torch.zeros_like(w)).mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.eps)
                w.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.steps))
