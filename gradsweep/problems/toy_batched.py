"""Batched evaluation paths of the toy MLP (NES's many points, CDG's one-coordinate moves).

Contract with :class:`gradsweep.problems.toy_mlp.ToyMLP`, which mixes this class in:

- ``self.depth``, ``self.dim``; point keys ``fc1 .. fc{depth}``, ``fc{l}`` shaped (out, in):
  (d, d) for l < depth and (1, d) for the last;
- ``self.quantize(z)``: the student's activation forward (identity for ``fp``);
- ``self.device``, ``self.chunk_bytes``: where the tensors live and the memory of one batched step;
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
  ``z_l[b, o]`` within ``|delta| * max_i |h_{l-1}[b, i]|`` of a threshold can (the candidate
  pairs (b, o), all units at once). What such a pair contributes depends on (row, unit, new
  level) and not on i or delta, so a table of it is computed once for every candidate pair and
  reachable level (the jump is rank one in ``z_{l+1}``, then those rows alone go through the
  rest of the net). A coordinate (o, i, delta) sums the entries of the rows whose moved
  pre-activation ``z_l[b, o] + delta * h_{l-1}[b, i]`` lands on a new level. When
  ``h_{l-1}`` is itself a staircase output (l > 1) those sums are a few GEMMs (one per step
  value and input level); otherwise (the input layer) the moved value is monotone in
  ``h_{l-1}[b, i]``, so over the row's inputs sorted by value each level is one range of ranks,
  found by a binary search, and only the (pair, input) moves that change a level are visited.
  No loop over units, never one forward per coordinate (:meth:`ToyBatchedMixin._step_changes`).

How the K whole points of NES are fast (``losses``): feature-major tiles ``(k, width, rows)``
so that every GEMM writes the wide batch, the first perturbed layer one GEMM for all k points,
and a two-level (binary) activation kept as the indicator ``[z >= t]`` with its levels folded into
the next layer's weights and threshold (:func:`_two_levels`).

Loss *changes* are computed directly (``sum over changed rows of dout * (2 r + dout) / B``), not
as a difference of two losses, so a tiny change keeps its digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gradsweep.problems.quantizers import Staircase, identity, quantize_

__all__ = ["ToyBatchedMixin"]

#: NES on a CPU: the activations of one (points x batch rows) tile stay within this many bytes per thread,
#: so the quantiser and the next GEMM find them in the cache (see :meth:`ToyBatchedMixin._nes_tile`)
CPU_TILE_BYTES = 4 << 20
#: points per tile that NES asks for before it splits the batch rows
TILE_POINTS = 16
#: batch rows per tile are a multiple of this when the rows are split (whole cache lines, SIMD width)
TILE_ALIGN = 64
#: CDG on a layer whose input is a staircase output: the GEMM path when (step values x levels) is
#: at most this (CDG's +-eps on binary inputs: 4 GEMMs); otherwise the rank-range enumeration
FEW_MOVES = 16


@dataclass
class _Forward:
    """The base forward pass: ``h[l]`` for l = 0 .. depth-1, ``z[l]`` for l = 1 .. depth."""

    h: list[torch.Tensor]
    z: list[torch.Tensor | None]
    residual: torch.Tensor  # out - y, shape (B,)
    #: per layer l, h[l-1]'s rows sorted by value (flat) and the inputs' order, made on first use
    sorted_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

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
        """The base forward of (point, batch), kept for the next call with the same tensors unchanged.

        CDG asks for one layer at a time with the same point and batch; the key holds the
        tensors' ids and versions (an in-place change is a new key) and the entry keeps them
        alive, so an id cannot be reused while it is cached.
        """
        key = (id(batch[0]), id(batch[1]), batch[0]._version, batch[1]._version,
               tuple((n, id(t), t._version) for n, t in point.items()))
        cached = getattr(self, "_forward_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        fw = self._forward(point, batch)
        self._forward_cache = (key, fw, (batch, dict(point)))
        return fw

    def _forward(self, point: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> _Forward:
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
        # on a CPU each thread's share of the tile stays cache-sized (and fewer, larger steps keep
        # the threads' synchronisations rare)
        budget = self.chunk_bytes if self.device.type != "cpu" else min(
            self.chunk_bytes, CPU_TILE_BYTES * max(1, torch.get_num_threads()))
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

        All candidate (row, unit) pairs at once, never a loop over units:

        1. *pairs*: (b, o) with ``z_l[b, o]`` within ``max |delta of unit o| * max_i |h_{l-1}[b, i]|``
           of a threshold (a unit that no coordinate moves has none);
        2. *table*: ``T[p, j]``, pair p's change of ``(out - y)^2`` when its unit takes level j,
           for every level the pair can reach (:meth:`_pair_table`, chunked);
        3. *moves*: for a pair and one step value ``delta``, the moved pre-activation
           ``z + delta * h_{l-1}[b, i]`` (computed as ``addcmul``, exactly as it is compared) is
           monotone in ``h_{l-1}[b, i]``, so over the row's inputs sorted by value each level is
           taken on one contiguous range of ranks. A binary search per (pair, step value,
           threshold) finds the ranges exactly; every rank in a range of another level adds that
           level's table entry to its coordinate (o, i, delta), if that coordinate was asked for.

        Coordinates are grouped by their step value (CDG has two, +-eps), so the work follows the
        number of level changes, not rows x coordinates. The sums run in one fixed order (the
        enumeration order, whatever the chunking): the same numbers for every memory budget.
        """
        thresholds = self._thresholds(fw.residual)
        z, h_prev = fw.z[l], fw.h[l - 1]
        dtype, device = fw.residual.dtype, fw.residual.device
        rows, units, width = z.shape[0], z.shape[1], h_prev.shape[1]
        slack = 8 * torch.finfo(dtype).eps  # the candidate test must not miss a rounding-level crossing

        # unique (step value, unit, input) requests; duplicates share one result
        steps, group = torch.unique(delta, return_inverse=True)
        keys, inverse = torch.unique((group * units + o) * width + i, return_inverse=True)
        result = torch.zeros(keys.numel(), dtype=dtype, device=device)
        unit_steps, us_of_key = torch.unique(keys // width, return_inverse=True)  # (step value, unit) pairs
        wanted = torch.full((unit_steps.numel() * width,), -1, dtype=torch.long, device=device)
        wanted[us_of_key * width + keys % width] = torch.arange(keys.numel(), device=device)
        us_unit, us_step = unit_steps % units, steps[unit_steps // units]
        every_input = keys.numel() == unit_steps.numel() * width  # then wanted[u * width + i] == u * width + i

        # 1. candidate pairs
        unit_reach = torch.full((units,), -1.0, dtype=dtype, device=device)
        unit_reach.scatter_reduce_(0, o, delta.abs(), reduce="amax")
        row_reach = h_prev.abs().amax(1)  # (B,)
        distance = (z[..., None] - thresholds).abs().amin(-1)  # (B, out_l)
        reach = unit_reach * row_reach[:, None]
        near = (distance <= reach * (1 + slack) + slack * z.abs()) & (unit_reach >= 0)
        flat_pairs = near.reshape(-1).nonzero().squeeze(1)
        if flat_pairs.numel() == 0:
            return result[inverse]
        pb, po = flat_pairs // units, flat_pairs % units
        zp = z.reshape(-1)[flat_pairs]

        # 2. the table of level changes, for the levels each pair can reach
        level_now = _level(zp, thresholds)
        reach_p = reach.reshape(-1)[flat_pairs] * (1 + slack) + slack * zp.abs()
        table = self._pair_table(point, fw, l, pb, po, level_now, _level(zp - reach_p, thresholds),
                                 _level(zp + reach_p, thresholds), thresholds)  # (P, levels)
        levels = table.shape[1]

        if l > 1 and steps.numel() * levels <= FEW_MOVES:
            # the input is itself a staircase output: per (step value, input level) every pair moves
            # to one known level, and the sums over rows are one GEMM (units x B) @ (B x inputs)
            values = self.quantize(torch.cat([thresholds[:1] - 1, thresholds]))
            moved = torch.zeros((steps.numel(), units, width), dtype=dtype, device=device)
            flat = po * rows + pb
            every = torch.arange(zp.numel(), device=device) * levels
            for v in values:
                if float(v) == 0.0:
                    continue  # a zero input moves nothing
                takes = (h_prev == v).to(dtype)  # (B, inputs)
                for g in range(steps.numel()):
                    change = table.reshape(-1).index_select(0, every + _level(torch.addcmul(zp, v, steps[g]), thresholds))
                    spread = torch.zeros(units * rows, dtype=dtype, device=device).index_put_((flat,), change)
                    moved[g].addmm_(spread.view(units, rows), takes)
            return moved.reshape(-1).index_select(0, keys)[inverse] / fw.rows

        # 3. per (pair, step value of its unit): the rank range of each level, then the moves
        per_unit = torch.bincount(us_unit, minlength=units)
        by_unit = torch.argsort(us_unit, stable=True)
        first_us = torch.cumsum(per_unit, 0) - per_unit
        if l not in fw.sorted_inputs:
            ordered, rank_order = torch.sort(h_prev, dim=1, stable=True)
            fw.sorted_inputs[l] = (ordered.reshape(-1), rank_order.reshape(-1))
        sorted_h, order = fw.sorted_inputs[l]
        counts = per_unit[po]
        per_search = 24 * 8 * levels  # bytes of the tensors of one search
        step_pairs = max(1, int(self.chunk_bytes // (per_search * max(1, int(counts.max())))))
        grid = torch.arange(levels, device=device)
        for p0 in range(0, pb.numel(), step_pairs):
            p1 = min(p0 + step_pairs, pb.numel())
            n = counts[p0:p1]
            qp = torch.repeat_interleave(torch.arange(p0, p1, device=device), n)
            within = torch.arange(qp.numel(), device=device) - (torch.cumsum(n, 0) - n).repeat_interleave(n)
            qus = by_unit.index_select(0, first_us.index_select(0, po.index_select(0, qp)) + within)
            qb, qz, qd = pb.index_select(0, qp), zp.index_select(0, qp), us_step.index_select(0, qus)
            falling = qd < 0
            # cut[:, j]: ranks before the moved value crosses threshold j (rising: below it; falling: at or above)
            cut = torch.stack([_count_prefix(sorted_h, qb * width, width, qz, qd, t, falling) for t in thresholds], 1)
            full = torch.full_like(cut[:, :1], width)
            none = torch.zeros_like(full)
            lo = torch.where(falling[:, None], torch.cat([cut, none], 1), torch.cat([none, cut], 1))
            hi = torch.where(falling[:, None], torch.cat([full, cut], 1), torch.cat([cut, full], 1))
            length = (hi - lo).masked_fill_(grid == level_now.index_select(0, qp)[:, None], 0)  # (Q, levels)
            segment = length.reshape(-1).nonzero().squeeze(1)  # ranks [lo, hi) of search sq at level sj
            sq, sj = segment // levels, segment % levels
            self._add_moves(result, None if every_input else wanted, order, (qb * width).index_select(0, sq) + lo.reshape(-1).index_select(0, segment),
                            length.reshape(-1).index_select(0, segment),
                            table.reshape(-1).index_select(0, qp.index_select(0, sq) * levels + sj),
                            qus.index_select(0, sq) * width)
        return result[inverse] / fw.rows

    def _add_moves(
        self, result: torch.Tensor, wanted: torch.Tensor, order: torch.Tensor, start: torch.Tensor,
        length: torch.Tensor, value: torch.Tensor, wanted_row: torch.Tensor,
    ) -> None:
        """Each segment s covers flat sorted positions ``start_s .. start_s + length_s - 1``; each
        position's input ``i = order[pos]`` adds ``value_s`` to ``result[wanted[wanted_row_s + i]]``
        (when that coordinate was asked for, ``>= 0``). Chunked to ``chunk_bytes``."""
        ends = torch.cumsum(length, 0)
        if ends.numel() == 0 or int(ends[-1]) == 0:
            return
        budget = max(int(length.max()), int(self.chunk_bytes // (12 * 8)))  # 12 tensors of int64 per move
        total = int(ends[-1])
        marks = torch.arange(budget, total, budget, device=ends.device) if total > budget else ends[:0]
        bounds = [0, *torch.searchsorted(ends, marks, right=True).tolist(), length.numel()]
        for s0, s1 in zip(bounds, bounds[1:]):
            if s1 <= s0:
                continue
            n = length[s0:s1]
            seg = torch.repeat_interleave(torch.arange(s0, s1, device=n.device), n)
            pos = torch.arange(seg.numel(), device=n.device).add_((start[s0:s1] - (torch.cumsum(n, 0) - n)).index_select(0, seg - s0))
            target = wanted_row.index_select(0, seg).add_(order.index_select(0, pos))
            if wanted is not None:  # some coordinates of the unit were not asked for
                target = wanted.index_select(0, target)
                asked = (target >= 0).nonzero().squeeze(1)
                if asked.numel() < target.numel():
                    target, seg = target.index_select(0, asked), seg.index_select(0, asked)
            _accumulate(result, target, value.index_select(0, seg))

    def _pair_table(
        self, point: dict[str, torch.Tensor], fw: _Forward, l: int, pb: torch.Tensor, po: torch.Tensor,
        level_now: torch.Tensor, level_low: torch.Tensor, level_high: torch.Tensor, thresholds: torch.Tensor,
    ) -> torch.Tensor:
        """``T[p, j]``: row ``pb[p]``'s change of ``(out - y)^2`` when unit ``po[p]`` of layer ``l`` takes level j.

        Computed for ``level_low[p] <= j <= level_high[p]`` (the levels the pair can reach), zero
        elsewhere and at the unit's own level. The level values are what ``quantize`` itself
        returns on each step (level j starts at threshold j - 1). A jump of the unit moves
        ``z_{l+1}`` by ``jump * W_{l+1}[:, unit]`` (rank one); from there the rows go through the
        rest of the net, every (pair, level) at once in chunks of ``chunk_bytes``.
        """
        starts = torch.cat([thresholds[:1] - 1, thresholds])
        level_values = self.quantize(starts)  # (levels,)
        levels = level_values.numel()
        table = torch.zeros((pb.numel(), levels), dtype=fw.residual.dtype, device=fw.residual.device)
        grid = torch.arange(levels, device=pb.device)
        reachable = (grid >= level_low[:, None]) & (grid <= level_high[:, None]) & (grid != level_now[:, None])
        ep, ej = reachable.nonzero(as_tuple=True)
        w_next_t = point[f"fc{l + 1}"].T  # (out_l, out_{l+1}): row o is the column W_{l+1}[:, o]
        widest = max(point[f"fc{m}"].shape[0] for m in range(l + 1, self.depth + 1))
        step = max(1, int(self.chunk_bytes // (widest * fw.residual.element_size() * 6)))
        two_level = _two_levels(self.quantize)
        if two_level is not None:  # h_m - a, exact on both levels: dh = (a - h_m) + s [moved >= t]
            below = {m: two_level[0] - fw.h[m] for m in range(l + 1, self.depth)}
        for e0 in range(0, ep.numel(), step):
            p, j = ep[e0:e0 + step], ej[e0:e0 + step]
            at, unit = pb.index_select(0, p), po.index_select(0, p)
            jump = level_values.index_select(0, j) - fw.h[l].reshape(-1).index_select(0, at * fw.h[l].shape[1] + unit)
            dz = None  # the change of z_m, (events, out_m); rank one (jump * W_{l+1}[:, unit]) for m = l + 1
            for m in range(l + 1, self.depth):
                if dz is None:
                    moved = torch.addcmul(fw.z[m].index_select(0, at), w_next_t.index_select(0, unit), jump[:, None])
                else:
                    moved = fw.z[m].index_select(0, at).add_(dz)
                if two_level is None:
                    dh = self.quantize(moved) - fw.h[m].index_select(0, at)
                else:  # one comparison instead of writing the levels; exact zeros where nothing flips
                    dh = below[m].index_select(0, at).add_(moved.ge_(two_level[2]), alpha=two_level[1])
                dz = dh @ point[f"fc{m + 1}"].T
            dout = (jump * w_next_t.index_select(0, unit)[:, 0]) if dz is None else dz[:, 0]
            table[p, j] = dout * (2 * fw.residual.index_select(0, at) + dout)
        return table

    def _thresholds(self, like: torch.Tensor) -> torch.Tensor:
        thresholds = getattr(self.quantize, "thresholds", None)
        if thresholds is None:
            raise TypeError(
                f"ToyBatchedMixin: quantize must be quantizers.identity or a Staircase with thresholds, got {self.quantize!r}"
            )
        return torch.tensor(thresholds, dtype=like.dtype, device=like.device)


def _level(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many thresholds are ``<= x`` (the staircase's level index; a value on a threshold goes up)."""
    level = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    for t in thresholds:
        level += x >= t
    return level


def _count_prefix(
    sorted_flat: torch.Tensor, row_start: torch.Tensor, width: int, z: torch.Tensor, step: torch.Tensor,
    threshold: torch.Tensor, falling: torch.Tensor,
) -> torch.Tensor:
    """Per query q: how many of row q's sorted inputs v move ``z_q + step_q * v`` below ``threshold``
    (at or above it when ``falling_q``): a binary search on that exact, monotone predicate.

    ``torch.searchsorted`` wants one sorted row per query; here many queries share a row and the
    predicate is the moved value itself (so the ranges agree with ``addcmul`` to the last bit).
    """
    lo = torch.zeros_like(row_start)
    hi = torch.full_like(row_start, width)
    for _ in range(width.bit_length()):
        mid = (lo + hi) // 2
        v = sorted_flat.index_select(0, row_start + mid.clamp(max=width - 1))
        inside = ((torch.addcmul(z, v, step) < threshold) != falling) & (mid < hi)
        lo = torch.where(inside, mid + 1, lo)
        hi = torch.where(inside, hi, mid)
    return lo


def _accumulate(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``out[index] += values``, repeated indices summed in one fixed order: the same sums on every run.

    ``index_add_`` is sequential on a CPU; on a GPU it adds with atomics (any order), so there the
    sort-based ``index_put_(accumulate=True)`` is used.
    """
    if out.device.type == "cpu":
        out.index_add_(0, index, values)
    else:
        out.index_put_((index,), values, accumulate=True)


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
