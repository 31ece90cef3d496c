"""Batched evaluation paths of the toy MLP (NES's many points, CDG's one-coordinate moves).

Contract with :class:`gradsweep.problems.toy_mlp.ToyMLP`, which mixes this class in:

- ``self.depth``, ``self.dim``; point keys ``fc1 .. fc{depth}``, ``fc{l}`` shaped (out, in):
  (d, d) for l < depth and (1, d) for the last;
- ``self.quantize(z)``: the student's activation forward (identity for ``fp``);
- a batch is ``(x, y)``: x (B, d), y (B, 1) the teacher's outputs;
- forward: h0 = x; z_l = h_{l-1} @ W_l^T; h_l = quantize(z_l) for l < depth; out = z_depth;
  loss = mean((out - y)^2).
"""

from __future__ import annotations


class ToyBatchedMixin:
    """Overrides of :meth:`Problem.losses` and :meth:`Problem.perturbed_losses` for the toy."""
