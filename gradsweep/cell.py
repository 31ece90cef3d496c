"""``run_cell``: the one function that computes a cell, for the scheduler, the tests and notebooks.

>>> from gradsweep import run_cell
>>> table = run_cell({"problem": {"kind": "rosenbrock", "n": 4}, "estimator": {"kind": "cdg"},
...                   "measure": {"lrs": [0.01, 0.1]}})
>>> sorted(table["record"].unique())
['probe']

Steps: canonicalise the config through the spec layer (a loose config gets its defaults, a bad
one a :class:`~gradsweep.spec.SpecError` naming the key), resolve dtype and device, build the
problem, the estimator and (in the probe) the reference, run the experiment, and return its rows
with a ``run_device`` column. Only the columns ``record``, ``run_device`` and
:data:`gradsweep.results_schema.METRIC_FIELDS` appear; the store adds the cell's parameters and
provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from gradsweep import estimators
from gradsweep.cache import default_cache_dir
from gradsweep.devices import describe, resolve_device
from gradsweep.experiments import get_experiment
from gradsweep.problems import build_problem
from gradsweep.results_schema import METRIC_FIELDS
from gradsweep.seeding import generator
from gradsweep.spec import canonical_cell

__all__ = ["run_cell", "COLUMNS"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: the columns of a ``run_cell`` table, in this order (absent ones are left out)
COLUMNS = ["record", *(f.name for f in METRIC_FIELDS), "run_device"]


def run_cell(
    config: Mapping[str, Any],
    *,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """The result rows of one cell.

    Args:
        config: a canonical cell config, or a loose one (missing keys take their defaults).
        device: overrides the config's ``device`` (a Ray worker passes the GPU it was given).
        cache_dir: where shared artefacts (pretrained students) live; default
            :func:`gradsweep.cache.default_cache_dir`.
    """
    cfg = canonical_cell(config)
    dtype = DTYPES[cfg["dtype"]]
    where = resolve_device(cfg.get("device", "auto"), device)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    seed = int(cfg["seed"])

    problem = build_problem(cfg["problem"], seed=seed, dtype=dtype, device=where, cache_dir=cache)
    estimator = estimators.get(cfg["estimator"])

    def generator_for(*parts: object) -> torch.Generator:
        return generator(seed, *parts, device=where)

    table = get_experiment(cfg["experiment"])(problem, estimator, cfg, generator_for=generator_for)
    records = getattr(problem, "records", None)  # rows made while building, e.g. a pretraining curve
    if records:
        table = pd.concat([pd.DataFrame(records), table], ignore_index=True)
    table = table.assign(run_device=describe(where))
    unknown = [c for c in table.columns if c not in COLUMNS]
    if unknown:
        raise RuntimeError(f"experiment {cfg['experiment']!r} returned undeclared columns {unknown}")
    return table[[c for c in COLUMNS if c in table.columns]].reset_index(drop=True)
