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
function with a ``thresholds`` attribute (ascending; a value on a threshold takes the level
above), as :class:`~gradsweep.problems.quantizers.Staircase` has. Nothing else of ``ToyMLP`` is
used.

How the one-coordinate moves are fast (``perturbed_loss_changes``). Moving ``W_l[o, i]`` by
``delta`` changes only ``z_l[:, o]``, by the rank-one term ``delta * h_{l-1}[:, i]``; the layers
below are reused from one base forward pass.

- last layer: ``out`` changes by ``delta * h_{l-1}[:, i]``, so
  ``L' - L = (2 delta <r, h_i> + delta^2 |h_i|^2) / B`` with ``r = out - y``: closed form for
  every coordinate at once;
- ``fp`` activations: the change stays rank-one up to the output, ``out`` changes by
  ``delta * c_o * h_{l-1}[:, i]`` with ``c = W_depth ... W_{l+1}`` (a row vector), so the same
  closed form applies;
- step activations (a staircase with ``thresholds``): only batch rows whose quantised
  ``h_l[:, o]`` changes level can change anything downstream, and for unit o only rows with
  ``z_l[b, o]`` within ``|delta| * max_i |h_{l-1}[b, i]|`` of a threshold can (the candidates).
  What such a row contributes depends on (row, unit, new level) and not on i or delta, so it is
  computed once per unit for the candidate rows (the jump is rank one in ``z_{l+1}``, then those
  rows alone go through the rest of the net), and every coordinate (o, i) sums the entries of
  the rows whose moved pre-activation lands on a new level: vectorised over the coordinates of a
  unit, never one forward per coordinate.

Loss *changes* are computed directly (``sum over changed rows of dout * (2 r + dout) / B``), not
as a difference of two losses, so a tiny change keeps its digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradsweep.problems.quantizers import Staircase, identity, quantize_

__all__ = ["ToyBatchedMixin"]

#: NES on a CPU: the activations of one (points x batch rows) tile stay within this many bytes,
#: so the quantiser and the next GEMM find them in the cache (see :meth:`ToyBatchedMixin._nes_tile`)
CPU_TILE_BYTES = 2 << 20
#: points per tile that NES asks for before it splits the batch rows
TILE_POINTS = 8
#: batch rows per tile are a multiple of this when the rows are split (whole cache lines, SIMD width)
TILE_ALIGN = 64


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
        """``[L(w + delta_k) for k]`` by batched matmuls, a tile of (points, batch rows) at a time.

        Layers below the first perturbed one are computed once for all k (their input is shared).
        From there on the activations of a tile are kept feature-major, ``(k, width, columns)``
        with the batch rows as columns, so that every matmul has the wide batch as its output
        dimension: the first perturbed layer is *one* GEMM ``(k * out, in) @ (in, columns)`` of
        all k weight matrices stacked, the layers above are batched GEMMs ``(out, in) @ (in,
        columns)`` per point, and the quantiser rewrites each tile in place while it is still in
        the cache. The tile is :meth:`_nes_tile` (the whole batch and many points on a GPU, a
        cache-sized piece of it on a CPU); each point's squared residuals are kept for the whole
        batch and averaged at the end, so the loss is the same mean over B whatever the tile.
        """
        for name in deltas:
            self._layer_number(name)
        x, y = batch
        first = min(self._layer_number(n) for n in deltas)

        # the unperturbed prefix, shared by every point
        h = x
        for l in range(1, first):
            h = self.quantize(h @ point[f"fc{l}"].T)

        if self.quantize is identity:
            return self._linear_losses(point, h, y, deltas, first)

        k_total = next(iter(deltas.values())).shape[0]
        rows = x.shape[0]
        layers = list(range(first, self.depth + 1))
        widths = [point[f"fc{l}"].shape[0] for l in layers]
        chunk, columns = self._nes_tile(k_total, rows, sum(widths) * x.element_size())
        # one buffer per hidden layer; the output row of each point goes straight into `residuals`
        buffers = [torch.empty(chunk * w * columns, dtype=x.dtype, device=x.device) for w in widths[:-1]]
        residuals = torch.empty((chunk, rows), dtype=x.dtype, device=x.device)
        target = y.reshape(1, -1)
        h_t = h.T  # (in, B): a transposed view, which the GEMM reads as it is
        two_level = _two_levels(self.quantize)
        out = torch.empty(k_total, dtype=x.dtype, device=x.device)
        for start in range(0, k_total, chunk):
            stop = min(start + chunk, k_total)
            k = stop - start
            # per layer, once per chunk: the weights that multiply the layer's input as the tile
            # holds it, and what the product is compared with (a hidden layer) or offset by (the
            # output); with two levels the input is the indicator g and h = a + s g (_two_levels)
            weights, tests, offset = [], [], None
            for j, l in enumerate(layers):
                name = f"fc{l}"
                w = point[name] + deltas[name][start:stop] if name in deltas else point[name]  # the plain loop's sum
                test = None
                if two_level is not None:
                    low, step, test = two_level
                    if j > 0:
                        shift = low * w.sum(-1, keepdim=True)  # a W 1: (k, out, 1) or (out, 1)
                        if j + 1 < len(layers):
                            test = test - shift
                        else:
                            offset = shift.reshape(-1, 1)
                        w = w * step
                weights.append(w)
                tests.append(test)
            for c0 in range(0, rows, columns):
                c1 = min(c0 + columns, rows)
                n = c1 - c0
                hk = h_t[:, c0:c1]
                for j, (w, width, test) in enumerate(zip(weights, widths, tests)):
                    last = j + 1 == len(layers)
                    buf = residuals[:k, c0:c1].unsqueeze(1) if last else buffers[j][: k * width * n].view(k, width, n)
                    if j == 0:  # the first perturbed layer: one GEMM for every point of the chunk
                        torch.mm(w.reshape(k * width, -1), hk, out=buf.view(k * width, n) if not last else buf.squeeze(1))
                    elif w.dim() == 3:
                        torch.bmm(w, hk, out=buf)
                    else:
                        torch.matmul(w, hk, out=buf)
                    if not last:
                        # the next layer's input: the indicator [z >= t] in one in-place pass, or the levels
                        hk = quantize_(self.quantize, buf) if test is None else buf.ge_(test)
            res = residuals[:k]
            if offset is not None:
                res.add_(offset)
            out[start:stop] = res.sub_(target).square_().mean(-1)
        return out

    def _nes_tile(self, points: int, rows: int, per_cell: int) -> tuple[int, int]:
        """(points per chunk, batch rows per tile) for :meth:`losses`; ``per_cell``: bytes per (point, row).

        The activations of a tile take at most ``chunk_bytes``, and on a CPU at most
        :data:`CPU_TILE_BYTES`, so that each GEMM's output is still in the cache when the
        quantiser and the next GEMM read it. The whole batch goes in one tile when
        :data:`TILE_POINTS` points fit (always, on a GPU), else the rows are split so that
        ``TILE_POINTS`` points do.
        """
        budget = self.chunk_bytes if self.device.type != "cpu" else min(self.chunk_bytes, CPU_TILE_BYTES)
        want = min(points, TILE_POINTS)
        if want * rows * per_cell <= budget:
            return max(want, min(points, budget // (rows * per_cell))), rows
        columns = max(1, budget // (want * per_cell))
        columns = max(TILE_ALIGN, columns // TILE_ALIGN * TILE_ALIGN) if columns >= TILE_ALIGN else columns
        return want, min(rows, columns)

    def _linear_losses(
        self, point: dict[str, torch.Tensor], h: torch.Tensor, y: torch.Tensor, deltas: dict[str, torch.Tensor], first: int
    ) -> torch.Tensor:
        """``losses`` of an ``fp`` student: the net above ``first`` is linear, one row per point.

        ``out = h @ (W_depth ... W_first)^T``: the product is a (1, in) row built from small
        matrices, so a point costs one matrix-vector product over the batch instead of a forward
        (the same sums, associated differently: equal up to rounding).
        """
        k_total = next(iter(deltas.values())).shape[0]
        chunk = max(1, min(k_total, int(self.chunk_bytes // (4 * h.shape[0] * h.element_size()))))
        out = torch.empty(k_total, dtype=h.dtype, device=h.device)
        for start in range(0, k_total, chunk):
            stop = min(start + chunk, k_total)
            row = None  # (k, 1, in_l) or (1, in_l): d out / d h_{l-1}
            for l in range(self.depth, first - 1, -1):
                name = f"fc{l}"
                w = point[name] + deltas[name][start:stop] if name in deltas else point[name]
                row = w if row is None else torch.matmul(row, w)
            rows = row.reshape(-1, h.shape[1]) if row.dim() == 3 else row  # (k, in) or (1, in)
            residual = h @ rows.T - y.reshape(-1, 1)  # (B, k)
            out[start:stop] = residual.pow_(2).mean(0)
        return out

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
        """Loss changes when the activation after layer ``l`` is a staircase (see module doc).

        Coordinates are grouped by their unit o. For unit o only rows whose ``z_l[b, o]`` lies
        within ``max |delta| * max_i |h_{l-1}[b, i]|`` of a threshold can change level (the
        candidates R); for those, :meth:`_unit_table` gives the row's loss change for each level
        the unit could take (zero for its current level), which depends on (b, o, level) but not
        on i or delta. A coordinate's change is then the sum over R of the table entry at the
        level its moved pre-activation falls in.
        """
        thresholds = self._thresholds(fw.residual)
        z, h_prev = fw.z[l], fw.h[l - 1]
        dtype = fw.residual.dtype
        slack = 8 * torch.finfo(dtype).eps  # the candidate test must not miss a rounding-level crossing
        distance = (z[..., None] - thresholds).abs().amin(-1)  # (B, out_l)
        row_reach = h_prev.abs().amax(1)  # (B,)
        out = torch.zeros(o.numel(), dtype=dtype, device=fw.residual.device)
        order = torch.argsort(o, stable=True)
        units, counts = torch.unique_consecutive(o[order], return_counts=True)
        for unit, coords in zip(units.tolist(), torch.split(order, counts.tolist())):
            reach = delta[coords].abs().max() * row_reach
            (rows,) = (distance[:, unit] <= reach * (1 + slack) + slack * z[:, unit].abs()).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            table = self._unit_table(point, fw, l, unit, rows, thresholds)  # (R, levels)
            z_o, h_rows = z[:, unit].index_select(0, rows)[:, None], h_prev.index_select(0, rows)
            per_chunk = max(1, int(self.chunk_bytes // (rows.numel() * fw.residual.element_size() * 4)))
            for chunk in torch.split(coords, per_chunk):
                moved = torch.addcmul(z_o, h_rows.index_select(1, i[chunk]), delta[chunk][None, :])  # (R, k)
                out[chunk] = _staircase_lookup(moved, thresholds, table).sum(0)
        return out / fw.rows

    def _thresholds(self, like: torch.Tensor) -> torch.Tensor:
        thresholds = getattr(self.quantize, "thresholds", None)
        if thresholds is None:
            raise TypeError(
                f"ToyBatchedMixin: quantize must be quantizers.identity or a Staircase with thresholds, got {self.quantize!r}"
            )
        return torch.tensor(thresholds, dtype=like.dtype, device=like.device)

    def _unit_table(
        self, point: dict[str, torch.Tensor], fw: _Forward, l: int, unit: int, rows: torch.Tensor, thresholds: torch.Tensor
    ) -> torch.Tensor:
        """``T[r, j]``: the change of row ``rows[r]``'s ``(out - y)^2`` when ``h_l[., unit]`` takes level j.

        Zero where the unit already has level j. The level values are what ``quantize`` itself
        returns on each step (level j starts at threshold j - 1). A jump of the unit moves
        ``z_{l+1}`` by ``jump * W_{l+1}[:, unit]`` (rank one); from there the rows go through the
        rest of the net, every level at once.
        """
        starts = torch.cat([thresholds[:1] - 1, thresholds])
        level_values = self.quantize(starts)  # (levels,)
        jump = level_values[:, None] - fw.h[l][:, unit].index_select(0, rows)  # (levels, R)
        level, r = jump.nonzero(as_tuple=True)  # only real jumps: a unit's own level changes nothing
        at = rows.index_select(0, r)
        dz = jump[level, r, None] * point[f"fc{l + 1}"][:, unit]  # (jumps, out_{l+1})
        for m in range(l + 1, self.depth):
            dh = self.quantize(fw.z[m].index_select(0, at) + dz) - fw.h[m].index_select(0, at)
            dz = dh @ point[f"fc{m + 1}"].T
        dout = dz[:, 0]
        table = torch.zeros((rows.numel(), level_values.numel()), dtype=dz.dtype, device=dz.device)
        table[r, level] = dout * (2 * fw.residual.index_select(0, at) + dout)
        return table


def _staircase_lookup(x: torch.Tensor, thresholds: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``table[r, j]`` where j counts the thresholds ``<= x[r, k]`` (a value on a threshold goes up).

    A chain of ``where`` (exact entries, no integer level tensor): ``x`` is (R, k), ``table`` (R, levels).
    """
    out = table[:, :1].expand_as(x)
    for j, t in enumerate(thresholds, start=1):
        out = torch.where(x >= t, table[:, j:j + 1], out)
    return out


def _two_levels(quantize: object) -> tuple[float, float, float] | None:
    """``(a, s, t)`` when ``quantize`` is a two-level staircase ``a + s [x >= t]`` with ``s > 0``, else None.

    NES then keeps the indicator ``g = [z >= t]`` (one in-place comparison, several times cheaper
    than writing the levels) and folds the levels into the next layer: ``W h = (s W) g + a W 1``,
    so that layer's own test ``W h >= t'`` becomes ``(s W) g >= t' - a W 1`` and the output is
    ``(s W) g + a W 1``. The same values up to rounding (``s = 2`` scales exactly).
    """
    if not isinstance(quantize, Staircase) or len(quantize.thresholds) != 1:
        return None
    low, high = quantize.levels
    if not high > low:
        return None
    return low, high - low, quantize.thresholds[0]
