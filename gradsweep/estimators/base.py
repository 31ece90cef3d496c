"""The estimator interface.

An estimator is a small class that holds its hyper-parameters and returns a gradient estimate
for chosen layers of a problem. Its parameters are declared with the kind (``estimator(...)`` in
:mod:`gradsweep.estimators` for the built-in ones, or in a plugin), where the spec layer
validates them; :func:`get` turns a name, a mapping (``{"kind": "cdg", "epsilon": 0.1}``) or an
instance into an instance, or raises a :class:`ValueError` that names the bad value and the
valid ones (larq's ``quantizers.get``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import torch

from gradsweep.problems.base import Batch, Point, Problem


class Estimator(ABC):
    """Base class. ``__init__`` takes the catalog parameters of this estimator as keywords.

    Subclasses implement :meth:`estimate`. Randomness comes only from the ``generator`` passed
    in, which the experiment seeds from the cell seed, the batch index and the estimator's own
    ``seed``: the same cell gives the same numbers.
    """

    #: the spec name of this instance's kind
    name: str = ""

    def __init__(self, **params: Any) -> None:
        """Direct construction (a notebook, a test): ``params`` are validated and completed by
        the spec layer against this class's declaration. :func:`get` skips that second pass."""
        from gradsweep.spec.validate import validate_estimator  # torch-free; fills defaults

        self._configure(validate_estimator({"kind": _kind_of(type(self)), **params}))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Estimator":
        """An instance from an already canonical config (``kind`` included)."""
        self = cls.__new__(cls)
        self._configure(dict(config))
        return self

    def _configure(self, config: dict[str, Any]) -> None:
        self.params: dict[str, Any] = config
        self.name = config["kind"]
        for key, value in config.items():
            if key != "kind":
                setattr(self, key, value)
        self.setup()

    def setup(self) -> None:
        """Derive state from the parameters (called once they are set; override as needed)."""

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
    """An estimator from its name, its config mapping, or itself.

    The config is validated and completed by the spec layer against the kind's declaration (a
    bad key or value is a ``SpecError``, a ``ValueError``, naming it); the class is the kind's
    implementation, imported on first use.
    """
    if isinstance(identifier, Estimator):
        return identifier
    from gradsweep import registry
    from gradsweep.spec.validate import validate_estimator  # torch-free; fills defaults

    if not isinstance(identifier, (str, Mapping)) or (isinstance(identifier, Mapping) and "kind" not in identifier):
        raise ValueError(f"estimator: expected a name or a mapping with 'kind', got {identifier!r}")
    params = validate_estimator(identifier)
    return registry.implementation("estimator", params["kind"]).from_config(params)


def _kind_of(cls: type) -> str:
    """The estimator kind whose declaration names ``cls`` as its implementation."""
    from gradsweep import registry

    target = f"{cls.__module__}:{cls.__qualname__}"
    for name, kind in registry.kinds("estimator").items():
        if kind.impl is cls or kind.impl == target:
            return name
    raise ValueError(f"{cls.__qualname__} is not the implementation of any declared estimator kind")


def registered() -> dict[str, Any]:
    """Name -> declaration of every estimator kind (built-in and plugins)."""
    from gradsweep import registry

    return dict(registry.kinds("estimator"))
