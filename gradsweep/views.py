"""What ``plan`` and ``status`` show about cells: a failed cell's parameters, and ``--json``.

A failed cell's id alone tells a researcher nothing; its parameters (``problem.dim=64
estimator.kind=nes estimator.sigma=0.001 seed=2``) say which corner of the grid broke. The text
output shows the parameters that vary across the sweep (the rest are the same for every cell);
the JSON gives them all, as the flat result columns (``docs/results.md``).

Imports no torch, no Ray.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from gradsweep.select import FlatParams

__all__ = ["failed_cell_params", "format_params", "plan_json", "status_json", "first_line"]


def first_line(text: Any) -> str:
    """The first non-empty line of an error message."""
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def failed_cell_params(cells: Iterable[Any], failed: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({cell_id: flat non-null parameters}, varying)`` for the failed cells of a sweep.

    ``varying``: the columns whose value differs between the sweep's cells that have them (a
    parameter of one estimator kind only is not "varying" because the other kinds lack it).
    Each distinct shared part of the configs is looked at once, so 200,000 cells stay cheap.
    """
    wanted = set(failed)
    flat = FlatParams()
    parts: dict[str, dict[tuple, dict[str, Any]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for cell in cells:
        for key, value in cell.config.items():
            seen = parts.setdefault(key, {})
            memo = flat.memo_key(key, value)
            if memo not in seen:
                seen[memo] = flat.part(key, value)
        if cell.id in wanted:
            out[cell.id] = {k: v for k, v in flat.flat(cell).items() if v is not None}
    varying: list[str] = []
    for key, distinct in parts.items():
        columns = dict.fromkeys(c for part in distinct.values() for c in part)
        for column in columns:
            values = {json.dumps(part[column], sort_keys=True, default=str) for part in distinct.values() if column in part}
            if len(values) > 1:
                varying.append(column)
    return out, varying


def format_params(params: Mapping[str, Any], varying: Iterable[str]) -> str:
    """``problem.dim=64 estimator.kind=nes seed=2``: the varying parameters a cell sets."""
    shown = [(k, params[k]) for k in varying if k in params]
    if not shown:
        shown = list(params.items())
    return " ".join(f"{k}={v}" for k, v in shown)


def _failed_list(failed: Iterable[str], failures: Mapping[str, Mapping[str, Any]],
                 params: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for cell_id in sorted(failed):
        rec = failures.get(cell_id, {})
        out.append({
            "cell_id": cell_id,
            "params": dict(params.get(cell_id, {})),
            "error": first_line(rec.get("error")),
            "attempts": rec.get("attempts"),
            "host": rec.get("host"),
            "time": rec.get("time"),
        })
    return out


def plan_json(plan: Any, sweep: Any, failures: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``gradsweep plan --json``: counts, counts per (problem, estimator), the cost, the failed cells."""
    params, _ = failed_cell_params(sweep.cells, plan.failed)
    return {
        "sweep": plan.sweep,
        "folder": plan.folder,
        "cells": plan.total,
        "done": len(plan.done),
        "failed": len(plan.failed),
        "pending": plan.pending,
        "corrupt": len(plan.invalid),
        "dropped": len(plan.dropped),
        "added_since_stored_spec": plan.added,
        "by_kind": [
            {"problem": p, "estimator": e, **{k: int(c[k]) for k in ("total", "done", "failed", "pending")}}
            for (p, e), c in sorted(plan.by_kind.items())
        ],
        "estimated_cpu_seconds": plan.estimate_seconds,
        "estimate_source": plan.estimate_source,
        "failed_cells": _failed_list(plan.failed, failures, params),
    }


def status_json(status: Any) -> dict[str, Any]:
    """``gradsweep status --json``: counts, the lock holder, the failed cells with their parameters."""
    p = status.plan
    return {
        "sweep": p.sweep,
        "folder": p.folder,
        "cells": p.total,
        "done": len(p.done),
        "failed": len(p.failed),
        "pending": p.pending,
        "corrupt": len(p.invalid),
        "dropped": len(p.dropped),
        "complete": len(p.done) == p.total,
        "running": {k: v for k, v in (status.lock or {}).items() if k != "token"} or None,
        "failed_cells": _failed_list(p.failed, status.failures, status.params),
    }
