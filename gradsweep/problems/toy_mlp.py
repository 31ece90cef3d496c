"""The BinaryDuo toy ("2 models / gaussian data"): a student MLP fitting a random teacher.

Teacher and student have the same shape, bias-free linear layers ``d -> d -> ... -> 1``
(``depth`` of them, named ``fc1 .. fc{depth}``, weights shaped (out, in)), with an activation
between consecutive layers and none after the last:

    h0 = x;  z_l = h_{l-1} W_l^T;  h_l = q(z_l) for l < depth;  out = z_depth
    L(W) = mean((out(x; W_student) - out(x; W_teacher))^2)

``q`` is the student's activation (:mod:`gradsweep.problems.quantizers`); the teacher uses
``teacher_activation`` (the student's when null). Every weight is drawn ``N(0, 1/fan_in)`` so that
each pre-activation is about ``N(0, 1)`` for ``x ~ N(0, I)`` and binary ``h``: the clipped STE's
window ``|z| <= 1`` then holds a fair share of the units. Draws (all on the CPU, then moved, so a
seed gives the same teacher, student and data on every device):

- teacher: ``generator(seed, "teacher")``; student: ``generator(seed, "student")``;
- probe batch ``i``: ``x ~ N(0, I)`` of shape (batch_size, d) from ``generator(seed, "batch", i)``,
  ``y = teacher(x)``;
- pretraining step ``s``: fresh inputs from ``generator(seed, "pretrain", s)``.

``pretrain`` trains the student with vanilla STE (clipped, t = 1) on fresh batches, with the
cell's optimizer (``momentum`` is SGD with momentum 0.9), and caches its weights with
:func:`gradsweep.cache.cached_file`, keyed by everything that determines them (the problem config
without ``data``, the seed, the dtype, the torch version): the many cells of a grid that share a
student train it once, and concurrent processes wait for the first. The key leaves the device out
on purpose, so CPU and GPU cells share one student (whichever trained it first). The training
curve (at most :data:`PRETRAIN_ROWS` rows ``record="pretrain"``: ``step``, ``loss``) is kept in
:attr:`ToyMLP.records`, which ``run_cell`` puts first in the cell's table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from gradsweep import catalog
from gradsweep.cache import cached_file, load_tensors
from gradsweep.optimizers import Optimizer
from gradsweep.problems.base import Batch, Point, Problem, Surrogate, default_chunk_bytes
from gradsweep.problems.quantizers import get_quantizer
from gradsweep.problems.toy_batched import ToyBatchedMixin
from gradsweep.seeding import generator

__all__ = ["ToyMLP", "build"]

#: bump when the training procedure changes, so old cached students are not reused
PRETRAIN_FORMAT = 2  # 2: 2-bit levels written exactly (quantizers.Staircase)
#: at most this many ``record="pretrain"`` rows (step, training loss) go into each cell's table
PRETRAIN_ROWS = 100


def _option(cfg: Mapping[str, Any], key: str, group: catalog.Group = catalog.TOY_MLP) -> Any:
    """``cfg[key]``, else the catalog default (a loose config from a test or a notebook)."""
    return group.value(cfg, key, where="problem.")


def _draw_weights(seed: int, role: str, dim: int, depth: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = generator(seed, role)
    shapes = [(dim, dim)] * (depth - 1) + [(1, dim)]
    return {
        f"fc{l}": torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(shape[1])
        for l, shape in enumerate(shapes, start=1)
    }


def _forward(
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    depth: int,
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    h = x
    for l in range(1, depth + 1):
        z = h @ weights[f"fc{l}"].T
        h = activation(z) if l < depth else z
    return h


class ToyMLP(ToyBatchedMixin, Problem):
    """Teacher/student MLP on Gaussian inputs; the point is the student's weights.

    ``loss(point, batch, surrogate=s)`` applies ``s(z, self.quantize)`` at every step activation
    (the STE family's backward); an ``fp`` student has no step function, so ``s`` is not used.
    The batched ``losses`` / ``perturbed_losses`` come from :class:`ToyBatchedMixin`.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        activation: str,
        teacher_activation: str | None,
        batch_size: int,
        batches: int,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if depth < 2:
            raise ValueError(f"depth: expected an integer >= 2, got {depth!r}")
        if dim < 1:
            raise ValueError(f"dim: expected an integer >= 1, got {dim!r}")
        self.dim, self.depth = int(dim), int(depth)
        self.activation = activation
        self.quantize = get_quantizer(activation)
        self.teacher_activation = teacher_activation or activation
        self.teacher_quantize = get_quantizer(self.teacher_activation)
        self.batch_size, self.num_batches = int(batch_size), int(batches)
        self.seed = seed
        self.dtype, self.device = dtype, torch.device(device)
        self.chunk_bytes = default_chunk_bytes(self.device)
        self.teacher = {n: w.to(self.device) for n, w in _draw_weights(seed, "teacher", dim, depth, dtype).items()}
        self.student = {n: w.to(self.device) for n, w in _draw_weights(seed, "student", dim, depth, dtype).items()}
        self.indexed_layers = {"linear": list(self.student)}
        #: per-step training losses of the pretraining that produced ``student`` (empty: raw)
        self.pretrain_losses: list[float] = []
        #: whether :meth:`pretrain` found the student in the cache
        self.pretrain_cache_hit: bool | None = None

    # -- the point and the data -----------------------------------------------------------------
    def point(self) -> Point:
        return dict(self.student)

    def draw_inputs(self, *parts: object, batch_size: int | None = None) -> torch.Tensor:
        """``x ~ N(0, I)`` of shape (batch_size, d) from ``generator(seed, *parts)``."""
        n = self.batch_size if batch_size is None else batch_size
        x = torch.randn(n, self.dim, generator=generator(self.seed, *parts), dtype=self.dtype)
        return x.to(self.device)

    def teacher_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self.teacher, x, self.depth, self.teacher_quantize)

    def batch(self, index: int) -> Batch:
        """Probe batch ``index``: ``(x, teacher(x))``, the same on every call."""
        x = self.draw_inputs("batch", index)
        return x, self.teacher_outputs(x)

    def batches(self) -> Iterator[Batch]:
        for i in range(self.num_batches):
            yield self.batch(i)

    # -- evaluation -------------------------------------------------------------------------
    def loss(self, point: Point, batch: Batch, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        x, y = batch
        if surrogate is not None and self.activation != "fp":
            quantize = self.quantize

            def activation(z: torch.Tensor) -> torch.Tensor:
                return surrogate(z, quantize)
        else:
            activation = self.quantize
        out = _forward(point, x, self.depth, activation)
        return torch.mean((out - y) ** 2)

    # -- pretraining ----------------------------------------------------------------------------
    def pretrain(self, cfg: Mapping[str, Any], *, cache_dir: Path | str) -> None:
        """Replace the student by its vanilla-STE-trained version, computed once per cache key.

        ``cfg`` is the problem's ``pretrain`` group (steps, batch_size, lr, optimizer). The key is
        the problem config without ``data`` (with every default resolved, so a loose config and
        its canonical form share a key), the seed, the dtype and the torch version.
        """
        steps = int(_option(cfg, "steps", catalog.TOY_PRETRAIN))
        batch_size = int(_option(cfg, "batch_size", catalog.TOY_PRETRAIN))
        lr = float(_option(cfg, "lr", catalog.TOY_PRETRAIN))
        optimizer = str(_option(cfg, "optimizer", catalog.TOY_PRETRAIN))
        if optimizer not in catalog.OPTIMIZERS:
            raise ValueError(f"pretrain.optimizer: expected one of {catalog.OPTIMIZERS}, got {optimizer!r}")

        key = {
            "format": PRETRAIN_FORMAT,
            "problem": {
                "kind": "toy_mlp", "dim": self.dim, "depth": self.depth, "activation": self.activation,
                "teacher_activation": self.teacher_activation,
                "pretrain": {"steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer},
            },
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
            "torch": torch.__version__,
        }

        def compute(tmp: Path) -> None:
            weights, losses = self._train(steps, batch_size, lr, optimizer)
            torch.save({"weights": {n: w.cpu() for n, w in weights.items()}, "losses": losses}, tmp)

        path, hit = cached_file(cache_dir, "toy_pretrain", key, compute)
        saved = load_tensors(path, map_location="cpu")
        self.student = {n: w.to(self.device, self.dtype) for n, w in saved["weights"].items()}
        self.pretrain_losses = list(saved["losses"])
        self.pretrain_cache_hit = hit
        every = max(1, math.ceil(steps / PRETRAIN_ROWS))
        self.records = [
            {"record": "pretrain", "step": s + 1, "loss": loss}
            for s, loss in enumerate(self.pretrain_losses)
            if (s + 1) % every == 0 or s + 1 == steps
        ]

    def _train(self, steps: int, batch_size: int, lr: float, optimizer: str) -> tuple[Point, list[float]]:
        """Vanilla-STE training from the raw student (whatever ``self.student`` holds now)."""
        from gradsweep.estimators.ste import Clipped  # the science layer's surrogate, vanilla t = 1

        ste = Clipped(1.0)
        params = {n: w.to(self.device) for n, w in _draw_weights(self.seed, "student", self.dim, self.depth, self.dtype).items()}
        names = list(params)
        opt = Optimizer(optimizer, lr)
        losses: list[float] = []
        for step in range(steps):
            x = self.draw_inputs("pretrain", step, batch_size=batch_size)
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                loss = self.loss(leaves, (x, self.teacher_outputs(x)), surrogate=ste)
                grads = torch.autograd.grad(loss, [leaves[n] for n in names])
            opt.step(params, dict(zip(names, grads)))
            losses.append(float(loss.detach()))
        return params, losses


def build(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path | str,
) -> ToyMLP:
    """The toy of a ``problem: {kind: toy_mlp, ...}`` config, pretrained when it asks."""
    data = dict(cfg.get("data") or {})
    data_group = catalog.TOY_MLP.fields["data"]
    problem = ToyMLP(
        dim=int(_option(cfg, "dim")),
        depth=int(_option(cfg, "depth")),
        activation=str(_option(cfg, "activation")),
        teacher_activation=_option(cfg, "teacher_activation"),
        batch_size=int(_option(data, "batch_size", data_group)),
        batches=int(_option(data, "batches", data_group)),
        seed=seed,
        dtype=dtype,
        device=device,
    )
    pretrain = _option(cfg, "pretrain")
    if pretrain:
        problem.pretrain(pretrain, cache_dir=cache_dir)
    return problem
