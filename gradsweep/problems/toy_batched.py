"""Batched evaluation paths of the toy MLP (NES's many points, CDG's one-coordinate moves).

Contract with :class:`gradsweep.problems.toy_mlp.ToyMLP`, which mixes this class in:

- ``self.depth``, ``self.dim``; point keys ``fc1 .. fc{depth}``, ``fc{l}`` shaped (out, in):
  (d, d) for l < depth and (1, d) for the last;
- ``self.quantize(z)``: the student's activation forward (identity for ``fp``);
- a batch is ``(x, y)``: x (B, d), y (B, 1) the teacher's outputs;
- forward: h0 = x; z_l = h_{l-1} @ W_l^T; h_l = quantize(z_l) for l < depth; out = z_depth;
  loss = mean((out - y)^2).

What this module assumes beyond that: ``quantize`` is either
:func:`gradsweep.problems.quantizers.identity` (the ``fp`` student) or an elementwise step
function (a :class:`~gradsweep.problems.quantizers.Staircase`). Nothing else of ``ToyMLP`` is used.

How the one-coordinate moves are fast (``perturbed_loss_changes``). Moving ``W_l[o, i]`` by
``delta`` changes only ``z_l[:, o]``, by the rank-one term ``delta * h_{l-1}[:, i]``; the layers
below are reused from one base forward pass.

- last layer: ``out`` changes by ``delta * h_{l-1}[:, i]``, so
  ``L' - L = (2 delta <r, h_i> + delta^2 |h_i|^2) / B`` with ``r = out - y``: closed form for
  every coordinate at once;
- ``fp`` activations: the change stays rank-one up to the output, ``out`` changes by
  ``delta * c_o * h_{l-1}[:, i]`` with ``c = W_depth ... W_{l+1}`` (a row vector), so the same
  closed form applies;
- step activations: only the batch rows whose quantised ``h_l[:, o]`` changes can change anything
  downstream. For a chunk of coordinates we gather those (row, coordinate) pairs, propagate only
  them (each pair starts as the one-hot change of unit ``o``, a rank-one change of
  ``z_{l+1}``), drop pairs whose change dies out at a later layer, and sum their loss changes.

Loss *changes* are computed directly (``sum over changed rows of dout * (2 r + dout) / B``), not
as a difference of two losses, so a tiny change keeps its digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradsweep.problems.quantizers import identity

__all__ = ["ToyBatchedMixin"]


@dataclass
class _Forward:
    """The base forward pass: ``h[l]`` for l = 0 .. depth-1, ``z[l]`` for l = 1 .. depth."""

    h: list[torch.Tensor]
    z: list[torch.Tensor | None]
    residual: torch.Tensor  # out - y, shape (B,)

    @property
    def rows(self) -> int:
        return self.residual.shape[0]


class ToyBatchedMixin:
    """Overrides of :meth:`Problem.losses` and :meth:`Problem.perturbed_losses` for the toy."""

    # set by ToyMLP / Problem (see the module docstring)
    depth: int
    chunk_bytes: int

    # -- helpers --------------------------------------------------------------------------------
    def _layer_number(self, name: str) -> int:
        names = [f"fc{l}" for l in range(1, self.depth + 1)]
        if name not in names:
            raise ValueError(f"layer: unknown layer {name!r}; valid layers: {', '.join(names)}")
        return int(name[2:])

    def _base_forward(self, point: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> _Forward:
        x, y = batch
        h: list[torch.Tensor] = [x]
        z: list[torch.Tensor | None] = [None]
        for l in range(1, self.depth + 1):
            zl = h[-1] @ point[f"fc{l}"].T
            z.append(zl)
            if l < self.depth:
                h.append(self.quantize(zl))
        return _Forward(h=h, z=z, residual=(z[-1] - y).reshape(-1))

    # -- K whole points at once (NES) -----------------------------------------------------------
    def losses(
        self,
        point: dict[str, torch.Tensor],
        batch: tuple[torch.Tensor, torch.Tensor],
        deltas: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``[L(w + delta_k) for k]`` by batched matmuls, ``chunk_bytes`` of activations at a time.

        Layers below the first perturbed one are computed once for all k (their input is shared);
        from there on each point has its own activations (K, B, width).
        """
        for name in deltas:
            self._layer_number(name)
        x, y = batch
        k_total = next(iter(deltas.values())).shape[0]
        width = max(p.shape[0] for p in point.values())
        per_point = x.shape[0] * max(width, x.shape[1]) * x.element_size() * 4
        chunk = max(1, int(self.chunk_bytes // per_point))

        # the unperturbed prefix, shared by every point
        first = min(self._layer_number(n) for n in deltas)
        h = x
        for l in range(1, first):
            h = self.quantize(h @ point[f"fc{l}"].T)

        out = []
        for start in range(0, k_total, chunk):
            stop = min(start + chunk, k_total)
            hk = h  # (B, in) while shared, (k, B, in) after the first perturbed layer
            for l in range(first, self.depth + 1):
                name = f"fc{l}"
                w = point[name]
                if name in deltas:
                    wk = w + deltas[name][start:stop]  # the same sum the plain loop forms
                    zk = torch.matmul(hk, wk.transpose(-1, -2))
                else:
                    zk = hk @ w.T
                hk = self.quantize(zk) if l < self.depth else zk
            out.append((hk.squeeze(-1) - y.reshape(-1)).pow(2).mean(-1))
        return torch.cat(out)

    # -- one coordinate at a time, many coordinates at once (CDG) -------------------------------
    def perturbed_losses(
        self,
        point: dict[str, torch.Tensor],
        batch: tuple[torch.Tensor, torch.Tensor],
        layer: str,
        index: torch.Tensor,
        delta: torch.Tensor,
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k})``: the base loss plus :meth:`perturbed_loss_changes`."""
        fw = self._base_forward(point, batch)
        base = fw.residual.pow(2).mean()
        return base + self._changes(point, fw, layer, index, delta)

    def perturbed_loss_changes(
        self,
        point: dict[str, torch.Tensor],
        batch: tuple[torch.Tensor, torch.Tensor],
        layer: str,
        index: torch.Tensor,
        delta: torch.Tensor,
    ) -> torch.Tensor:
        """``L(w + delta_k e_{index_k}) - L(w)``, computed as a change (see the module docstring)."""
        return self._changes(point, self._base_forward(point, batch), layer, index, delta)

    def _changes(
        self, point: dict[str, torch.Tensor], fw: _Forward, layer: str, index: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        l = self._layer_number(layer)
        w = point[layer]
        index = index.reshape(-1).to(w.device)
        delta = delta.reshape(-1).to(device=w.device, dtype=w.dtype)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= w.numel()):
            raise ValueError(f"index: flat indices into {layer} must lie in [0, {w.numel()}), got {index.min()}..{index.max()}")
        o, i = index // w.shape[1], index % w.shape[1]
        h_prev = fw.h[l - 1]

        if l == self.depth or self.quantize is identity:
            # out changes by delta * c[o] * h_prev[:, i]: closed form from two reductions
            c = self._downstream_row(point, l)  # (out_l,)
            r_dot_h = fw.residual @ h_prev  # (in_l,)
            h_sq = h_prev.pow(2).sum(0)
            step = delta * c[o]
            return (2 * step * r_dot_h[i] + step * step * h_sq[i]) / fw.rows
        return self._step_changes(point, fw, l, o, i, delta)

    def _downstream_row(self, point: dict[str, torch.Tensor], l: int) -> torch.Tensor:
        """``c = W_depth @ ... @ W_{l+1}`` (a row): d out / d z_l when every activation above is linear."""
        c = torch.ones((1, 1), dtype=point[f"fc{l}"].dtype, device=point[f"fc{l}"].device)
        for m in range(self.depth, l, -1):
            c = c @ point[f"fc{m}"]
        return c.reshape(-1)

    def _step_changes(
        self, point: dict[str, torch.Tensor], fw: _Forward, l: int, o: torch.Tensor, i: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """Loss changes when the activation after layer ``l`` is a step function (see module doc)."""
        rows = fw.rows
        elt = fw.residual.element_size()
        # unit-major copies so that gathering unit o / input i reads one contiguous row
        z_t = fw.z[l].T.contiguous()  # (out_l, B)
        h_t = fw.h[l].T.contiguous()  # (out_l, B), quantised
        hp_t = fw.h[l - 1].T.contiguous()  # (in_l, B)
        w_next_t = point[f"fc{l + 1}"].T.contiguous()  # (out_l, out_{l+1}): row o is column o of W_{l+1}
        width = max(p.shape[0] for p in point.values())
        coords_per_chunk = max(1, int(self.chunk_bytes // (rows * elt * 6)))
        pairs_per_chunk = max(1, int(self.chunk_bytes // (width * elt * 6)))

        out = torch.zeros(o.numel(), dtype=fw.residual.dtype, device=fw.residual.device)
        for start in range(0, o.numel(), coords_per_chunk):
            sl = slice(start, start + coords_per_chunk)
            ok = o[sl]
            moved = torch.addcmul(z_t[ok], delta[sl, None], hp_t[i[sl]])  # z_l[:, o] + delta h_{l-1}[:, i]
            jump = self.quantize(moved) - h_t[ok]  # (k, B): nonzero where the activation flips
            coord, row = jump.nonzero(as_tuple=True)
            size = jump[coord, row]
            del moved, jump
            for p0 in range(0, coord.numel(), pairs_per_chunk):
                ps = slice(p0, p0 + pairs_per_chunk)
                kk, bb = coord[ps] + start, row[ps]
                # a jump of unit o moves z_{l+1} of that row by size * W_{l+1}[:, o]
                dz = size[ps, None] * w_next_t[o[kk]]
                dout, kk, bb = self._propagate(point, fw, l + 1, dz, kk, bb)
                out.index_add_(0, kk, dout * (2 * fw.residual[bb] + dout))
        return out / rows

    def _propagate(
        self, point: dict[str, torch.Tensor], fw: _Forward, m: int, dz: torch.Tensor, kk: torch.Tensor, bb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Carry changes ``dz`` of ``z_m`` (one row per pair) up to the output's change.

        Pairs whose quantised activation does not change at some layer are dropped there.
        """
        while m < self.depth:
            dh = self.quantize(fw.z[m][bb] + dz) - fw.h[m][bb]
            alive = (dh != 0).any(1)
            dh, kk, bb = dh[alive], kk[alive], bb[alive]
            dz = dh @ point[f"fc{m + 1}"].T
            m += 1
        return dz[:, 0], kk, bb
