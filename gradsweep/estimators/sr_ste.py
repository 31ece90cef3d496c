"""Stochastic-rounding STE (sr-STE): a binary activation that rounds at random, STE backward.

Forward, on one layer's pre-activation ``A`` (the whole tensor, batch included, as in the notes):

    s(A) = A / |max A|  where A >= 0,   A / |min A|  where A < 0        (so s(A) in [-1, 1])
    p    = (s(A) + 1) / 2
    y    = sigmoid((logit p + log u - log(1 - u)) / tau),  u ~ U(0, 1)  (RelaxedBernoulli(tau, p))
    out  = sign(y - 0.5)                                                  (in {-1, +1})

Backward is straight-through with vanilla STE's derivative: ``d out / d A = 1{|A| <= 1}``.

Because ``sigmoid`` is increasing and ``sigmoid(0) = 1/2``, ``y > 1/2`` exactly when
``logit p + logistic noise > 0``, which has probability ``p`` whatever ``tau`` is: the rounded
value is Bernoulli(p) on {-1, +1} with mean ``s(A)`` for every temperature. ``tau`` only shapes
the relaxed value ``y`` (whose mean tends to ``p`` as ``tau`` falls), not the rounding; with the
same seed, cells that differ only in ``tau`` draw the same activations. The parameter is kept
because the notes swept it; docs/estimators.md says what that sweep can and cannot show.

The sr-STE gradient is the mean of ``samples`` (N) such sampled STE gradients, each with its own
draw from the generator; the experiment normalises it. How the loss before and after the update
is judged is the probe's ``measure.evaluate``: ``plain`` (sign; "fixed sr-STE", the notes'
default) or ``estimator`` (this stochastic rounding, one draw per batch shared by every lr, see
:meth:`SrSTE.evaluation_surrogate` and :func:`surrogate_losses`).
"""

from __future__ import annotations

from typing import Callable

import torch

from gradsweep.estimators.autograd import loss_gradient
from gradsweep.estimators.base import Estimator
from gradsweep.problems.surrogates import Clipped
from gradsweep.problems.base import Batch, Point, Problem, Surrogate, straight_through

__all__ = ["StochasticRounding", "SrSTE", "scale_preactivation", "relaxed_bernoulli", "surrogate_losses"]


def scale_preactivation(a: torch.Tensor) -> torch.Tensor:
    """``a`` mapped to [-1, 1]: positives divided by ``|max a|``, negatives by ``|min a|``.

    A side with no entries (all of ``a`` negative, say) keeps its scale at 1 via the clamp, so
    no division by zero can happen.
    """
    tiny = torch.finfo(a.dtype).tiny
    pos = a.amax().abs().clamp_min(tiny)
    neg = a.amin().abs().clamp_min(tiny)
    return torch.where(a >= 0, a / pos, a / neg)


def relaxed_bernoulli(p: torch.Tensor, tau: float, uniform: torch.Tensor) -> torch.Tensor:
    """RelaxedBernoulli(tau, p) by reparametrisation with the given uniforms (torch's formula).

    Written out rather than calling ``torch.distributions.RelaxedBernoulli.rsample`` because that
    draws from the global RNG; here the uniforms come from a seeded generator.
    """
    eps = torch.finfo(uniform.dtype).eps
    u = uniform.clamp(eps, 1 - eps)
    return torch.sigmoid((torch.logit(p) + u.log() - (-u).log1p()) / tau)


#: vanilla STE (clipped, t = 1): the backward of the rounded activation
_VANILLA = Clipped(1.0)


class StochasticRounding(Surrogate):
    """The sr-STE activation as a :class:`Surrogate`, so it plugs into ``problem.loss``.

    Fresh uniforms are drawn from ``generator`` at every call (one per layer and forward pass).
    With ``record=True`` the draws are kept, and :meth:`replay` gives a surrogate that reuses them
    in call order: the same rounding noise for many points (the probe's lrs), also under vmap.
    ``quantize`` is ignored: the forward is the stochastic rounding itself.
    """

    def __init__(
        self,
        tau: float,
        generator: torch.Generator | None = None,
        *,
        record: bool = False,
        noise: list[torch.Tensor] | None = None,
    ) -> None:
        if generator is None and not noise:
            raise ValueError("StochasticRounding needs a generator or recorded noise")
        self.tau = float(tau)
        self.generator = generator
        self.record = record
        self.noise: list[torch.Tensor] = list(noise or [])
        self._calls = 0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _VANILLA.derivative(x)

    def _uniform(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None:  # replaying recorded draws, in call order
            u = self.noise[self._calls % len(self.noise)]
            self._calls += 1
            if u.shape != x.shape:
                raise ValueError(f"sr_ste: recorded noise of shape {tuple(u.shape)} replayed on {tuple(x.shape)}")
            return u
        g = self.generator
        u = torch.rand(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)
        if self.record:
            self.noise.append(u)
        return u

    def rounded(self, x: torch.Tensor) -> torch.Tensor:
        """The forward value in {-1, +1} (no gradient)."""
        x = x.detach()
        p = (scale_preactivation(x) + 1) / 2
        y = relaxed_bernoulli(p, self.tau, self._uniform(x))
        return torch.where(y > 0.5, torch.ones_like(x), -torch.ones_like(x))

    def __call__(self, x: torch.Tensor, quantize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        return straight_through(x, self.rounded(x), self.derivative(x))

    def replay(self) -> "StochasticRounding":
        """A surrogate that reuses this one's recorded draws (call ``record=True`` first)."""
        if not self.noise:
            raise ValueError("sr_ste: nothing recorded to replay (construct with record=True and run a forward)")
        return StochasticRounding(self.tau, noise=self.noise)


def surrogate_losses(
    problem: Problem,
    point: Point,
    batch: Batch,
    deltas: dict[str, torch.Tensor],
    surrogate: Surrogate,
) -> torch.Tensor:
    """``[L(w + delta_k; surrogate) for k]``, vmapped in chunks like :meth:`Problem.losses`.

    For judging losses with a non-plain forward (``measure.evaluate: estimator``): the surrogate
    must be deterministic (a replaying :class:`StochasticRounding`), since vmap forbids drawing.
    """
    k_total = next(iter(deltas.values())).shape[0]
    per_point = sum(p.numel() * p.element_size() for p in point.values())
    chunk = max(1, int(problem.chunk_bytes // max(per_point * 4, 1)))

    def one(d: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = {n: (p + d[n] if n in d else p) for n, p in point.items()}
        return problem.loss(moved, batch, surrogate=surrogate)

    batched = torch.func.vmap(one)
    with torch.no_grad():
        return torch.cat([
            batched({n: v[start:start + chunk] for n, v in deltas.items()})
            for start in range(0, k_total, chunk)
        ])


def require_binary(problem: Problem, name: str) -> None:
    """Stochastic rounding to {-1, +1} replaces a *binary* activation; refuse the others."""
    activation = getattr(problem, "activation", "binary")
    if activation != "binary":
        raise ValueError(
            f"estimator {name}: needs problem.activation 'binary' (it rounds to -1/+1), got {activation!r}"
        )


class SrSTE(Estimator):
    """Stochastic-rounding STE: ``g = (1/N) sum_{j=1..N} grad_w L(w; sr_j)``.

    ``sr_j`` is the :class:`StochasticRounding` activation with its own uniforms (drawn in turn
    from the generator); each term is an STE gradient through that sampled forward. Parameters:
    ``tau`` (RelaxedBernoulli temperature), ``samples`` (N), ``seed``. Only for problems whose
    activation is ``binary``.
    """

    tau: float
    samples: int

    def estimate(
        self, problem: Problem, point: Point, batch: Batch, layers: list[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        require_binary(problem, self.name)
        total = {n: torch.zeros_like(point[n]) for n in layers}
        for _ in range(self.samples):
            grads = loss_gradient(problem, point, batch, layers, StochasticRounding(self.tau, generator))
            for n in layers:
                total[n] += grads[n]
        return {n: g / self.samples for n, g in total.items()}

    def evaluation_surrogate(
        self, problem: Problem, point: Point, batch: Batch, generator: torch.Generator
    ) -> StochasticRounding:
        """The forward that judges losses under ``measure.evaluate: estimator``.

        One draw of rounding noise for ``batch``, recorded by a forward at ``point`` and replayed
        for every point judged on this batch, so loss before and after share their randomness.
        """
        require_binary(problem, self.name)
        recorder = StochasticRounding(self.tau, generator, record=True)
        with torch.no_grad():
            problem.loss(point, batch, surrogate=recorder)
        return recorder.replay()
