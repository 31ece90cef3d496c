"""The update rules of ``pretrain`` and ``step`` (``sgd | momentum | adam``, declared in
:mod:`gradsweep.experiments`), on dicts of tensors.

Written out instead of using ``torch.optim`` for two reasons: a point is a plain
``dict[str, Tensor]`` that the estimators read (no leaf tensors, no ``.grad``), and the first
``torch.optim`` step imports ``torch._dynamo``, seconds that every fresh Ray worker would pay.
The rules are torch's defaults (``SGD(momentum=0.9)`` without dampening or Nesterov;
``Adam(betas=(0.9, 0.999), eps=1e-8)`` with bias correction); a test checks them against
``torch.optim``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

__all__ = ["Optimizer", "SGD", "Momentum", "Adam", "make"]


class Optimizer:
    """An update rule: ``step(params, grads)`` updates ``params`` in place; ``lr`` may change
    between steps. Subclasses take their declared parameters as keywords."""

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)
        self.steps = 0

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        self.steps += 1
        for name, g in grads.items():
            self.update(name, params[name], g)

    def update(self, name: str, w: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """``w <- w - lr g``."""

    def update(self, name: str, w: torch.Tensor, g: torch.Tensor) -> None:
        w.add_(g, alpha=-self.lr)


class Momentum(Optimizer):
    """``b <- m b + g`` (``b = g`` at the first step), ``w <- w - lr b`` (torch's SGD momentum,
    no dampening, no Nesterov)."""

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = float(momentum)
        self._buf: dict[str, torch.Tensor] = {}

    def update(self, name: str, w: torch.Tensor, g: torch.Tensor) -> None:
        buf = self._buf.get(name)
        buf = g.clone() if buf is None else buf.mul_(self.momentum).add_(g)
        self._buf[name] = buf
        w.add_(buf, alpha=-self.lr)


class Adam(Optimizer):
    """``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
    ``w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` (torch's defaults)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.betas, self.eps = betas, eps
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}

    def update(self, name: str, w: torch.Tensor, g: torch.Tensor) -> None:
        b1, b2 = self.betas
        m = self._m.setdefault(name, torch.zeros_like(w)).lerp_(g, 1 - b1)
        v = self._v.setdefault(name, torch.zeros_like(w)).mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.eps)
        w.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.steps))


def make(name: str, lr: float, config: Mapping[str, Any] | None = None) -> Optimizer:
    """The update rule declared as ``name`` (built-in or a plugin's), with its declared
    parameters taken from ``config`` (e.g. the ``step`` group) where present."""
    from gradsweep import registry

    kind = registry.kind("optimizer", name)  # a ValueError naming an unknown one
    params = {k: config[k] for k in kind.params if config and k in config}
    return registry.implementation("optimizer", name)(lr, **params)
