"""Thin XNOR-ResNet-18 as a pure function of named weights (the notes' third experiment).

Architecture (CIFAR style, initial channel ``c``; stage widths c, 2c, 4c, 8c; basic blocks
[2, 2, 2, 2], stride 2 at the first block of stages 2..4)::

    stem:   conv3x3(3 -> c) -> BN                                  full precision
    block:  a1 = sign(BN1(x));  h1 = conv3x3(a1, Q(W1), stride)     binary convs
            a2 = sign(BN2(h1)); h2 = conv3x3(a2, Q(W2))
            out = h2 + shortcut(x)      shortcut: identity, or conv1x1 -> BN (full precision)
    head:   ReLU(BN(x)) -> global mean -> fc(8c -> 10)             full precision

``sign`` is the binary activation with sign(0) = +1; its backward is the surrogate the caller
passes (the ``ste`` estimator's, or the problem's ``ste`` variant during pretraining). ``Q`` is
the identity for ``weights: fp`` and, for ``weights: binary``, XNOR-Net's
``Q(W) = alpha_o * sign(W)`` with ``alpha_o = mean |W[o]|`` per output channel; its backward is
straight-through with the clip ``|W| <= 1`` (XNOR-Net), alpha differentiated exactly.

The *point* holds the weights of every conv and of the classifier, keyed by module name
(``stem``, ``layer1.0.conv1``, ..., ``layer2.0.shortcut``, ``fc``). BN affine parameters, running
statistics and the classifier bias are the problem's fixed ``state``: they are trained by the
pretraining but not estimated by the probe. ``conv:K`` counts the 16 binary block convs from
the input (``conv:1`` = ``layer1.0.conv1``, ``conv:8`` = ``layer2.1.conv2``, ``conv:-2`` =
``layer4.1.conv1``), matching the notes' layer numbering.

BN during the probe uses the running statistics (``bn: running``, the network as it is deployed)
or the statistics of each evaluated batch (``bn: batch``). ``coords: {sample: K}`` restricts every
layer with more than K weights to K of its coordinates drawn from the seed: the point then holds
those K values (1-D) and the rest of the layer is frozen, so every estimator, the lr update and
the cosine all see the same subset.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from gradsweep.declare import without_introduced
from gradsweep.problems.base import Batch, Point, Problem, Surrogate
from gradsweep.problems.surrogates import surrogate as make_surrogate
from gradsweep.problems import XNOR_PRETRAIN
from gradsweep.problems.xnor_cdg import XnorCdgMixin
from gradsweep.problems.xnor_net import (
    Block, architecture, binary_conv_names, binary_sign, binary_weight, Ctx, init_params, logits,
)
from gradsweep.seeding import generator

__all__ = ["XnorResNet", "build", "pretrain", "pretrained", "pretrain_key", "probe_batches"]

class XnorResNet(XnorCdgMixin, Problem):
    """Cross-entropy of the thin XNOR-ResNet-18 on fixed probe batches (see the module docstring)."""

    def __init__(
        self,
        *,
        channels: int,
        binary_weights: bool,
        weights: dict[str, torch.Tensor],
        state: dict[str, torch.Tensor],
        probe_batches: list[tuple[torch.Tensor, torch.Tensor]],
        bn: str = "running",
        coords_sample: int | None = None,
        seed: int = 0,
        records: list[dict[str, Any]] | None = None,
    ) -> None:
        if bn not in ("running", "batch"):
            raise ValueError(f"problem.bn: expected 'running' or 'batch', got {bn!r}")
        self.channels = channels
        self.blocks = architecture(channels)
        self.binary_weights = binary_weights
        self.bn = bn
        self.weights = weights
        self.state = state
        self._batches = probe_batches
        first = next(iter(weights.values()))
        self.device, self.dtype = first.device, first.dtype
        self.indexed_layers = {"conv": binary_conv_names(self.blocks), "linear": ["fc"]}
        #: rows of the pretraining curve (record "pretrain"); empty when not pretrained
        self.records = list(records or [])
        self.subsets: dict[str, torch.Tensor] = {}
        if coords_sample is not None:
            for name, w in weights.items():
                if w.numel() > coords_sample:
                    g = generator(seed, "xnor_coords", name)
                    idx = torch.randperm(w.numel(), generator=g)[:coords_sample].sort().values
                    self.subsets[name] = idx.to(self.device)

    def ctx(self, surrogate: Surrogate | None = None, groups: int = 1) -> Ctx:
        return Ctx(surrogate=surrogate, batch_stats=self.bn == "batch", binary_weights=self.binary_weights, groups=groups)

    def point(self) -> Point:
        return {n: (w.flatten()[self.subsets[n]] if n in self.subsets else w) for n, w in self.weights.items()}

    def full_weights(self, point: Point) -> dict[str, torch.Tensor]:
        """The whole layers of ``point``: sampled coordinates scattered into the frozen weights."""
        out = {}
        for name, w in self.weights.items():
            p = point.get(name, w)
            if name in self.subsets:
                p = w.flatten().scatter(0, self.subsets[name], p).view_as(w)
            out[name] = p
        return out

    def batches(self) -> Iterator[Batch]:
        return iter(self._batches)

    def loss(self, point: Point, batch: Batch, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        x, y = batch
        out = logits(self.blocks, self.full_weights(point), self.state, x, self.ctx(surrogate))
        return F.cross_entropy(out, y)


# ---------------------------------------------------------------------------------------------
# Pretraining with STE, checkpointed and cached


def pretrain_key(cfg: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> dict[str, Any]:
    """Everything that determines the pretrained network (not the probe's bn, batches or coords)."""
    data = cfg["data"]
    return {
        "artefact": "xnor_resnet18_pretrain", "version": 1,
        "channels": cfg["channels"], "weights": cfg["weights"], "ste": cfg["ste"],
        "data": {k: data[k] for k in ("source", "path", "image_size", "train_size")},
        # parameters at their introduced value (until: steps) are left out: old caches stay valid
        "pretrain": without_introduced(XNOR_PRETRAIN, dict(cfg["pretrain"])), "seed": seed, "dtype": str(dtype),
    }


def _lr_at(step: int, pcfg: Mapping[str, Any]) -> float:
    base = float(pcfg["lr"])
    if pcfg["schedule"] == "cosine":
        horizon = int(pcfg["max_steps"] if pcfg["until"] == "plateau" else pcfg["steps"])
        return base * 0.5 * (1 + math.cos(math.pi * step / horizon))
    return base


def _optimizer(params: list[torch.Tensor], pcfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    lr, wd = float(pcfg["lr"]), float(pcfg["weight_decay"])
    kind = pcfg["optimizer"]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind in ("sgd", "momentum"):
        return torch.optim.SGD(params, lr=lr, momentum=0.9 if kind == "momentum" else 0.0, weight_decay=wd)
    raise ValueError(f"problem.pretrain.optimizer: expected adam, sgd or momentum, got {kind!r}")


@torch.no_grad()
def _evaluate(blocks: list[Block], weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
              x: torch.Tensor, y: torch.Tensor, binary: bool, chunk: int = 1000) -> tuple[float, float]:
    ctx = Ctx(binary_weights=binary)
    loss, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        out = logits(blocks, weights, state, x[i:i + chunk], ctx)
        loss += float(F.cross_entropy(out, y[i:i + chunk], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return loss / len(x), correct / len(x)


def _plateaued(losses: list[float], pcfg: Mapping[str, Any]) -> bool:
    """Whether the last ``patience`` evaluations all failed to beat the best before them by the
    relative ``min_delta`` (computed from the curve, so a resumed run decides as an unbroken one)."""
    best, bad = math.inf, 0
    for value in losses:
        if value < best * (1 - float(pcfg["min_delta"])):
            best, bad = value, 0
        else:
            bad += 1
    return bad >= int(pcfg["patience"])


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(
    cfg: Mapping[str, Any],
    data: "Any",
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    checkpoint: Path,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train every weight, BN affine and the classifier bias with STE; return the trained network.

    Returns ``{"weights", "state", "records", "resumed_from"}``. Every ``checkpoint_every`` steps
    the whole training state (parameters, running stats, optimizer state, curve so far) is saved
    to ``checkpoint`` (renamed into place); a later call with the same ``checkpoint`` continues
    from it. Batches are a per-epoch permutation drawn from the seed and the epoch, so a resumed
    run draws the same batches as an uninterrupted one. The curve has one row per epoch (and one
    at the last step): mean training loss and accuracy since the previous row, and the
    validation loss and accuracy with running statistics.
    """
    from gradsweep.data import augment

    pcfg = cfg["pretrain"]
    binary = cfg["weights"] == "binary"
    blocks = architecture(int(cfg["channels"]))
    # until: plateau stops after `patience` validation rows (one per epoch) not below
    # best * (1 - min_delta), or at max_steps; until: steps (the default) runs `steps` steps
    plateau = pcfg["until"] == "plateau"
    steps, bs = int(pcfg["max_steps"] if plateau else pcfg["steps"]), int(pcfg["batch_size"])
    every = int(pcfg["checkpoint_every"])
    surrogate = make_surrogate(cfg["ste"])
    n_train = len(data.train_x)
    per_epoch = max(1, math.ceil(n_train / bs))

    weights, state = init_params(blocks, int(cfg["channels"]), seed, dtype, device)
    trainable = {**weights, **{k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var"))}}
    for t in trainable.values():
        t.requires_grad_(True)
    opt = _optimizer(list(trainable.values()), pcfg)
    start, records, acc = 0, [], {"loss": 0.0, "correct": 0, "seen": 0}
    if checkpoint.exists():
        from gradsweep.cache import load_tensors

        ck = load_tensors(checkpoint, map_location=device)  # tensors only: nothing in it can run
        with torch.no_grad():
            for name, t in {**weights, **state}.items():
                t.copy_(ck["params"][name])
        opt.load_state_dict(ck["optimizer"])
        start, records, acc = ck["step"], ck["records"], ck["acc"]
    resumed_from = start

    for step in range(start, steps):
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n_train, generator=generator(seed, "xnor_pretrain_perm", epoch))
        idx = perm[pos * bs:(pos + 1) * bs].to(data.train_x.device)
        x, y = data.train_x[idx], data.train_y[idx]
        if pcfg["augment"]:
            x = augment(x, generator(seed, "xnor_pretrain_augment", step))
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, pcfg)
        ctx = Ctx(surrogate=surrogate, batch_stats=True, binary_weights=binary, updates={})
        out = logits(blocks, weights, state, x, ctx)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for name, value in ctx.updates.items():
                state[name].copy_(value)
        acc["loss"] += float(loss.detach()) * len(y)
        acc["correct"] += int((out.argmax(1) == y).sum())
        acc["seen"] += len(y)
        done = step + 1
        if done % per_epoch == 0 or done == steps:
            val_loss, val_acc = _evaluate(blocks, weights, state, data.val_x, data.val_y, binary)
            records.append({
                "record": "pretrain", "step": done, "epoch": (done - 1) // per_epoch + 1,
                "loss": acc["loss"] / acc["seen"], "accuracy": acc["correct"] / acc["seen"],
                "val_loss": val_loss, "val_accuracy": val_acc,
            })
            acc = {"loss": 0.0, "correct": 0, "seen": 0}
            if plateau and _plateaued([r["val_loss"] for r in records], pcfg):
                break
        if done % every == 0 and done < steps:
            _save_atomic({"step": done, "records": records, "acc": acc, "optimizer": opt.state_dict(),
                          "params": {n: t.detach().clone() for n, t in {**weights, **state}.items()}}, checkpoint)
        if on_step is not None:
            on_step(done)
    return {
        "weights": {n: t.detach() for n, t in weights.items()},
        "state": {n: t.detach() for n, t in state.items()},
        "records": records,
        "resumed_from": resumed_from,
    }


def pretrained(cfg: Mapping[str, Any], data: Any, *, seed: int, dtype: torch.dtype, device: torch.device,
               cache_dir: Path, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The pretrained network of ``cfg``, trained once per content key and cached.

    The artefact lives in ``<cache_dir>/xnor_pretrain/<key>.pt``; while training, the resumable
    checkpoint is ``<key>.ckpt.pt`` beside it (deleted once the artefact is in place).
    """
    from gradsweep.cache import cache_key, cached_file, load_tensors

    what = pretrain_key(cfg, seed=seed, dtype=dtype)
    folder = Path(cache_dir) / "xnor_pretrain"
    ckpt = folder / f"{cache_key(what)}.ckpt.pt"

    def compute(tmp: Path) -> None:
        result = pretrain(cfg, data, seed=seed, dtype=dtype, device=device, checkpoint=ckpt, on_step=on_step)
        torch.save({k: result[k] for k in ("weights", "state", "records")}, tmp)

    path, _ = cached_file(cache_dir, "xnor_pretrain", what, compute)
    if ckpt.exists():
        ckpt.unlink()
    return load_tensors(path, map_location=device)


# ---------------------------------------------------------------------------------------------
# build


def probe_batches(data: Any, batch_size: int, batches: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` disjoint batches of the validation set, in an order drawn from the seed."""
    need = batch_size * batches
    if need > len(data.val_x):
        raise ValueError(
            f"problem.data: batches x batch_size = {need} exceeds the {len(data.val_x)} validation images"
        )
    perm = torch.randperm(len(data.val_x), generator=generator(seed, "xnor_probe_batches"))[:need]
    perm = perm.to(data.val_x.device)
    return [(data.val_x[perm[i * batch_size:(i + 1) * batch_size]], data.val_y[perm[i * batch_size:(i + 1) * batch_size]])
            for i in range(batches)]


def build(cfg: Mapping[str, Any], *, seed: int, dtype: torch.dtype, device: torch.device, cache_dir: Path) -> XnorResNet:
    """The problem of a canonical ``problem`` config (kind ``xnor_resnet18``)."""
    from gradsweep.data import load

    channels = int(cfg["channels"])
    data_cfg = cfg["data"]
    data = load(data_cfg, seed=seed, train=bool(cfg["pretrain"])).to(device, dtype)
    records: list[dict[str, Any]] = []
    if cfg["pretrain"]:
        trained = pretrained(cfg, data, seed=seed, dtype=dtype, device=device, cache_dir=cache_dir)
        weights, state, records = trained["weights"], trained["state"], trained["records"]
    else:
        weights, state = init_params(architecture(channels), channels, seed, dtype, device)
    problem = XnorResNet(
        channels=channels,
        binary_weights=cfg["weights"] == "binary",
        weights=weights,
        state=state,
        probe_batches=probe_batches(data, int(data_cfg["batch_size"]), int(data_cfg["batches"]), seed),
        bn=cfg["bn"],
        coords_sample=cfg["coords"]["sample"],
        seed=seed,
        records=records,
    )
    if device.type == "cuda":  # stack more perturbed copies per chunk where memory allows
        free, _ = torch.cuda.mem_get_info(device)
        problem.chunk_bytes = max(problem.chunk_bytes, min(free // 4, 16 << 30))
    return problem
