"""The estimator interface and its registry.

An estimator is a small class that holds its hyper-parameters (validated against
:data:`gradsweep.catalog.ESTIMATORS`), is registered under its spec name by :func:`register`, and
returns a gradient estimate for chosen layers of a problem. :func:`get` turns a name, a mapping
(``{"kind": "cdg", "epsilon": 0.1}``) or an instance into an instance, or raises a
:class:`ValueError` that names the bad value and the valid ones (larq's ``quantizers.get``).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import torch

from gradsweep.problems.base import Batch, Point, Problem

_REGISTRY: dict[str, type["Estimator"]] = {}

E = TypeVar("E", bound=type["Estimator"])


def register(name: str):
    """Class decorator: make the estimator available to specs under ``name``."""

    def wrap(cls: E) -> E:
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type["Estimator"]]:
    """Name -> class of every registered estimator (importing the implementations first)."""
    import gradsweep.estimators  # noqa: F401  (registers the built-in estimators)

    return dict(_REGISTRY)


class Estimator(ABC):
    """Base class. ``__init__`` takes the catalog parameters of this estimator as keywords.

    Subclasses implement :meth:`estimate`. Randomness comes only from the ``generator`` passed
    in, which the experiment seeds from the cell seed, the batch index and the estimator's own
    ``seed``: the same cell gives the same numbers.
    """

    name: ClassVar[str]

    def __init__(self, **params: Any) -> None:
        from gradsweep.spec.validate import validate_estimator  # torch-free; fills defaults

        self.params: dict[str, Any] = validate_estimator({"kind": self.name, **params})
        for key, value in self.params.items():
            if key != "kind":
                setattr(self, key, value)

    def get_config(self) -> dict[str, Any]:
        """The canonical parameters, ``kind`` included; ``get(e.get_config())`` rebuilds ``e``."""
        return dict(self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "kind")
        return f"{self.name}({args})"

    @property
    def label(self) -> str:
        """A short text naming the estimator and its settings, for the ``reference`` column."""
        return repr(self)

    @abstractmethod
    def estimate(
        self,
        problem: Problem,
        point: Point,
        batch: Batch,
        layers: list[str],
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """The (unnormalised) gradient estimate for each of ``layers``, shaped like the layer."""


def check_layers(point: Point, layers: Sequence[str]) -> None:
    """Raise one ``ValueError`` naming the first of ``layers`` that ``point`` does not have."""
    for name in layers:
        if name not in point:
            raise ValueError(f"params: unknown layer {name!r}; valid layers: {', '.join(point)}")


def get(identifier: "str | Mapping[str, Any] | Estimator") -> Estimator:
    """An estimator from its name, its config mapping, or itself."""
    if isinstance(identifier, Estimator):
        return identifier
    if isinstance(identifier, str):
        identifier = {"kind": identifier}
    if not isinstance(identifier, Mapping) or "kind" not in identifier:
        raise ValueError(f"estimator: expected a name or a mapping with 'kind', got {identifier!r}")
    registry = registered()
    kind = identifier["kind"]
    if kind not in registry:
        near = difflib.get_close_matches(str(kind), registry, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"estimator: unknown kind {kind!r}{hint} (known: {', '.join(sorted(registry))})")
    params = {k: v for k, v in identifier.items() if k != "kind"}
    return registry[kind](**params)
