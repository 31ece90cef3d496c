"""Warnings for grids over parameters that cannot change a cell's result.

A :class:`~gradsweep.catalog.Param` declares ``inert="why"`` when no value of it can change what a
cell computes (sr_ste's ``tau``: sign(RelaxedBernoulli(p, tau) - 1/2) is Bernoulli(p) whatever tau
is). Such a parameter is still a valid key (the notes swept it, and a spec may reproduce that),
but a grid over it computes the same numbers several times: ``plan`` says so, and why, from the
declaration (no parameter is special-cased here). Imports neither torch nor Ray.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Mapping

from gradsweep.catalog import Group, Param, Union
from gradsweep.spec.canonical import cell_group

__all__ = ["inert_params", "inert_warnings"]

_Path = tuple[str, ...]


def inert_params(node: Param | Group | Union | None = None, path: _Path = (), kinds: tuple = ()) -> Iterator[tuple[_Path, tuple, Param]]:
    """``(path, kind conditions, param)`` of every inert parameter; a condition is
    ``(path of a union, kind)``: the parameter exists only in cells with that kind there."""
    if node is None:
        node = cell_group()
    if isinstance(node, Param):
        if node.inert:
            yield path, kinds, node
    elif isinstance(node, Union):
        for kind, group in node.kinds.items():
            yield from inert_params(group, path, kinds + ((path, kind),))
    else:
        for key, child in node.fields.items():
            yield from inert_params(child, path + (key,), kinds)


def _get(config: Any, path: _Path) -> Any:
    for key in path:
        if not isinstance(config, dict) or key not in config:  # canonical configs are plain dicts
            return _ABSENT
        config = config[key]
    return config


_ABSENT: Any = object()


def inert_warnings(configs: Iterable[Mapping[str, Any]], *, groups: bool = False) -> list[str]:
    """One message per inert parameter that takes several values among cells that are otherwise
    identical (so their results are too), with the declared reason.

    ``groups=True``: ``configs`` are ``(config, n)`` pairs, one per group of ``n`` cells that
    differ only in their seed (what ``plan`` walks once per group): a sweep of millions of cells
    is then judged from its few distinct groups."""
    pairs = configs if groups else ((cfg, 1) for cfg in configs)
    params = list(inert_params())
    if not params:
        return []
    # One pass over the cells (a sweep of millions is walked, not kept): only the cells that have
    # an inert parameter are kept. Cells of a grid share their nested mappings, so what a cell's
    # top-level entries say is decided once per distinct entry object.
    found: list[tuple[dict[str, Any], list[tuple[Any, str, int]]]] = [({}, []) for _ in params]
    memo: dict[tuple[int, tuple[int, ...]], Any] = {}
    for cfg, n in pairs:
        for i, (path, kinds, _param) in enumerate(params):
            tops = tuple(id(cfg.get(p[0])) if p else id(cfg) for p, _ in kinds) + (id(cfg.get(path[0])),)
            key = (i, tops)
            hit = memo.get(key, _ABSENT)
            if hit is _ABSENT:
                if any(_get(cfg, p + ("kind",)) != kind for p, kind in kinds):
                    hit = None
                else:
                    value = _get(cfg, path)
                    hit = None if value is _ABSENT else (value, json.dumps(value, sort_keys=True))
                memo[key] = hit
            if hit is not None:
                found[i][0].setdefault(hit[1], hit[0])
                found[i][1].append((cfg, hit[1], n))
    out = []
    for (path, kinds, param), (values, cells) in zip(params, found):
        if len(values) < 2:
            continue  # the usual case, decided without copying any cell
        rest: dict[str, tuple[set[str], int]] = {}
        for cfg, text, n in cells:
            # the cell without the inert parameter: cells that share it are duplicates
            copy = json.loads(json.dumps(cfg, default=str))
            del _get(copy, path[:-1])[path[-1]]
            if groups:
                copy.pop("seed", None)  # a group stands for its n seeds
            texts, size = rest.setdefault(json.dumps(copy, sort_keys=True), (set(), n))
            texts.add(text)
            rest[json.dumps(copy, sort_keys=True)] = (texts, min(size, n))
        duplicated = sum((len(texts) - 1) * size for texts, size in rest.values())
        if len(values) > 1 and duplicated:
            where = ".".join(path)
            kind = " / ".join(f"{'.'.join(p)}.kind {k}" for p, k in kinds)
            shown = ", ".join(sorted(values, key=str))
            out.append(
                f"{where} ({kind}) varies over {len(values)} values ({shown}) but cannot change the result: "
                f"{param.inert}; {duplicated} cell(s) repeat the numbers of another"
            )
    return out
