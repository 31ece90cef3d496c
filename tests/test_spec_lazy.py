"""Lazy expansion: a sweep is counted and walked without making every cell, and in the same order."""

from __future__ import annotations

import hashlib
import tracemalloc

from gradsweep import catalog
from gradsweep.spec import load_spec
from gradsweep.spec.canonical import resolve_dtype, sweep_cell_group
from gradsweep.spec.expand import _structural
from gradsweep.spec.validate import Context, _dumps, expand_group
from gradsweep.spec.yamlload import load_yaml

MIXED = """\
name: mixed
experiment: probe
problem:
  kind: toy_mlp
  dim: {grid: [4, 8, 8]}
  zip: {depth: [2, 3, 3], activation: [binary, ternary, ternary]}
  data: {batch_size: 64, batches: 1}
estimator:
  - {kind: cdg, epsilon: {grid: [1, 0.1]}}
  - {kind: ste, variant: {grid: [clipped, steep2]}, threshold: 2}
  - ste
measure: {lrs: {linspace: [0.1, 1, 3]}}
seeds: [0, 1, 1, 2]
"""


def _eager_ids(text: str) -> list[str]:
    """The ids the eager engine (every alternative made in a list) gives for a spec."""
    raw = load_yaml(text)
    ctx = Context()
    header = _structural(raw, ctx)
    seeds = [{"seed": (s, _dumps(s))} for s in dict.fromkeys(header["seeds"])]
    alts = expand_group(sweep_cell_group(), raw, "", None, ctx, skip=set(catalog.NOT_IN_CELL), factors=[seeds],
                        resolve=resolve_dtype, what="a spec")
    assert not ctx.issues
    return [hashlib.sha256(t.encode()).hexdigest()[:16] for _, t in alts]


def test_lazy_cells_are_the_eager_ones_in_the_same_order_without_repeats() -> None:
    sweep = load_spec(MIXED)
    lazy = [c.id for c in sweep.iter_cells()]
    assert lazy == list(dict.fromkeys(_eager_ids(MIXED)))  # the repeated zip pair made no repeats
    assert len(lazy) == len(set(lazy)) == len(sweep) == 2 * 2 * (2 + 2 + 1) * 3  # dims x zip pairs x estimators x seeds
    assert [c.id for c in sweep.cells] == lazy  # the materialised list is the same walk


def test_a_sweep_of_four_million_cells_is_counted_and_walked_in_little_memory() -> None:
    text = MIXED.replace("seeds: [0, 1, 1, 2]", "seeds: {arange: [0, 220000, 1]}")
    tracemalloc.start()
    try:
        sweep = load_spec(text)
        assert len(sweep) == 20 * 220_000
        walked = sum(1 for _ in zip(range(100_000), sweep.iter_cells()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert walked == 100_000
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MB to count and walk: the cells were materialised"
