"""What an estimator and an experiment may ask of a problem.

A problem is a loss that is a *pure function of named parameter tensors* (its layers), in the
style of ``torch.func.functional_call``: the point ``w`` is a ``dict[str, Tensor]`` that the
problem gives and the estimators perturb, never module state. That lets CDG and NES evaluate many
perturbed copies in one batched call.

Three evaluation entry points, from general to fast:

- :meth:`Problem.loss`: one point, one batch; with a ``surrogate`` its step functions get that
  surrogate derivative in the backward pass (the STE family, sr-STE).
- :meth:`Problem.losses`: K points ``w + delta_k`` at once (NES). The default vmaps
  :meth:`loss` in chunks of :attr:`chunk_bytes`; problems override it with a batched forward.
- :meth:`Problem.perturbed_losses`: K points that each move *one coordinate* of one layer (CDG).
  The default builds one-hot deltas and calls :meth:`losses`; problems override it with their
  structure (a rank-one change of one output unit; only rows whose activation flips).
- :meth:`Problem.perturbed_loss_changes`: the same moves, returned as ``L(w + delta e_i) - L(w)``.
  CDG uses this so that a small change is not the difference of two large, rounded losses. The
  default subtracts :meth:`loss` from :meth:`perturbed_losses`; problems that can compute the
  change directly (the toy) override it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Sequence

import torch

Point = dict[str, torch.Tensor]
Batch = Any  # whatever the problem's loss takes: (x, y) tensors for the toy and the ResNet, None for Rosenbrock


class Surrogate(ABC):
    """A step function's forward value with a chosen derivative in the backward pass.

    ``quantize(x)`` is the forward (e.g. ``sign``); ``derivative(x)`` is g'(x). The default
    :meth:`__call__` is straight-through: value ``quantize(x)``, gradient ``g'(x) * dy``.
    Stochastic surrogates (sr-STE) override :meth:`__call__`.
    """

    @abstractmethod
    def derivative(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, quantize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return straight_through(x, quantize(x), self.derivative(x))


def straight_through(x: torch.Tensor, value: torch.Tensor, derivative: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, ``derivative * dy`` as the gradient with respect to ``x``.

    Written with detach rather than a custom ``autograd.Function`` so it composes with
    ``torch.func.grad`` and ``vmap``.
    """
    return value.detach() + (x - x.detach()) * derivative.detach()


def default_chunk_bytes(device: torch.device) -> int:
    """The memory of one batched evaluation that runs fastest on ``device``.

    On a GPU, large batches fill the device (1 GiB). On a CPU a chunk's activations should stay
    near the caches: measured on the toy at d = 64, batch 16,000 (binary), NES took 2.3-2.5 ms
    per direction with 8-64 MiB chunks, 3.0 ms with 128 MiB and 3.4 ms with 256 MiB.
    """
    return 1 << 30 if torch.device(device).type == "cuda" else 32 << 20


class Problem(ABC):
    """A loss over named parameter groups, its batches, and its layer names.

    Subclasses set ``self.device``, ``self.dtype`` and hold the point returned by :meth:`point`.
    ``chunk_bytes`` bounds the memory of one batched evaluation; problems set it from
    :func:`default_chunk_bytes` of their device.
    """

    device: torch.device
    dtype: torch.dtype
    chunk_bytes: int = 1 << 30
    #: how layer selectors "linear:K" / "conv:K" count: the kind and, in order from the input,
    #: the names they index (set by subclasses)
    indexed_layers: dict[str, list[str]] = {}
    #: rows the problem produced while being built (e.g. a pretraining curve, ``record="pretrain"``);
    #: ``run_cell`` puts them first in the cell's table
    records: list[dict[str, Any]] = []

    # -- the point and its layers -------------------------------------------------------------
    @abstractmethod
    def point(self) -> Point:
        """The current parameters, every named group, ordered from the input."""

    def layer_names(self) -> list[str]:
        return list(self.point())

    def select_layers(self, selection: str | Sequence[str]) -> list[str]:
        """Resolve ``"all"`` or a list of names / ``linear:K`` / ``conv:K`` to layer names.

        K is 1-based from the input; negative K counts from the end. Raises ``ValueError`` naming
        the selector and the valid names.
        """
        names = self.layer_names()
        if selection == "all":
            return names
        if isinstance(selection, str):
            selection = [selection]
        out: list[str] = []
        for sel in selection:
            m = re.fullmatch(r"(linear|conv):(-?\d+)", sel)
            if m:
                kind, k = m.group(1), int(m.group(2))
                indexed = self.indexed_layers.get(kind, [])
                if not indexed or k == 0 or abs(k) > len(indexed):
                    raise ValueError(
                        f"params: {sel!r} selects no layer: this problem has {len(indexed)} {kind} layers"
                        + (f" ({', '.join(indexed)})" if indexed else "")
                    )
                name = indexed[k - 1] if k > 0 else indexed[k]
            elif sel in names:
                name = sel
            else:
                raise ValueError(f"params: unknown layer {sel!r}; valid layers: {', '.join(names)}")
            if name not in out:
                out.append(name)
        return out

    # -- data -----------------------------------------------------------------------------------
    @abstractmethod
    def batches(self) -> Iterator[Batch]:
        """The probe's batches, the same on every call (drawn from the seed)."""

    # -- evaluation -------------------------------------------------------------------------
    @abstractmethod
    def loss(self, point: Point, batch: Batch, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        """Scalar loss at ``point`` on ``batch``; ``surrogate`` sets the backward of step functions."""

    def losses(self, point: Point, batch: Batch, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[L(w + delta_k) for k]``: ``deltas[name]`` has a leading K axis; absent layers are unmoved."""
        k_total = next(iter(deltas.values())).shape[0]
        per_point = sum(p.numel() for p in point.values()) * point[next(iter(point))].element_size()
        chunk = max(1, int(self.chunk_bytes // max(per_point * 4, 1)))

        def one(d: dict[str, torch.Tensor]) -> torch.Tensor:
            moved = {n: (p + d[n] if n in d else p) for n, p in point.items()}
            return self.loss(moved, batch)

        batched = torch.func.vmap(one)
        out = [
            batched({n: v[start:start + chunk] for n, v in deltas.items()})
            for start in range(0, k_total, chunk)
        ]
        return torch.cat(out)

    def perturbed_losses(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k})`` for each k, where ``index`` is flat into ``point[layer]``."""
        w = point[layer]
        k_total = index.numel()
        per_point = w.numel() * w.element_size()
        chunk = max(1, int(self.chunk_bytes // max(per_point * 4, 1)))
        out = []
        for start in range(0, k_total, chunk):
            idx = index[start:start + chunk]
            onehot = torch.zeros((idx.numel(), w.numel()), device=w.device, dtype=w.dtype)
            onehot[torch.arange(idx.numel(), device=w.device), idx] = delta[start:start + chunk]
            out.append(self.losses(point, batch, {layer: onehot.view(idx.numel(), *w.shape)}))
        return torch.cat(out)

    def perturbed_loss_changes(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k}) - L(w)`` for each k (see :meth:`perturbed_losses`).

        Override where the change can be computed without forming both losses: the difference of
        two rounded losses loses the digits the change shares with them.
        """
        return self.perturbed_losses(point, batch, layer, index, delta) - self.loss(point, batch)
