"""A spec -> its sweep: every cell, validated and canonical, with its id.

Expansion is a pure function of the parsed spec (hydra's basic sweeper): no file, no clock, no
randomness. Example::

    name: demo
    problem: {kind: toy_mlp, dim: {grid: [8, 16]}}
    estimator:
      - {kind: cdg, epsilon: {grid: [1, 0.1]}}
      - {kind: ste}
    seeds: [0, 1]

gives (2 dims x (2 CDG + 1 STE)) x 2 seeds = 12 cells. The count is checked *before* expanding
(an upper bound from the grid sizes), so a typo that asks for billions of cells is refused at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from gradsweep import catalog
from gradsweep.spec.canonical import resolve_dtype, sweep_cell_group
from gradsweep.spec.errors import Issue, SpecError
from gradsweep.spec.validate import (
    _MISSING, Context, _dumps, _got, count_node, expand_group, expand_node, list_length,
)
from gradsweep.spec.yamlload import line_of, load_yaml

__all__ = ["Cell", "Sweep", "load_spec", "expand", "count_cells", "MAX_CELLS"]

MAX_CELLS = 10_000_000
_SWEEP_KEYS = tuple(catalog.NOT_IN_CELL)  # name, description, resources, seeds
_NO_GRID = ("name", "description", "resources", "seeds", "experiment")


class Cell(NamedTuple):
    """One point of a sweep: its id, its canonical config and its per-cell resources.

    A named tuple (immutable, and made ten times faster than a frozen dataclass: a sweep may have
    ten million). For speed, the cells of one sweep share nested mappings (and ``resources``):
    treat them as read-only; :func:`gradsweep.spec.canonical_cell` gives a private copy.
    """

    id: str
    config: dict[str, Any]
    resources: dict[str, float]


class Sweep:
    """A validated, expanded spec; ``resources`` are the spec's per-cell resources.

    Its cells are made on demand: ``len(sweep)`` counts them without making any,
    :meth:`iter_cells` walks them one at a time (``plan`` of ten million cells stays within a
    bounded memory), and ``sweep.cells`` is the list, made on first use and kept.
    """

    def __init__(
        self,
        name: str,
        description: str,
        experiment: str,
        cells: Iterable[Cell] | Callable[[], Iterator[Cell]],
        source_text: str | None = None,
        path: Path | None = None,
        resources: dict[str, float] | None = None,
        *,
        count: int | None = None,
    ) -> None:
        self.name, self.description, self.experiment = name, description, experiment
        self.source_text, self.path = source_text, path
        self.resources = resources if resources is not None else {}
        if callable(cells):
            self._make, self._cells = cells, None
        else:
            self._cells = list(cells)
            self._make = lambda: iter(self._cells)
        self._count = count

    @property
    def cells(self) -> list[Cell]:
        if self._cells is None:
            with _gc_off():
                self._cells = list(self._make())
        return self._cells

    def with_cells(self, cells: Iterable[Cell]) -> "Sweep":
        """The same sweep (name, spec text, resources) with only ``cells`` (a subset of its own)."""
        return Sweep(self.name, self.description, self.experiment, list(cells), self.source_text, self.path,
                     self.resources)

    def iter_cells(self) -> Iterator[Cell]:
        """The cells one at a time, in spec order (the list, once made, is reused)."""
        return iter(self._cells) if self._cells is not None else self._make()

    def __len__(self) -> int:
        if self._count is None:
            self._count = len(self.cells)
        return self._count

    def __repr__(self) -> str:
        return f"Sweep(name={self.name!r}, experiment={self.experiment!r}, cells={len(self)})"


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    """Expansion allocates a few containers per cell and no cycles: the cyclic collector would
    only rescan them over and over (a third of the time on 200,000 cells)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _structural(raw: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """The sweep-level keys (one value each, never grids), validated with defaults."""
    out: dict[str, Any] = {}
    for key in (*_SWEEP_KEYS, "experiment"):
        node = catalog.TOP.fields[key]
        line = line_of(raw, key)
        value = raw.get(key, _MISSING)
        if isinstance(value, Mapping) and "grid" in value and key in _NO_GRID:
            ctx.add(key, f"one value expected here, not a grid (got {_got(value)})", line)
            continue
        alts = expand_node(node, value, key, line, ctx)
        if alts:
            out[key] = alts[0][0]
    return out


def count_cells(raw: Mapping[str, Any]) -> int:
    """An upper bound of the cells of a parsed spec (before dedup), without expanding it."""
    n_seeds = list_length(raw.get("seeds", [0]))
    body = {k: v for k, v in raw.items() if k not in _SWEEP_KEYS}
    return count_node(sweep_cell_group(), body) * n_seeds


def _expand(raw: Any, ctx: Context) -> tuple[dict[str, Any], Any]:
    """The sweep-level keys and the lazily made cells (:class:`Crossed` of (config, text))."""
    with _gc_off():
        return _expand_gc_off(raw, ctx)


def _expand_gc_off(raw: Any, ctx: Context) -> tuple[dict[str, Any], Any]:
    if not isinstance(raw, Mapping):
        ctx.add("", f"expected a mapping of spec keys ({', '.join(catalog.TOP.fields)}), got {_got(raw)}",
                getattr(raw, "line", None))
        return {}, []
    total = count_cells(raw)
    if total > MAX_CELLS:
        ctx.add("", f"the spec would make {total:,} cells, more than the limit of {MAX_CELLS:,}; "
                "split it into several sweeps or shrink its grids", getattr(raw, "line", None))
        ctx.cap = 1000  # still check every key, without crossing the grids

    header = _structural(raw, ctx)
    seeds = header.get("seeds")
    # With bad seeds, seed 0 stands in so that the rest of the spec is still checked.
    seed_factor = [{"seed": (s, _dumps(s))} for s in dict.fromkeys(seeds or [0])]
    alts = expand_group(sweep_cell_group(), raw, "", getattr(raw, "line", None), ctx, skip=set(_SWEEP_KEYS),
                        factors=[seed_factor], resolve=resolve_dtype, what="a spec", lazy=ctx.cap is None)
    if ctx.issues:
        return header, []
    return header, alts


def _resources(header: Mapping[str, Any]) -> dict[str, Any]:
    """The per-cell resources; the optional ones (memory, timeout) only where the spec sets them."""
    return {k: v for k, v in (header.get("resources") or {}).items() if v is not None}


def _cells(alts: Any, resources: dict[str, Any]) -> Callable[[], Iterator[Cell]]:
    """A maker of the cells of ``alts``: each call walks them again, hashing each text once."""
    def make() -> Iterator[Cell]:
        sha = hashlib.sha256
        for value, text in alts:  # the id: the first 16 hex digits of the text's sha256
            yield Cell(sha(text.encode()).digest()[:8].hex(), value, resources)
    return make


def expand(raw: Mapping[str, Any]) -> list[Cell]:
    """The cells of a parsed spec mapping, each once, in a deterministic order. Pure.

    Raises :class:`SpecError` listing every problem found.
    """
    ctx = Context()
    header, alts = _expand(raw, ctx)
    ctx.raise_if_any()
    with _gc_off():
        return list(_cells(alts, _resources(header))())


def load_spec(path_or_text: str | os.PathLike[str], *, source: str | None = None) -> Sweep:
    """Read, validate and expand a spec: a file path, or the YAML text itself.

    A ``str`` containing a newline, or one that names no file and does not end in .yaml/.yml, is
    taken as YAML text. ``source`` names the spec in messages (default: the path).
    """
    path: Path | None = None
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text
        and (path_or_text.endswith((".yaml", ".yml")) or os.path.isfile(path_or_text))
    ):
        path = Path(path_or_text)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            issue = Issue("", f"cannot read the spec: {exc.strerror or exc}")
            raise SpecError([issue], source=source or str(path)) from None
        except UnicodeDecodeError as exc:  # a spec saved in another encoding (latin-1, UTF-16)
            line = exc.object[:exc.start].count(b"\n") + 1
            issue = Issue("", f"the spec is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset "
                              f"{exc.start} cannot be decoded (save the file as UTF-8)", line=line)
            raise SpecError([issue], source=source or str(path)) from None
    else:
        text = str(path_or_text)
    source = source or (str(path) if path else None)
    raw = load_yaml(text, source=source)
    if path is None and isinstance(raw, str) and "\n" not in text.strip():
        raise SpecError([Issue("", f"no spec file {text.strip()!r} (and the text is not a YAML mapping)")],
                        source=source)
    ctx = Context()
    header, alts = _expand(raw, ctx)
    ctx.raise_if_any(source)
    resources = _resources(header)
    return Sweep(
        name=header["name"],
        description=header.get("description", ""),
        experiment=header["experiment"],
        cells=_cells(alts, resources),
        source_text=text,
        path=path,
        resources=resources,
        count=len(alts),
    )

