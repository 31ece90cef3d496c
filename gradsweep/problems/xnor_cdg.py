"""Batched one-coordinate perturbations of a binary conv of the XNOR-ResNet (CDG's fast path).

Moving one kernel weight ``W[o, i, kh, kw]`` of a block conv changes only output channel ``o`` of
that conv: with fp weights by ``delta * shift(a[:, i], kh, kw)``; with binary weights the whole
kernel row ``Q(W)[o] = alpha_o sign(W[o])`` is recomputed (alpha_o moves, and sign flips only when
the weight crosses 0). So for K perturbations of one layer:

1. the network up to that block (stem, earlier blocks, the conv's input) is computed once per
   batch and point, and cached;
2. the K new versions of channel ``o_k`` come from *one* conv with K output channels (the K
   perturbed kernel rows), never a full conv per perturbation;
3. for ``conv1`` of a block, channel ``o_k`` goes through BN2 and ``sign``: a perturbation that
   flips no activation leaves the network's output bit-identical, so its loss is the base loss
   and nothing more is computed; for the others only the flipped activations feed ``conv2``, as a
   one-input-channel conv added to the block's output. With ``bn: running`` the images of a
   batch are independent, so only the (image, perturbation) pairs with a flip are recomputed and
   the change is ``sum over those images of (CE_new - CE) / B``;
4. otherwise the K patched block outputs are stacked along the batch axis (K x B images) and run
   through the blocks after it, each copy's loss (and, with ``bn: batch``, each copy's BN
   statistics) taken over its own B images. Everything stacked is chunked to
   :attr:`Problem.chunk_bytes`.

Contract with :class:`gradsweep.problems.xnor_resnet.XnorResNet`, which mixes this class in:
``self.blocks``, ``self.state``, ``self.binary_weights``, ``self.subsets``, ``self.indexed_layers``,
``self.full_weights(point)``, ``self.ctx(groups=...)``. Layers other than the 16 binary block
convs (stem, shortcuts, classifier) use the generic :meth:`Problem.perturbed_losses`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gradsweep.problems import xnor_net as net
from gradsweep.problems.base import Batch, Point

__all__ = ["XnorCdgMixin"]


class XnorCdgMixin:
    """``perturbed_losses`` (and ``perturbed_loss_changes``) for the binary convs, batched."""

    _prefix_cache: tuple[tuple, dict[str, Any]] | None = None

    # -- public entry points ------------------------------------------------------------------
    def perturbed_losses(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k})`` for each k (``index`` flat into ``point[layer]``)."""
        if layer not in self.indexed_layers["conv"]:
            return super().perturbed_losses(point, batch, layer, index, delta)  # type: ignore[misc]
        base, changes = self._conv_perturbations(point, batch, layer, index, delta)
        return base + changes

    def perturbed_loss_changes(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k}) - L(w)``, exactly 0 where no activation changes."""
        if layer not in self.indexed_layers["conv"]:
            base = self.loss(point, batch)  # type: ignore[attr-defined]
            return super().perturbed_losses(point, batch, layer, index, delta) - base  # type: ignore[misc]
        _, changes = self._conv_perturbations(point, batch, layer, index, delta)
        return changes

    # -- the batched path -----------------------------------------------------------------------
    @torch.no_grad()
    def _conv_perturbations(
        self, point: Point, batch: Batch, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.reshape(-1).to(self.device)
        delta = delta.reshape(-1).to(device=self.device, dtype=self.dtype)
        if layer in self.subsets:
            index = self.subsets[layer][index]
        pre = self._prefix(point, batch, layer)
        j, which, blk = pre["j"], pre["which"], self.blocks[pre["j"]]
        w = pre["weights"][layer]
        per_row = w[0].numel()
        rows_all = w.reshape(w.shape[0], per_row)
        out, y = pre["out"], batch[1]
        b = out.shape[0]
        # bytes of one perturbed copy through the rest of the network, with room for temporaries
        per_copy = out[0].numel() * b * out.element_size() * 12
        chunk = max(1, int(self.chunk_bytes // per_copy))
        changes = torch.zeros(index.numel(), device=self.device, dtype=self.dtype)
        for start in range(0, index.numel(), chunk):
            idx, d = index[start:start + chunk], delta[start:start + chunk]
            k = idx.numel()
            o = torch.div(idx, per_row, rounding_mode="floor")
            rows = rows_all[o].clone()
            rows[torch.arange(k, device=self.device), idx % per_row] += d
            rows = rows.view(k, *w.shape[1:])
            if self.binary_weights:
                rows = net.binary_weight(rows)
            if which == 1:
                new_h1 = F.conv2d(pre["a1"], rows, stride=blk.stride, padding=1)  # (B, k, H, W)
                new_a2 = net.binary_sign(self._bn_channels(new_h1, f"{blk.name}.bn2", o))
                da = new_a2 - pre["a2"][:, o]
                if self.bn == "running":  # type: ignore[attr-defined]
                    self._flipped_images(pre, da, o, start, changes)
                    continue
                flipped = da.ne(0).flatten(2).any(2).any(0).nonzero().flatten()
                if flipped.numel() == 0:
                    continue
                kf = flipped.numel()
                w2 = pre["w2q"][:, o[flipped]]  # (Cout, kf, 3, 3)
                w2 = w2.transpose(0, 1).reshape(kf * w2.shape[0], 1, *w2.shape[2:])
                dh2 = F.conv2d(da[:, flipped], w2, padding=1, groups=kf)  # (B, kf*Cout, H, W)
                dh2 = dh2.view(b, kf, *out.shape[1:]).transpose(0, 1)
                stacked = (out.unsqueeze(0) + dh2).reshape(kf * b, *out.shape[1:])
                losses = self._suffix(pre["weights"], stacked, y, j + 1, kf)
                changes[start + flipped] = losses - pre["loss"]
            else:
                new_h2 = F.conv2d(pre["a2"], rows, padding=1)  # (B, k, H, W)
                stacked = out.unsqueeze(0).repeat(k, 1, 1, 1, 1)  # (k, B, C, H, W)
                ar = torch.arange(k, device=self.device)
                stacked[ar, :, o] = (new_h2 + pre["sc"][:, o]).transpose(0, 1)
                losses = self._suffix(pre["weights"], stacked.view(k * b, *out.shape[1:]), y, j + 1, k)
                changes[start:start + k] = losses - pre["loss"]
        return pre["loss"], changes

    def _flipped_images(self, pre: dict[str, Any], da: torch.Tensor, o: torch.Tensor, start: int,
                        changes: torch.Tensor) -> None:
        """With running BN statistics the images of a batch are independent: recompute only the
        (image, perturbation) pairs where an activation of channel ``o_k`` flipped, and add
        ``(CE_new(image) - CE(image)) / B`` to that perturbation's change."""
        out, y, j = pre["out"], pre["y"], pre["j"]
        b = out.shape[0]
        b_idx, k_idx = da.ne(0).flatten(2).any(2).nonzero(as_tuple=True)  # (image, perturbation) pairs
        per_pair = out[0].numel() * out.element_size() * 12
        step = max(1, int(self.chunk_bytes // per_pair))
        for first in range(0, b_idx.numel(), step):
            bi, ki = b_idx[first:first + step], k_idx[first:first + step]
            p = bi.numel()
            w2 = pre["w2q"][:, o[ki]]  # (Cout, p, 3, 3)
            w2 = w2.transpose(0, 1).reshape(p * w2.shape[0], 1, *w2.shape[2:])
            dh2 = F.conv2d(da[bi, ki].unsqueeze(0), w2, padding=1, groups=p)  # (1, p*Cout, H, W)
            stacked = out[bi] + dh2.view(p, *out.shape[1:])
            ce = self._suffix_ce(pre["weights"], stacked, y[bi], j + 1)
            changes.index_add_(0, start + ki, (ce - pre["ce"][bi]) / b)

    def _suffix_ce(self, weights: dict[str, torch.Tensor], h: torch.Tensor, y: torch.Tensor, start: int) -> torch.Tensor:
        """Per-image cross-entropy of block outputs ``h`` from block ``start`` on (running BN)."""
        ctx = self.ctx()
        for blk in self.blocks[start:]:
            h = net.block_forward(blk, weights, self.state, h, ctx)
        return F.cross_entropy(net.head_forward(weights, self.state, h, ctx), y, reduction="none")

    def _bn_channels(self, h: torch.Tensor, name: str, channels: torch.Tensor) -> torch.Tensor:
        """BN of (B, k, H, W) where column k is channel ``channels[k]`` of the BN ``name``."""
        shape = (1, -1, 1, 1)
        if self.bn == "batch":  # type: ignore[attr-defined]
            mean = h.mean(dim=(0, 2, 3), keepdim=True)
            var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        else:
            mean = self.state[f"{name}.running_mean"][channels].view(shape)
            var = self.state[f"{name}.running_var"][channels].view(shape)
        y = (h - mean) / torch.sqrt(var + net.BN_EPS)
        return y * self.state[f"{name}.weight"][channels].view(shape) + self.state[f"{name}.bias"][channels].view(shape)

    def _suffix(self, weights: dict[str, torch.Tensor], h: torch.Tensor, y: torch.Tensor, start: int, groups: int) -> torch.Tensor:
        """Per-copy losses of ``groups`` stacked block outputs, from block ``start`` on."""
        ctx = self.ctx(groups=groups)
        for blk in self.blocks[start:]:
            h = net.block_forward(blk, weights, self.state, h, ctx)
        return net.grouped_cross_entropy(net.head_forward(weights, self.state, h, ctx), y, groups)

    def _prefix(self, point: Point, batch: Batch, layer: str) -> dict[str, Any]:
        """Everything up to and including the block of ``layer``, once per (point, batch, layer)."""
        key = (layer, id(batch[0]), id(batch[1]), tuple((n, id(t), t._version) for n, t in point.items()))
        if self._prefix_cache is not None and self._prefix_cache[0] == key:
            return self._prefix_cache[1]
        block_name, conv = layer.rsplit(".", 1)
        j = next(i for i, blk in enumerate(self.blocks) if blk.name == block_name)
        blk = self.blocks[j]
        weights = self.full_weights(point)
        ctx = self.ctx()
        x, y = batch
        h = net.stem_forward(weights, self.state, x, ctx)
        for prev in self.blocks[:j]:
            h = net.block_forward(prev, weights, self.state, h, ctx)
        # block j, as net.block_forward computes it, keeping the pieces
        a1 = net.activation(net.batch_norm(h, self.state, f"{blk.name}.bn1", ctx), ctx)
        h1 = F.conv2d(a1, net.quantized(weights[f"{blk.name}.conv1"], ctx), stride=blk.stride, padding=1)
        a2 = net.activation(net.batch_norm(h1, self.state, f"{blk.name}.bn2", ctx), ctx)
        w2q = net.quantized(weights[f"{blk.name}.conv2"], ctx)
        h2 = F.conv2d(a2, w2q, padding=1)
        sc = net.shortcut_forward(blk, weights, self.state, h, ctx)
        out = h2 + sc
        loss = self._suffix(weights, out, y, j + 1, 1)[0]
        ce = self._suffix_ce(weights, out, y, j + 1) if self.bn == "running" else None  # type: ignore[attr-defined]
        value = {"j": j, "which": int(conv[-1]), "weights": weights, "a1": a1, "a2": a2, "w2q": w2q,
                 "sc": sc, "out": out, "y": y, "loss": loss, "ce": ce, "_keep": (batch, dict(point))}
        self._prefix_cache = (key, value)
        return value
