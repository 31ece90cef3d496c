"""The BinaryDuo toy ("2 models / gaussian data"): a student MLP fitting a random teacher.

Teacher and student have the same shape, bias-free linear layers ``d -> d -> ... -> 1``
(``depth`` of them, named ``fc1 .. fc{depth}``, weights shaped (out, in)), with an activation
between consecutive layers and none after the last:

    h0 = x;  z_l = h_{l-1} W_l^T;  h_l = q(z_l) for l < depth;  out = z_depth
    L(W) = mean((out(x; W_student) - out(x; W_teacher))^2)

``q`` is the student's activation (:mod:`gradsweep.problems.quantizers`); the teacher uses
``teacher_activation`` (the student's when null). With ``init: normal`` (the default) every weight
is drawn ``N(0, 1/fan_in)`` so that each pre-activation is about ``N(0, 1)`` for ``x ~ N(0, I)``
and binary ``h``; ``init: torch_default`` draws ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` as
PyTorch's ``nn.Linear`` does, the notes' initialisation (sqrt(3) smaller: the notes' loss scale,
about 0.7 at d = 32 rather than 2). Draws (all on the CPU, then moved, so a
seed gives the same teacher, student and data on every device):

- teacher: ``generator(seed, "teacher")``; student: ``generator(seed, "student")``;
- probe batch ``i``: ``x ~ N(0, I)`` of shape (batch_size, d) from ``generator(seed, "batch", i)``,
  ``y = teacher(x)``;
- pretraining step ``s``: fresh inputs from ``generator(seed, "pretrain", s)``; the held-out
  batch of ``pretrain.until: plateau``: ``generator(seed, "pretrain_eval")``.

``pretrain`` trains the student with vanilla STE (clipped, t = 1) on fresh batches, with the
cell's optimizer (``momentum`` is SGD with momentum 0.9), and caches its weights with
:func:`gradsweep.cache.cached_file`, keyed by everything that determines them (the problem config
without ``data``, the seed, the dtype, the torch version): the many cells of a grid that share a
student train it once, and concurrent processes wait for the first. The key leaves the device out
on purpose, so CPU and GPU cells share one student (whichever trained it first). The training
curve (at most :data:`PRETRAIN_ROWS` rows ``record="pretrain"``: ``step``, ``loss``, plus every
held-out evaluation of a plateau rule as ``val_loss``: the last row is the step the training
stopped at) is kept in
:attr:`ToyMLP.records`, which ``run_cell`` puts first in the cell's table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from gradsweep import catalog
from gradsweep.cache import cached_file, load_tensors
from gradsweep.declare import without_introduced
from gradsweep.optimizers import make as make_optimizer
from gradsweep.problems.base import Batch, Point, Problem, Surrogate, default_chunk_bytes
from gradsweep.problems.quantizers import get_quantizer
from gradsweep.problems.surrogates import Clipped
from gradsweep.problems.toy_batched import ToyBatchedMixin
from gradsweep.seeding import generator

__all__ = ["ToyMLP", "build"]

#: bump when the training procedure changes, so old cached students are not reused
PRETRAIN_FORMAT = 2  # 2: 2-bit levels written exactly (quantizers.Staircase)
#: at most this many ``record="pretrain"`` rows (step, training loss) go into each cell's table
PRETRAIN_ROWS = 100


def _draw_weights(
    seed: int, role: str, dim: int, depth: int, dtype: torch.dtype, init: str = "normal"
) -> dict[str, torch.Tensor]:
    """``normal``: N(0, 1/fan_in); ``torch_default``: nn.Linear's kaiming-uniform with a = sqrt(5),
    i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the notes initialised both nets."""
    g = generator(seed, role)
    shapes = [(dim, dim)] * (depth - 1) + [(1, dim)]
    if init == "torch_default":
        return {
            f"fc{l}": (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) / math.sqrt(shape[1])
            for l, shape in enumerate(shapes, start=1)
        }
    if init != "normal":
        raise ValueError(f"problem.init: expected normal or torch_default, got {init!r}")
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
        init: str = "normal",
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
        self.init = init
        self.teacher = {n: w.to(self.device) for n, w in _draw_weights(seed, "teacher", dim, depth, dtype, init).items()}
        self.student = {n: w.to(self.device) for n, w in _draw_weights(seed, "student", dim, depth, dtype, init).items()}
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

        ``cfg`` is the problem's canonical ``pretrain`` group: batch_size, lr, optimizer and the
        stop rule (``until: steps`` with ``steps``; ``until: plateau`` with patience, min_delta,
        max_steps, eval_every: stop when the loss on a held-out batch has not improved for
        ``patience`` evaluations). The key is the problem config without ``data`` (parameters at
        their ``introduced`` value left out, so students cached before ``init`` and ``until``
        existed are still found), the seed, the dtype and the torch version.
        """
        rule = dict(cfg)
        problem_key = {
            "kind": "toy_mlp", "dim": self.dim, "depth": self.depth, "activation": self.activation,
            "teacher_activation": self.teacher_activation, "init": self.init, "pretrain": rule,
        }
        key = {
            "format": PRETRAIN_FORMAT,
            "problem": without_introduced(catalog.PROBLEMS["toy_mlp"], problem_key),
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
            "torch": torch.__version__,
        }

        def compute(tmp: Path) -> None:
            weights, losses, evals = self._train(rule)
            torch.save({"weights": {n: w.cpu() for n, w in weights.items()}, "losses": losses, "evals": evals}, tmp)

        path, hit = cached_file(cache_dir, "toy_pretrain", key, compute)
        saved = load_tensors(path, map_location="cpu")
        self.student = {n: w.to(self.device, self.dtype) for n, w in saved["weights"].items()}
        self.pretrain_losses = list(saved["losses"])
        self.pretrain_cache_hit = hit
        evals = {int(s): float(v) for s, v in saved.get("evals", [])}
        steps = len(self.pretrain_losses)
        every = max(1, math.ceil(steps / PRETRAIN_ROWS))
        self.records = [
            {"record": "pretrain", "step": s + 1, "loss": loss, **({"val_loss": evals[s + 1]} if s + 1 in evals else {})}
            for s, loss in enumerate(self.pretrain_losses)
            if (s + 1) % every == 0 or s + 1 == steps or s + 1 in evals
        ]

    def _train(self, rule: Mapping[str, Any]) -> tuple[Point, list[float], list[list[float]]]:
        """Vanilla-STE training from the raw student: ``(weights, training loss per step,
        [[step, held-out loss], ...])``. ``until: steps`` runs ``steps`` steps and evaluates
        nothing (as before the rule existed); ``until: plateau`` evaluates the plain-sign loss on
        one held-out batch (``generator(seed, "pretrain_eval")``) every ``eval_every`` steps and
        stops after ``patience`` evaluations that are not below ``best * (1 - min_delta)``, or at
        ``max_steps``."""
        ste = Clipped(1.0)  # vanilla STE
        plateau = rule["until"] == "plateau"
        steps = int(rule["max_steps"] if plateau else rule["steps"])
        batch_size = int(rule["batch_size"])
        raw = _draw_weights(self.seed, "student", self.dim, self.depth, self.dtype, self.init)
        params = {n: w.to(self.device) for n, w in raw.items()}
        names = list(params)
        opt = make_optimizer(str(rule["optimizer"]), float(rule["lr"]))
        losses: list[float] = []
        evals: list[list[float]] = []
        if plateau:
            x_eval = self.draw_inputs("pretrain_eval", batch_size=batch_size)
            held_out = (x_eval, self.teacher_outputs(x_eval))
            best, bad = math.inf, 0
        for step in range(steps):
            x = self.draw_inputs("pretrain", step, batch_size=batch_size)
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                loss = self.loss(leaves, (x, self.teacher_outputs(x)), surrogate=ste)
                grads = torch.autograd.grad(loss, [leaves[n] for n in names])
            opt.step(params, dict(zip(names, grads)))
            losses.append(float(loss.detach()))
            done = step + 1
            if plateau and (done % int(rule["eval_every"]) == 0 or done == steps):
                with torch.no_grad():
                    value = float(self.loss(params, held_out))
                evals.append([done, value])
                if value < best * (1 - float(rule["min_delta"])):
                    best, bad = value, 0
                else:
                    bad += 1
                    if bad >= int(rule["patience"]):
                        break
        return params, losses, evals


def build(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path | str,
) -> ToyMLP:
    """The toy of a canonical ``problem: {kind: toy_mlp, ...}`` config, pretrained when it asks."""
    problem = ToyMLP(
        dim=int(cfg["dim"]),
        depth=int(cfg["depth"]),
        activation=str(cfg["activation"]),
        teacher_activation=cfg["teacher_activation"],
        batch_size=int(cfg["data"]["batch_size"]),
        batches=int(cfg["data"]["batches"]),
        seed=seed,
        dtype=dtype,
        device=device,
        init=str(cfg["init"]),
    )
    pretrain = cfg["pretrain"]
    if pretrain:
        problem.pretrain(pretrain, cache_dir=cache_dir)
    return problem
