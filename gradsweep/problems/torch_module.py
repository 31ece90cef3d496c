"""Bring your own model: any ``torch.nn.Module`` as a gradsweep problem (kind ``torch_module``).

The point is the module's parameters by name (``module.named_parameters()``, in registration
order; a parameter with ``requires_grad=False`` is fixed state, not estimated), and the loss is
``criterion(functional_call(module, point, x), y)``: cross-entropy for integer class labels, MSE
(the mean over every output entry) for real targets. The module runs in ``eval()`` mode
(BatchNorm with its running statistics, no dropout), so each sample's output depends on that
sample alone. Step activations are the quantiser modules of :mod:`gradsweep.nn`: inside
:meth:`TorchModuleProblem.loss` they use the estimator's surrogate (the STE family, sr-STE, the
follow-ups); NES and CDG see the plain step.

Layers (``params:``): a parameter name (``features.0.weight``), a module name meaning its
``weight`` (``features.0``), ``conv:K`` / ``linear:K``: the K-th ``nn.Conv2d`` / ``nn.Linear``
(their binary versions included) in registration order, 1-based, negative from the end.

Batched evaluation:

- :meth:`~TorchModuleProblem.losses` (NES, the probe's lr scans): ``torch.func.vmap`` of the
  functional forward over the K points, in chunks sized by the forward's activation memory.
- :meth:`~TorchModuleProblem.perturbed_loss_changes` (CDG), fast path: when ``torch.fx`` traces
  the module into a *chain* (every value after a cut point depends only on that point: Sequential
  models, and forwards written as ``x = self.conv1(x); x = self.bn1(x); ...``), and the moved
  parameter belongs to a ``Conv2d`` / ``Linear`` (binary or not; its weight or bias) or a
  BatchNorm (weight or bias) called once as a stage of that chain:

  1. the chain up to every cut is run once per (point, batch) and cached;
  2. moving one coordinate changes one output channel ``o`` of that layer. For a weight it is a
     rank-one update of the cached output (``d`` times the input entries the weight multiplies,
     ``F.unfold`` for a conv; for XNOR weights the row's new alpha and the one sign that may
     flip, see :class:`_RankOne`); with a user's own row-wise weight quantiser, the K moved
     channels come from one conv with K output channels (the K moved rows, re-quantised). Never
     a forward per coordinate;
  3. stages that act channel by channel (BatchNorm, the quantisers, elementwise activations,
     pooling, dropout) are applied to those K channels only;
  4. at the next stage that mixes channels, only the (sample, coordinate) pairs whose channel
     ``o`` changed are recomputed (a binary activation flips in few): each such pair patches
     channel ``o`` into its sample's cached activation; when that next stage is an ungrouped
     ``Conv2d`` / ``Linear`` (binary or not), its output is the cached one plus the layer applied to the one
     changed channel (``W[:, o]``), so even it is not run in full; the rest of the chain runs on
     the stacked pairs, and a pair adds ``(l_new - l_old) / B`` to its coordinate's change.
     A coordinate that changes no sample's channel has a change of exactly 0.

  Everything else (a skip connection around the moved layer, a module called twice, grouped
  convs, a custom loss) uses batched functional evaluation: one-hot moves through the vmapped
  :meth:`~TorchModuleProblem.losses`. A chain whose remaining stages are not all standard layers
  is checked once per layer for per-sample independence (a sample's loss computed alone equals its
  loss in the batch) before the fast path is used for it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from gradsweep.nn import BinaryConv2d, BinaryLinear, Quantize, surrogate_scope
from gradsweep.problems.base import Batch, Point, Problem, Surrogate, default_chunk_bytes
from gradsweep.seeding import derive_seed, generator

__all__ = [
    "TorchModuleProblem", "TorchModuleConfig", "read_config", "build", "make_module", "builtin_batches",
    "LOSSES", "DATA_SOURCES",
]

#: criteria by name; "auto": cross-entropy for integer targets, MSE otherwise
LOSSES = ("auto", "cross_entropy", "mse")
#: built-in data (``data: {kind: ...}``) when no plugin provides the data factory
DATA_SOURCES = ("synthetic_images", "gaussian")


# ---------------------------------------------------------------------------------------------
# The problem


class TorchModuleProblem(Problem):
    """A user's module, a list of ``(x, y)`` batches and a loss (see the module docstring).

    Args:
        module: the network; moved to ``device``/``dtype`` and put in ``eval()`` mode.
        batches: the probe's batches ``(x, y)``: ``x`` a float tensor (cast to ``dtype``), ``y``
            integer labels (cross-entropy) or real targets (MSE).
        loss: ``"auto"``, ``"cross_entropy"`` or ``"mse"``.
        seed: the cell seed (kept for fresh training batches of a built-in data source).
    """

    def __init__(
        self,
        module: nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        loss: str = "auto",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
        name: str = "torch_module",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
        self.name = name
        self.device, self.dtype, self.seed = torch.device(device), dtype, seed
        self.chunk_bytes = default_chunk_bytes(self.device)
        self.module = module.to(device=self.device, dtype=dtype).eval()
        self.params = {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError(f"{name}: the module has no trainable parameters to estimate")
        self._batches = [self._checked_batch(b, i) for i, b in enumerate(batches)]
        if not self._batches:
            raise ValueError(f"{name}: the data gave no batches")
        targets = self._batches[0][1]
        if loss not in LOSSES:
            raise ValueError(f"{name}: loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        if loss == "auto":
            loss = "mse" if targets.is_floating_point() else "cross_entropy"
        self.criterion = loss
        self.indexed_layers = _indexed_layers(self.module, self.params)
        self.module_weights = {
            m: f"{m}.weight" for m, _ in self.module.named_modules() if f"{m}.weight" in self.params and m
        }
        kinds = sorted({q.quantizer_name for q in self.module.modules() if isinstance(q, Quantize)})
        #: the activation quantisers present ("binary" when all are; sr-STE needs that)
        self.activation = kinds[0] if len(kinds) == 1 else ("fp" if not kinds else "mixed: " + ", ".join(kinds))
        self.chain = _Chain.trace(self.module)
        self._runner = _Runner(self.module, self.chain) if self.chain is not None else None
        self._prefix_cache: tuple[tuple, dict[str, Any]] | None = None
        self._activation_bytes: dict[tuple, int] = {}
        self._per_sample_ok: dict[str, bool] = {}
        self._check_forward()

    def _checked_batch(self, batch: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise ValueError(f"{self.name}: data batch {i}: expected a pair (x, y) of tensors, got {type(batch).__name__}")
        x, y = batch
        x = x.to(device=self.device, dtype=self.dtype) if x.is_floating_point() else x.to(self.device)
        y = y.to(device=self.device, dtype=self.dtype) if y.is_floating_point() else y.to(self.device)
        if len(x) != len(y):
            raise ValueError(f"{self.name}: data batch {i}: {len(x)} inputs but {len(y)} targets")
        return x, y

    def _check_forward(self) -> None:
        """One plain forward now, so a module that does not fit its data fails at build time."""
        x, y = self._batches[0]
        try:
            with torch.no_grad():
                self.sample_losses(self.params, (x, y))
        except Exception as err:
            raise ValueError(
                f"{self.name}: the module's forward on the data failed ({type(err).__name__}: {err}); "
                f"input {tuple(x.shape)}, targets {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}, "
                f"loss {self.criterion}"
            ) from None

    # -- the point and its layers ------------------------------------------------------------
    def point(self) -> Point:
        return dict(self.params)

    def select_layers(self, selection: str | Sequence[str]) -> list[str]:
        """Also accepts a module name for its ``weight`` (``features.0`` -> ``features.0.weight``)."""
        if isinstance(selection, str) and selection != "all":
            selection = [selection]
        if not isinstance(selection, str):
            selection = [self.module_weights.get(s, s) if s not in self.params else s for s in selection]
        return super().select_layers(selection)

    def batches(self) -> Iterator[Batch]:
        return iter(self._batches)

    # -- evaluation ---------------------------------------------------------------------------
    def forward(self, point: Point, x: torch.Tensor, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        """The module's output at ``point``; quantiser modules use ``surrogate`` (None: plain)."""
        with surrogate_scope(surrogate):
            return torch.func.functional_call(self.module, dict(point), (x,))

    def _per_sample(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each sample's loss; the problem's loss is their mean."""
        if self.criterion == "cross_entropy":
            return F.cross_entropy(out, y, reduction="none")
        return (out - y.reshape(out.shape)).pow(2).reshape(out.shape[0], -1).mean(1)

    def sample_losses(self, point: Point, batch: Batch, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        x, y = batch
        return self._per_sample(self.forward(point, x, surrogate=surrogate), y)

    def loss(self, point: Point, batch: Batch, *, surrogate: Surrogate | None = None) -> torch.Tensor:
        return self.sample_losses(point, batch, surrogate=surrogate).mean()

    def accuracy(self, point: Point, batch: Batch) -> torch.Tensor:
        """Top-1 accuracy (classification only; the train experiment logs it)."""
        if self.criterion != "cross_entropy":
            return torch.tensor(float("nan"))
        x, y = batch
        return (self.forward(point, x).argmax(1) == y).to(self.dtype).mean()

    def losses(self, point: Point, batch: Batch, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[L(w + delta_k)]``: the functional forward vmapped over the K points, chunked to
        :attr:`chunk_bytes` by the forward's activation memory (the weights are the small part)."""
        k_total = next(iter(deltas.values())).shape[0]
        moved_bytes = sum(v[0].numel() * v.element_size() for v in deltas.values())
        per_copy = 3 * self._forward_bytes(batch) + 2 * moved_bytes
        chunk = max(1, int(self.chunk_bytes // max(per_copy, 1)))

        def one(d: dict[str, torch.Tensor]) -> torch.Tensor:
            moved = {n: (p + d[n] if n in d else p) for n, p in point.items()}
            return self.loss(moved, batch)

        batched = torch.func.vmap(one)
        with torch.no_grad():
            return torch.cat([
                batched({n: v[start:start + chunk] for n, v in deltas.items()})
                for start in range(0, k_total, chunk)
            ])

    def _forward_bytes(self, batch: Batch) -> int:
        """Bytes of every module output in one plain forward on ``batch`` (measured once per shape)."""
        x = batch[0]
        key = (tuple(x.shape), x.dtype)
        if key not in self._activation_bytes:
            total = [x.numel() * x.element_size()]

            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    total[0] += out.numel() * out.element_size()

            leaves = [m for m in self.module.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                with torch.no_grad():
                    self.forward(self.params, x)
            finally:
                for h in handles:
                    h.remove()
            self._activation_bytes[key] = total[0]
        return self._activation_bytes[key]

    def perturbed_losses(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        plan = self._fast_plan(point, batch, layer)
        if plan is None:
            return super().perturbed_losses(point, batch, layer, index, delta)
        return plan["prefix"]["loss"] + self._chain_changes(plan, point, index, delta)

    def perturbed_loss_changes(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k}) - L(w)``: the chain's fast path where it applies (see the
        module docstring), else batched one-hot moves minus the base loss."""
        plan = self._fast_plan(point, batch, layer)
        if plan is None:
            with torch.no_grad():
                return super().perturbed_losses(point, batch, layer, index, delta) - self.loss(point, batch)
        return self._chain_changes(plan, point, index, delta)

    # -- the chain's fast path ----------------------------------------------------------------
    @property
    def cdg_bytes(self) -> int:
        """Memory of one chunk of CDG's fast path: 4 x :attr:`chunk_bytes`. Its chunks are many
        small gathers and elementwise passes, for which bigger chunks paid on this 2-core CPU: a
        binary conv's 1,152 moves took 2.5-4x longer with 32 MiB chunks than with 128 MiB (under
        heavy shared load, so the ratio is rough)."""
        return 4 * self.chunk_bytes

    def fast_path(self, layer: str) -> str | None:
        """Why ``layer`` has no chain fast path (None: it has one, structurally)."""
        if self.chain is None:
            return "the module does not trace into a chain of stages (torch.fx)"
        if self.criterion not in ("cross_entropy", "mse"):
            return f"loss {self.criterion!r} is not a mean over samples"
        return self.chain.why_not(layer, self.module)

    def _fast_plan(self, point: Point, batch: Batch, layer: str) -> dict[str, Any] | None:
        if layer not in point:
            raise ValueError(f"params: unknown layer {layer!r}; valid layers: {', '.join(point)}")
        if self.fast_path(layer) is not None:
            return None
        stage, attr = self.chain.owner[layer]
        prefix = self._prefix(point, batch)
        owner = self.module.get_submodule(self.chain.targets[stage])
        dims = prefix["acts"][stage].dim()
        if isinstance(owner, nn.Conv2d):
            want = (4,)
        elif isinstance(owner, nn.Linear):
            want = (2,)  # channels on axis 1 only for (B, features)
        else:
            want = (2, 3, 4, 5)  # BatchNorm: channels on axis 1 whatever the rank
        if dims not in want:
            return None
        mixing = self.chain.next_mixing(stage, self.module)
        if layer not in self._per_sample_ok:  # structural: checked once per layer
            self._per_sample_ok[layer] = self.chain.all_standard(mixing, self.module) or self._suffix_is_per_sample(
                point, prefix, mixing)
        if not self._per_sample_ok[layer]:
            return None
        return {"stage": stage, "attr": attr, "mixing": mixing, "prefix": prefix, "layer": layer}

    def _run(self, point: Point, h: torch.Tensor, start: int, stop: int | None = None,
             keep: bool = False) -> Any:
        """Stages ``start .. stop-1`` of the chain on ``h`` at ``point`` (plain steps)."""
        runner = self._runner
        params = {f"net.{n}": t for n, t in point.items()}
        with surrogate_scope(None), torch.no_grad():
            return torch.func.functional_call(runner, params, (h,), {"start": start, "stop": stop, "keep": keep})

    def _prefix(self, point: Point, batch: Batch) -> dict[str, Any]:
        """Every stage's input for the base point, its per-sample losses: once per (point, batch)."""
        key = (id(batch[0]), id(batch[1]), tuple((n, id(t), t._version) for n, t in point.items()))
        if self._prefix_cache is not None and self._prefix_cache[0] == key:
            return self._prefix_cache[1]
        x, y = batch
        acts = self._run(point, x, 0, None, keep=True)  # acts[j]: input of stage j; acts[-1]: output
        ce = self._per_sample(acts[-1], y)
        value = {"acts": acts, "ce": ce, "loss": ce.mean(), "y": y, "_keep": (batch, dict(point))}
        self._prefix_cache = (key, value)
        return value

    def _suffix_is_per_sample(self, point: Point, prefix: dict[str, Any], start: int) -> bool:
        """Whether two samples run alone from stage ``start`` get the losses they get in the batch."""
        h, ce = prefix["acts"][start], prefix["ce"]
        few = min(2, h.shape[0])
        alone = self._per_sample(self._run(point, h[:few], start), prefix["y"][:few])
        return bool(torch.allclose(alone, ce[:few], rtol=1e-4, atol=1e-6 * float(ce.abs().max() + 1)))

    @torch.no_grad()
    def _chain_changes(self, plan: dict[str, Any], point: Point, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        chain, module = self.chain, self.module
        stage, attr, mixing, pre = plan["stage"], plan["attr"], plan["mixing"], plan["prefix"]
        layer_module = module.get_submodule(chain.targets[stage])
        acts, y = pre["acts"], pre["y"]
        index = index.reshape(-1).to(self.device)
        delta = delta.reshape(-1).to(device=self.device, dtype=self.dtype)
        w = point[plan["layer"]]
        a = acts[stage]
        b = a.shape[0]
        # one moved coordinate holds a column (B, one channel) at every stage up to ``mixing``
        per_coordinate = max(acts[j][0, 0].numel() for j in range(stage + 1, mixing + 1)) * b * a.element_size() * 12
        chunk = max(1, int(self.cdg_bytes // max(per_coordinate, 1)))
        changes = torch.zeros(index.numel(), device=self.device, dtype=self.dtype)
        channelwise = [(module.get_submodule(chain.targets[j]), chain.targets[j]) for j in range(stage + 1, mixing)]
        rank_one = _rank_one(layer_module, attr, point, plan["layer"], a, acts[stage + 1], pre)
        for start in range(0, index.numel(), chunk):
            idx, d = index[start:start + chunk], delta[start:start + chunk]
            if rank_one is not None:
                o, new, same = rank_one.moved(idx, d)
            else:
                o, new = _moved_channels(layer_module, attr, point, plan["layer"], w, a, acts[stage + 1], idx, d)
                same = None
            for m, target in channelwise:
                new = _channelwise(m, new, o, point, target)
                same = None if same is None else _channelwise(m, same, o, point, target)
            base = acts[mixing][:, o]  # (B, k, ...)
            # ``same``: the unmoved channel by the same arithmetic as ``new``, so that rounding
            # alone never counts as a change
            flipped = (new != (base if same is None else same)).reshape(b, o.numel(), -1).any(2)
            b_idx, k_idx = flipped.nonzero(as_tuple=True)
            self._changed_pairs(point, pre, mixing, new, base, o, b_idx, k_idx, start, changes, b)
        return changes

    def _changed_pairs(self, point: Point, pre: dict[str, Any], mixing: int, new: torch.Tensor,
                       base: torch.Tensor, o: torch.Tensor, b_idx: torch.Tensor, k_idx: torch.Tensor,
                       start: int, changes: torch.Tensor, b: int) -> None:
        """Recompute the (sample, coordinate) pairs whose channel changed, from stage ``mixing`` on."""
        acts, y, chain = pre["acts"], pre["y"], self.chain
        n_stages = len(chain.targets)
        h_in = acts[mixing]
        next_linear = (mixing < n_stages and chain.plain_linear(mixing, self.module)
                       and h_in.dim() == (4 if isinstance(self.module.get_submodule(chain.targets[mixing]), nn.Conv2d) else 2))
        per_pair = max(h_in[0].numel(), acts[min(mixing + 1, n_stages)][0].numel()) * h_in.element_size() * 8
        step = max(1, int(self.cdg_bytes // per_pair))
        for first in range(0, b_idx.numel(), step):
            bi, ki = b_idx[first:first + step], k_idx[first:first + step]
            p = bi.numel()
            if next_linear:  # the next layer's output, patched by the one changed input channel
                m = self.module.get_submodule(chain.targets[mixing])
                dcol = (new[bi, ki] - base[bi, ki]).unsqueeze(1)  # (p, 1, ...)
                h = acts[mixing + 1][bi] + _one_channel(m, point, chain.targets[mixing], dcol, o[ki])
                rest = mixing + 1
            else:
                h = h_in[bi].clone()
                h[torch.arange(p, device=h.device), o[ki]] = new[bi, ki]
                rest = mixing
            out = self._run(point, h, rest) if rest < n_stages else h
            ce = self._per_sample(out, y[bi])
            changes.index_add_(0, start + ki, (ce - pre["ce"][bi]) / b)


def _moved_channels(m: nn.Module, attr: str, point: Point, name: str, w: torch.Tensor, a: torch.Tensor,
                    out: torch.Tensor, idx: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, new)``: the output channel each move changes and its K new values (B, K, ...)."""
    k = idx.numel()
    ar = torch.arange(k, device=idx.device)
    prefix = name[: -len(attr)]
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        bias = point.get(prefix + "bias", m.bias)
        if attr == "bias":
            o = idx
            shape = (1, k) + (1,) * (out.dim() - 2)
            return o, out[:, o] + d.view(shape)
        per_row = w[0].numel()
        o = torch.div(idx, per_row, rounding_mode="floor")
        rows = w.reshape(w.shape[0], per_row)[o].clone()
        rows[ar, idx % per_row] += d
        rows = rows.view(k, *w.shape[1:])
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            rows = m.quantized_weight(rows)
        b_o = bias[o] if bias is not None else None
        if isinstance(m, nn.Conv2d):
            return o, m._conv_forward(a, rows, b_o)
        return o, F.linear(a, rows, b_o)
    # BatchNorm weight / bias: channel o of the normalised input, with the moved affine entry
    o = idx
    weight = point.get(prefix + "weight", m.weight)[o].clone()
    bias = point.get(prefix + "bias", m.bias)[o].clone()
    (weight if attr == "weight" else bias).add_(d)
    shape = (1, k) + (1,) * (a.dim() - 2)
    norm = (a[:, o] - m.running_mean[o].view(shape)) / torch.sqrt(m.running_var[o].view(shape) + m.eps)
    return o, norm * weight.view(shape) + bias.view(shape)


class _RankOne:
    """Moves of one weight of a Conv2d / Linear as rank-one updates of the cached output.

    With ``cols[:, j]`` the input entries that weight ``j`` of a row multiplies (``F.unfold``
    for a conv), moving ``W[o, j]`` by ``d`` gives, for full-precision weights,
    ``out[:, o] + d * cols[:, j]``; for binary weights ``Q(W)[o] = alpha_o sign(W[o])``,
    ``alpha'_o * (S[:, o] + (sign(w') - sign(w)) * cols[:, j]) + bias_o`` with ``S`` the layer
    applied with ``sign(W)`` (cached) and ``alpha'_o`` the moved row's mean ``|W[o]|``.
    O(B x spatial) per move instead of a K-channel conv over every input channel.
    """

    def __init__(self, m: nn.Module, w: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                 out: torch.Tensor, cache: dict[str, Any]) -> None:
        self.w, self.out = w.reshape(w.shape[0], -1), out
        self.binary = isinstance(m, (BinaryConv2d, BinaryLinear))
        self.scale = getattr(m, "scale", False)
        if "cols" not in cache:
            if isinstance(m, nn.Conv2d):
                cache["cols"] = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, per_row, L)
            else:
                cache["cols"] = a.unsqueeze(2)  # (B, in, 1)
            if self.binary:
                signs = _sign_of(w)
                s = m._conv_forward(a, signs, None) if isinstance(m, nn.Conv2d) else F.linear(a, signs)
                cache["S"] = s.reshape(s.shape[0], s.shape[1], -1)
        self.cols, self.S = cache["cols"], cache.get("S")
        self.bias = bias
        self.spatial = out.shape[2:]

    def moved(self, idx: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        per_row = self.w.shape[1]
        o = torch.div(idx, per_row, rounding_mode="floor")
        j = idx % per_row
        cols = self.cols[:, j]  # (B, K, L)
        shape = (1, -1, 1)
        b, k = cols.shape[0], idx.numel()
        if not self.binary:
            base = self.out.reshape(b, self.out.shape[1], -1)[:, o]
            return o, (base + d.view(shape) * cols).view(b, k, *self.spatial), None
        w_old = self.w[o, j]
        w_new = w_old + d
        flip = (_sign_of(w_new) - _sign_of(w_old)).view(shape)
        if self.scale:
            abs_sum = self.w.abs().sum(1)
            alpha_old = (abs_sum / per_row)[o]
            alpha_new = (abs_sum[o] + w_new.abs() - w_old.abs()) / per_row
        else:
            alpha_old = alpha_new = torch.ones_like(d)
        s_o = self.S[:, o]
        bias = 0 if self.bias is None else self.bias[o].view(shape)
        new = alpha_new.view(shape) * (s_o + flip * cols) + bias
        same = alpha_old.view(shape) * s_o + bias
        return o, new.view(b, k, *self.spatial), same.view(b, k, *self.spatial)


def _sign_of(w: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, as the binary weights use it."""
    from gradsweep.problems.quantizers import get_quantizer

    return get_quantizer("binary")(w)


def _rank_one(m: nn.Module, attr: str, point: Point, name: str, a: torch.Tensor, out: torch.Tensor,
              prefix: dict[str, Any]) -> _RankOne | None:
    """The rank-one path for a weight of ``m`` where its arithmetic is known, else None."""
    if attr != "weight" or not isinstance(m, (nn.Conv2d, nn.Linear)):
        return None
    if isinstance(m, nn.Conv2d) and (not isinstance(m.padding, tuple) or m.padding_mode != "zeros"):
        return None
    for cls in (BinaryConv2d, BinaryLinear):
        if isinstance(m, cls) and type(m).quantized_weight is not cls.quantized_weight:
            return None  # a user's own weight quantiser: the K-row path re-quantises rows instead
    cache = prefix.setdefault(("rank_one", name), {})
    bias = point.get(name[: -len("weight")] + "bias", m.bias)
    return _RankOne(m, point[name], bias, a, out, cache)


def _channelwise(m: nn.Module, h: torch.Tensor, o: torch.Tensor, point: Point, target: str) -> torch.Tensor:
    """Stage ``m`` applied to columns ``h[:, k]`` that are its channels ``o[k]``."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (h.dim() - 2)
        weight = point.get(f"{target}.weight", m.weight)
        bias = point.get(f"{target}.bias", m.bias)
        y = (h - m.running_mean[o].view(shape)) / torch.sqrt(m.running_var[o].view(shape) + m.eps)
        if weight is not None:
            y = y * weight[o].view(shape) + bias[o].view(shape)
        return y
    return m(h)  # elementwise or per-channel pooling: no parameters, channels independent


def _one_channel(m: nn.Module, point: Point, target: str, dcol: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Plain conv/linear ``m`` applied to a change confined to input channel ``o[p]`` of pair p
    (``dcol`` (P, 1, ...)): ``W[:, o]`` times it, no bias. One grouped conv for all pairs."""
    weight = point.get(f"{target}.weight", m.weight)
    if isinstance(m, (BinaryConv2d, BinaryLinear)):
        weight = m.quantized_weight(weight)
    p = dcol.shape[0]
    if isinstance(m, nn.Conv2d):
        cols = weight[:, o].transpose(0, 1)  # (P, Cout, kh, kw)
        cols = cols.reshape(p * weight.shape[0], 1, *weight.shape[2:])
        x = dcol.reshape(1, p, *dcol.shape[2:])
        if m.padding_mode != "zeros":
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
            pad: Any = 0
        else:
            pad = m.padding
        out = F.conv2d(x, cols, None, m.stride, pad, m.dilation, groups=p)
        return out.view(p, weight.shape[0], *out.shape[2:])
    return dcol.reshape(p, 1) * weight[:, o].transpose(0, 1)  # Linear: (P, out)


# ---------------------------------------------------------------------------------------------
# The module as a chain of stages (torch.fx)

#: stages that act on each channel separately and have no parameters of their own (BatchNorm,
#: which has per-channel ones, is handled apart)
_CHANNELWISE = (
    Quantize, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Tanh, nn.Sigmoid, nn.Softsign, nn.Softplus, nn.Tanhshrink,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
#: stages whose output per sample depends on that sample alone (in eval mode)
_STANDARD = _CHANNELWISE + (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Flatten, nn.modules.batchnorm._BatchNorm)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with gradsweep's quantiser and binary layers kept as single stages."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Quantize, BinaryConv2d, BinaryLinear)) or super().is_leaf_module(m, qualname)


def _is_standard_forward(m: nn.Module) -> bool:
    """Whether ``m`` computes what its torch class says (a subclass may override ``forward``)."""
    for cls in (BinaryConv2d, BinaryLinear, nn.Conv2d, nn.Conv1d, nn.Linear):
        if isinstance(m, cls):
            return type(m).forward is cls.forward
    return isinstance(m, _STANDARD)


@dataclass
class _Chain:
    """A traced module cut into stages: ``segments[j]`` maps the value at cut j to cut j + 1.

    ``targets[j]`` is the module name when stage j is exactly one call of a submodule on the
    previous value, else None. ``owner[param]`` = (stage, "weight" | "bias") for the parameters of
    modules that are such a stage, called once and read nowhere else.
    """

    graph: fx.Graph
    segments: list[list[fx.Node]]
    cuts: list[fx.Node]
    targets: list[str | None]
    owner: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def trace(cls, module: nn.Module) -> "_Chain | None":
        try:
            graph = _Tracer().trace(module)
        except Exception:  # data-dependent control flow and the like: no fast path, still correct
            return None
        nodes = [n for n in graph.nodes if n.op != "get_attr"]  # get_attr is re-read where used
        placeholders = [n for n in nodes if n.op == "placeholder"]
        output = nodes[-1]
        if len(placeholders) != 1 or nodes[0] is not placeholders[0] or output.op != "output":
            return None
        if not isinstance(output.args[0], fx.Node):
            return None
        pos = {n: i for i, n in enumerate(nodes)}
        cuts, reach = [nodes[0]], 0
        for i, n in enumerate(nodes[:-1]):
            if i > 0 and reach <= i:
                cuts.append(n)
            reach = max([reach] + [pos[u] for u in n.users if u in pos])
        if cuts[-1] is not output.args[0]:
            return None
        segments = [[n for n in nodes[pos[c] + 1:pos[nxt] + 1]] for c, nxt in zip(cuts, cuts[1:])]
        targets: list[str | None] = []
        for seg, c in zip(segments, cuts):
            only = seg[0] if len(seg) == 1 else None
            ok = (only is not None and only.op == "call_module" and only.args == (c,) and not only.kwargs)
            targets.append(str(only.target) if ok else None)
        chain = cls(graph, segments, cuts, targets)
        calls = [str(n.target) for n in graph.nodes if n.op == "call_module"]
        read = [str(n.target) for n in graph.nodes if n.op == "get_attr"]
        for j, t in enumerate(targets):
            if t is None or calls.count(t) != 1 or any(r.startswith(t + ".") for r in read):
                continue
            for attr in ("weight", "bias"):
                chain.owner[f"{t}.{attr}"] = (j, attr)
        return chain

    def why_not(self, layer: str, module: nn.Module) -> str | None:
        if layer not in self.owner:
            return f"{layer!r} is not a parameter of a layer called once as one stage of the chain"
        m = module.get_submodule(self.targets[self.owner[layer][0]])
        if isinstance(m, (nn.Conv2d, nn.Linear)) and _is_standard_forward(m):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                return f"{layer!r} is in a grouped conv"
            return None
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m).forward is nn.modules.batchnorm._BatchNorm.forward:
            if m.track_running_stats and m.running_mean is not None:
                return None
            return f"{layer!r} is in a BatchNorm without running statistics"
        return f"{layer!r} is in a {type(m).__name__}, not a Conv2d, Linear or BatchNorm"

    def _module(self, j: int, module: nn.Module) -> nn.Module | None:
        t = self.targets[j]
        return module.get_submodule(t) if t is not None else None

    def next_mixing(self, stage: int, module: nn.Module) -> int:
        """The first stage after ``stage`` that mixes channels (len(targets) at the end)."""
        j = stage + 1
        while j < len(self.targets):
            m = self._module(j, module)
            channelwise = m is not None and (
                isinstance(m, _CHANNELWISE)
                or (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                    and m.running_mean is not None)
            ) and _is_standard_forward(m)
            if not channelwise:
                return j
            j += 1
        return j

    def plain_linear(self, j: int, module: nn.Module) -> bool:
        """Stage j is an ungrouped Conv2d or a Linear, binary or not (linear in its input)."""
        m = self._module(j, module)
        if m is None or not _is_standard_forward(m):
            return False
        return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)

    def all_standard(self, start: int, module: nn.Module) -> bool:
        """Every stage from ``start`` on is a standard layer (per-sample in eval mode)."""
        for j in range(start, len(self.targets)):
            m = self._module(j, module)
            if m is None or not _is_standard_forward(m):
                return False
        return True


class _Runner(nn.Module):
    """Runs stages of a chain, so one ``functional_call`` reparametrises the whole module."""

    def __init__(self, net: nn.Module, chain: _Chain) -> None:
        super().__init__()
        self.net = net
        self.chain = chain

    def forward(self, h: torch.Tensor, start: int = 0, stop: int | None = None, keep: bool = False) -> Any:
        chain = self.chain
        stop = len(chain.segments) if stop is None else stop
        kept = [h] if keep else None
        for j in range(start, stop):
            env: dict[fx.Node, Any] = {chain.cuts[j]: h}
            for node in chain.segments[j]:
                env[node] = self._eval(node, env)
            h = env[chain.segments[j][-1]]
            if kept is not None:
                kept.append(h)
        return kept if keep else h

    def _eval(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        def value(arg: fx.Node) -> Any:
            if arg.op == "get_attr":
                return _get_attr(self.net, str(arg.target))
            return env[arg]

        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if node.op == "call_module":
            return self.net.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        raise ValueError(f"torch_module: unexpected fx node {node.op} {node.target}")


def _get_attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _indexed_layers(module: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """``conv`` / ``linear``: the weights of the Conv2d / Linear modules, in registration order."""
    out: dict[str, list[str]] = {"conv": [], "linear": []}
    for name, m in module.named_modules():
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear" if isinstance(m, nn.Linear) else None
        if kind and f"{name}.weight" in params:
            out[kind].append(f"{name}.weight")
    return out


# ---------------------------------------------------------------------------------------------
# Building from a config: the module from its factory, the data from a factory or built in


@dataclass(frozen=True)
class TorchModuleConfig:
    """What :func:`build` reads from a ``problem: {kind: torch_module, ...}`` config."""

    model_kind: str
    model_params: dict[str, Any]
    data_kind: str
    data_params: dict[str, Any]
    loss: str = "auto"


def read_config(cfg: Mapping[str, Any]) -> TorchModuleConfig:
    """The one place that reads the config: ``model: {kind, ...factory params}``,
    ``data: {kind, ...data params}`` (``kind`` a plugin's data factory or a built-in source:
    ``synthetic_images`` by default), ``loss``."""
    model = dict(cfg.get("model") or {})
    if "kind" not in model:
        raise ValueError("problem.model: expected a mapping with 'kind' (the module factory's name)")
    data = dict(cfg.get("data") or {})
    return TorchModuleConfig(
        model_kind=str(model.pop("kind")), model_params=model,
        data_kind=str(data.pop("kind", "synthetic_images")), data_params=data,
        loss=str(cfg.get("loss", "auto")),
    )


def make_module(factory: Callable[..., nn.Module], params: Mapping[str, Any], *, seed: int, role: str = "init",
                kind: str = "model") -> nn.Module:
    """``factory(**params)`` with torch's global RNG seeded from ``seed`` and ``role`` (and
    restored after), so a module's random initialisation is a function of the cell seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "torch_module", role))
        try:
            module = factory(**params)
        except Exception as err:
            raise ValueError(f"problem.model: the factory {kind!r} raised {type(err).__name__}: {err}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"problem.model: the factory {kind!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def builtin_batches(kind: str, params: Mapping[str, Any], *, seed: int, teacher: nn.Module | None = None,
                    part: str = "probe") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Built-in data: ``synthetic_images`` (gradsweep's random-teacher CNN labels, 10 classes;
    ``image_size``, ``batch_size``, ``batches``) or ``gaussian`` (``x ~ N(0, I)`` of ``shape``,
    targets the outputs of ``teacher``, a second module from the same factory: regression)."""
    batch_size, count = int(params.get("batch_size", 32)), int(params.get("batches", 2))
    unknown = sorted(set(params) - {"batch_size", "batches", "image_size", "shape"})
    if unknown:
        raise ValueError(f"problem.data: unknown keys {unknown} for data kind {kind!r}")
    if kind == "synthetic_images":
        from gradsweep.data.synthetic import make_teacher

        size = int(params.get("image_size", 8))
        labeller = make_teacher(seed, size)
        out = []
        for i in range(count):
            x = torch.randn(batch_size, 3, size, size, generator=generator(seed, "torch_module_data", part, i))
            out.append((x, labeller.labels(x)))
        return out
    if kind == "gaussian":
        shape = params.get("shape")
        if not shape:
            raise ValueError("problem.data: kind 'gaussian' needs 'shape' (the input shape, e.g. [16])")
        if teacher is None:
            raise ValueError("problem.data: kind 'gaussian' needs a teacher module")
        out = []
        for i in range(count):
            x = torch.randn(batch_size, *[int(s) for s in shape], generator=generator(seed, "torch_module_data", part, i))
            with torch.no_grad(), surrogate_scope(None):
                out.append((x, teacher.eval()(x.to(torch.float64)).detach()))
        return out
    raise ValueError(f"problem.data: unknown data kind {kind!r} (built in: {', '.join(DATA_SOURCES)})")


def build(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path | str | None = None,
    factory: Callable[..., nn.Module],
    data_factory: Callable[..., Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> TorchModuleProblem:
    """The problem of a ``torch_module`` config, with the module factory (and, for a plugin's
    data, the data factory) the registry resolved from ``model.kind`` / ``data.kind``.

    ``data_factory(**data params, seed=seed)`` returns the probe's batches ``(x, y)``.
    """
    c = read_config(cfg)
    module = make_module(factory, c.model_params, seed=seed, kind=c.model_kind)
    if data_factory is not None:
        try:
            batches = list(data_factory(**c.data_params, seed=seed))
        except Exception as err:
            raise ValueError(f"problem.data: the data factory {c.data_kind!r} raised {type(err).__name__}: {err}") from None
    else:
        teacher = None
        if c.data_kind == "gaussian":
            teacher = make_module(factory, c.model_params, seed=seed, role="teacher", kind=c.model_kind).to(torch.float64)
        batches = builtin_batches(c.data_kind, c.data_params, seed=seed, teacher=teacher)
    problem = TorchModuleProblem(module, batches, loss=c.loss, dtype=dtype, device=device, seed=seed,
                                 name=f"problem {c.model_kind!r}")
    if data_factory is None:  # built-in data can draw fresh training batches (``step.batches: fresh``)
        one = {**c.data_params, "batches": 1}

        def train_batch(step: int) -> Batch:
            x, y = builtin_batches(c.data_kind, one, seed=seed, teacher=teacher, part=f"train{step}")[0]
            return problem._checked_batch((x, y), step)

        problem.train_batch = train_batch  # type: ignore[attr-defined]
    return problem


def build_declared(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path | str | None = None,
) -> TorchModuleProblem:
    """The implementation of the declared ``torch_module`` kind: :func:`build` with the model
    factory and the data factory that the registry resolves from ``model.kind`` / ``data.kind``
    (gradsweep's own data kinds are built in; a plugin's is called as ``factory(**params, seed=)``)."""
    from gradsweep import registry

    factory = registry.implementation("model", cfg["model"]["kind"])
    data_kind = registry.kind("dataset", cfg["data"]["kind"])
    data_factory = None if data_kind.package == "gradsweep" else registry.implementation("dataset", data_kind.name)
    return build(cfg, seed=seed, dtype=dtype, device=device, cache_dir=cache_dir, factory=factory,
                 data_factory=data_factory)
