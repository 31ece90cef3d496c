"""The built-in gradient estimators, declared once (imports neither torch nor Ray).

Each :func:`~gradsweep.declare.estimator` below is the one place a kind is declared: its spec
parameters, its implementation class (imported when a cell runs), its display label and how many
loss evaluations one estimate costs (``plan``'s cost model). The classes implement
:class:`~gradsweep.estimators.base.Estimator`; :func:`get` builds one from a config.
"""

from __future__ import annotations

from typing import Any, Mapping

from gradsweep.declare import Choice, Param, estimator, positive_float, positive_int

__all__ = ["KINDS", "Estimator", "get", "registered"]

_SEED = Param("int", 0, "the estimator's own seed, combined with the cell seed and batch", low=0)

_NES = {
    "sigma": positive_float("smoothing scale", 0.01),
    "samples": positive_int("Gaussian directions n", 500),
    "antithetic": Param("bool", False, "use +-u pairs"),
    "shaping": Param("str", "none", "fitness shaping", choices=("none", "centered_rank")),
    "seed": _SEED,
}


def _nes_cost(cfg: Mapping[str, Any], coords: float) -> float:
    return float(cfg["samples"]) * (2.0 if cfg.get("antithetic") else 1.0)


def _random_ste_bounds(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("randomize") == "threshold" and cfg["low"] > cfg["high"]:
        return f"expected low <= high, got low={cfg['low']} high={cfg['high']}"
    return None


KINDS = [
    estimator(
        "autograd", impl="gradsweep.estimators.autograd:Autograd",
        doc="exact gradient (zero through step functions)", label="exact",
    ),
    estimator(
        "ste", impl="gradsweep.estimators.ste:Ste",
        params={"variant": Choice("surrogate", "clipped", "surrogate derivative g'")},
        doc="straight-through estimator family", label="STE {variant}",
    ),
    estimator(
        "cdg", impl="gradsweep.estimators.cdg:CDG",
        params={
            "epsilon": positive_float("finite-difference step", 0.1),
            "mode": Param("str", "central", "central or forward differences", choices=("central", "forward")),
        },
        doc="coordinate discrete gradient (finite differences per coordinate)",
        label="CDG eps={epsilon}",
        cost=lambda cfg, coords: (1.0 if cfg["mode"] == "forward" else 2.0) * coords,
    ),
    estimator(
        "nes", impl="gradsweep.estimators.nes:NES", params=dict(_NES),
        doc="natural evolution strategies / Gaussian smoothing", label="NES sigma={sigma} n={samples}",
        cost=_nes_cost,
    ),
    estimator(
        "sr_ste", impl="gradsweep.estimators.sr_ste:SrSTE",
        params={
            "tau": positive_float(
                "RelaxedBernoulli temperature", 0.1,
                inert="sign(RelaxedBernoulli(p, tau) - 1/2) is Bernoulli(p) whatever tau is, and the backward "
                "is straight-through: cells that differ only in tau compute the same numbers",
            ),
            "samples": positive_int("sampled STE gradients averaged (N)", 1),
            "seed": Param("int", 0, "the estimator's own seed", low=0),
        },
        doc="stochastic-rounding STE", label="sr-STE N={samples}",
        cost=lambda cfg, coords: 3.0 * float(cfg["samples"]),
    ),
    estimator(
        "nes_max_point", impl="gradsweep.estimators.followups:NesMaxPoint",
        params={k: v for k, v in _NES.items() if k != "shaping"},
        doc="step toward the sampled NES point whose loss decreased most",
        label="NES max-point sigma={sigma} n={samples}", cost=_nes_cost,
    ),
    estimator(
        "perturbed_ste", impl="gradsweep.estimators.followups:PerturbedSTE",
        params={
            "variant": Choice("surrogate", "clipped", "surrogate derivative g'"),
            "noise": Param("float", 0.1, "scale of the noise added to the unit STE direction", low=0.0),
            "candidates": positive_int("noisy candidates evaluated (K)", 8),
            "step": positive_float("step length at which candidates are compared", 0.1),
            "seed": Param("int", 0, "the estimator's own seed", low=0),
        },
        doc="STE direction plus noise; the best of K candidates", label="perturbed STE noise={noise} K={candidates}",
        cost=lambda cfg, coords: 3.0 + float(cfg["candidates"]),
    ),
    estimator(
        "random_ste", impl="gradsweep.estimators.followups:RandomSTE",
        params={
            "randomize": Param("str", "threshold", "what is random", choices=("threshold", "noise")),
            "low": positive_float("smallest clip threshold", 0.1, when={"randomize": ("threshold",)}),
            "high": positive_float("largest clip threshold", 1.0, when={"randomize": ("threshold",)}),
            "scale": Param("float", 0.5, "std of the multiplicative noise on g'", low=0.0, when={"randomize": ("noise",)}),
            "seed": Param("int", 0, "the estimator's own seed", low=0),
        },
        doc="a surrogate derivative drawn at random per backward pass", label="random STE {randomize}",
        checks=(_random_ste_bounds,),
    ),
]


def __getattr__(name: str) -> Any:
    # The interface and get() import torch: load them only when asked for.
    if name in ("Estimator", "get", "registered", "check_layers"):
        from gradsweep.estimators import base

        return getattr(base, name)
    raise AttributeError(f"module 'gradsweep.estimators' has no attribute {name!r}")
