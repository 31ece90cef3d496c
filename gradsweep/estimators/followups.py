"""The follow-up estimators raised in the notes' discussion, each with a documented fallback.

- ``nes_max_point``: "do not look for the smoothed function's direction, look for the discrete
  one": sample NES points and step toward the best; fallback, the NES estimate.
- ``perturbed_ste``: perturb the STE direction, evaluate the candidates, keep the best; the STE
  direction itself is always a candidate, so the result is never worse than STE.
- ``random_ste``: make the STE backward random (a random clip threshold, or noise on g'); with
  ``low == high == t`` it is clipped STE with threshold t, with ``scale == 0`` vanilla STE.

"sr-STE then vanilla evaluation" is not an estimator of its own: it is ``sr_ste`` under the
probe's ``measure.evaluate: plain`` (the default).

Directions are compared over all estimated layers together (one flat vector), as the probe
normalises them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradsweep.estimators.base import Estimator, get
from gradsweep.problems.surrogates import Clipped
from gradsweep.estimators.autograd import loss_gradient
from gradsweep.problems.base import Batch, Point, Problem, Surrogate

__all__ = ["NesMaxPoint", "PerturbedSTE", "RandomSTE", "RandomSurrogate"]

#: bytes of sampled directions held at once by nes_max_point (chunking keeps 50,000 samples of
#: a d = 64 toy, 1.6 GB in float32, off the memory ceiling; the directions do not depend on it)
DIRECTION_CHUNK_BYTES = 64 << 20


def _flat(grads: dict[str, torch.Tensor], layers: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].reshape(-1) for n in layers])


def _unflat(vec: torch.Tensor, point: Point, layers: list[str]) -> dict[str, torch.Tensor]:
    """Split ``vec`` (..., P) into per-layer tensors shaped (..., *layer.shape)."""
    out, start = {}, 0
    lead = vec.shape[:-1]
    for n in layers:
        size = point[n].numel()
        out[n] = vec[..., start:start + size].reshape(*lead, *point[n].shape)
        start += size
    return out


class NesMaxPoint(Estimator):
    """Step toward the sampled NES point with the lowest loss.

    With NES's directions ``u_k ~ N(0, I)``, k = 1..n (and ``-u_k`` too when ``antithetic``), let
    ``k* = argmin_k L(w + sigma u_k)``. If ``L(w + sigma u_k*) < L(w)`` the estimate is

        g = -(L(w) - L(w + sigma u_k*)) / (sigma |u_k*|^2) * u_k*

    a descent "gradient" whose direction is ``-u_k*`` (so ``w - lr g_hat`` at
    ``lr = sigma |u_k*|`` is exactly the best sampled point) and whose norm is the slope toward it.
    Fallback, when no sampled point is below ``L(w)``: the NES estimate of the same samples,
    ``1/(n sigma) sum_k L(w + sigma u_k) u_k`` (antithetic: ``1/(2 n sigma) sum_k [L+ - L-] u_k``).
    The directions are exactly those the ``nes`` estimator with the same ``sigma``, ``samples``,
    ``antithetic`` and ``seed`` draws from the same generator, so the two compare on the same
    points, and the fallback equals that NES estimate. Parameters: ``sigma``, ``samples`` (n),
    ``antithetic``, ``seed``.
    """

    sigma: float
    samples: int
    antithetic: bool

    def setup(self) -> None:
        self.nes = get({"kind": "nes", **{k: v for k, v in self.params.items() if k != "kind"}})

    def estimate(
        self, problem: Problem, point: Point, batch: Batch, layers: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        size = sum(point[n].numel() for n in layers)
        ref = point[layers[0]]
        block = self.nes.block
        per_call = max(1, DIRECTION_CHUNK_BYTES // (size * ref.element_size() * block)) * block
        base = self.nes.base_seed(generator)
        with torch.no_grad():
            before = float(problem.loss(point, batch))
            best_loss, best_u = math.inf, None
            nes_sum = torch.zeros(size, dtype=ref.dtype, device=ref.device)
            for start in range(0, self.samples, per_call):
                stop = min(start + per_call, self.samples)
                u = torch.cat(list(self.nes.direction_blocks(
                    base, self.samples, size, start, stop, dtype=ref.dtype, device=ref.device)))
                plus = problem.losses(point, batch, _unflat(self.sigma * u, point, layers))
                if self.antithetic:
                    minus = problem.losses(point, batch, _unflat(-self.sigma * u, point, layers))
                    nes_sum += (plus - minus) @ u / 2
                    cand_losses, cand_u = torch.cat([plus, minus]), torch.cat([u, -u])
                else:
                    nes_sum += plus @ u
                    cand_losses, cand_u = plus, u
                k = int(torch.argmin(cand_losses))
                if float(cand_losses[k]) < best_loss:
                    best_loss, best_u = float(cand_losses[k]), cand_u[k].clone()
            if best_u is not None and best_loss < before:
                g = -(before - best_loss) / (self.sigma * float(best_u @ best_u)) * best_u
            else:
                g = nes_sum / (self.samples * self.sigma)
        return _unflat(g, point, layers)


class PerturbedSTE(Estimator):
    """The best of the STE direction and K noisy copies of it, judged by the loss one step away.

    ``d_0 = g_ste / |g_ste|``; ``d_k = unit(d_0 + noise * xi_k / |xi_k|)``, ``xi_k ~ N(0, I)``,
    k = 1..K. The estimate is ``|g_ste| * d_k*`` with ``k* = argmin_k L(w - step * d_k)`` over
    k = 0..K (ties go to ``d_0``): never worse than STE at that step, and exactly the STE gradient
    when ``noise == 0``. Parameters: the STE ones (``variant``, ``threshold``, ``beta``),
    ``noise``, ``candidates`` (K), ``step``, ``seed``.
    """

    noise: float
    candidates: int
    step: float

    def setup(self) -> None:
        from gradsweep import registry

        ste_keys = registry.registry().group("estimator", "ste").fields  # variant and its parameters
        self.ste = get({"kind": "ste", **{k: v for k, v in self.params.items() if k in ste_keys}})

    def estimate(
        self, problem: Problem, point: Point, batch: Batch, layers: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        g_ste = self.ste.estimate(problem, point, batch, layers, generator)
        flat = _flat(g_ste, layers)
        norm = flat.norm()
        if self.noise == 0 or float(norm) == 0.0:
            return g_ste
        with torch.no_grad():
            d0 = flat / norm
            xi = torch.randn((self.candidates, flat.numel()), generator=generator, device=generator.device,
                             dtype=flat.dtype).to(flat.device)
            cands = d0 + self.noise * xi / xi.norm(dim=1, keepdim=True)
            cands = torch.cat([d0[None], cands / cands.norm(dim=1, keepdim=True)])
            losses = problem.losses(point, batch, _unflat(-self.step * cands, point, layers))
            k = int(torch.argmin(losses))  # the first of equal minima: d_0 wins ties
        if k == 0:
            return g_ste
        return _unflat(norm * cands[k], point, layers)


class RandomSurrogate(Surrogate):
    """A clipped-STE derivative made random at every call (every layer of every backward pass).

    ``threshold``: ``g'(x) = 1{|x| <= t}``, ``t ~ U[low, high]`` (one t per call);
    ``noise``: ``g'(x) = 1{|x| <= 1} * (1 + scale * xi)``, ``xi ~ N(0, 1)`` per entry.
    """

    def __init__(self, randomize: str, generator: torch.Generator, *, low: float = 1.0, high: float = 1.0,
                 scale: float = 0.0) -> None:
        self.randomize, self.generator = randomize, generator
        self.low, self.high, self.scale = low, high, scale

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        if self.randomize == "threshold":
            t = self.low + (self.high - self.low) * float(torch.rand((), generator=g, device=g.device))
            return Clipped(t).derivative(x)
        xi = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)
        return Clipped(1.0).derivative(x) * (1 + self.scale * xi)


class RandomSTE(Estimator):
    """STE with a random surrogate derivative: ``g = grad_w L(w; RandomSurrogate)``.

    ``randomize: threshold`` draws a clip threshold ``t ~ U[low, high]`` per layer and pass
    (``low == high == t``: clipped STE with threshold t); ``randomize: noise`` multiplies vanilla
    STE's g' by ``1 + scale * N(0, 1)`` entrywise (``scale == 0``: vanilla STE).
    Parameters: ``randomize``, ``low``, ``high``, ``scale``, ``seed``.
    """

    randomize: str

    def surrogate(self, generator: torch.Generator) -> RandomSurrogate:
        kw = {k: self.params[k] for k in ("low", "high", "scale") if k in self.params}
        return RandomSurrogate(self.randomize, generator, **kw)

    def estimate(
        self, problem: Problem, point: Point, batch: Batch, layers: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return loss_gradient(problem, point, batch, layers, self.surrogate(generator))

