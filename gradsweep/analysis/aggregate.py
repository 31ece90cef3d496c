"""Aggregations behind the figures and tables (pure pandas; every function is tested against
hand-computed numbers in ``tests/test_analysis_aggregate.py``).

Conventions, the same everywhere:

- "over seeds and batches": every (cell, batch) row of one ``config`` at one lr is one sample;
  cells differ only by ``seed``, so this pools the seeds and the batches;
- ``std`` is the sample standard deviation (ddof = 1), NaN where there is a single sample;
- the *best lr* of a config is the lr of the largest mean loss decrease (ties: the smaller lr);
- ``down`` is the fraction of samples with ``loss_decrease > 0`` (the loss went down).
"""

from __future__ import annotations

import pandas as pd

from gradsweep.analysis.core import ResultsData

__all__ = [
    "lr_curves", "probe_curves", "best_lr", "summary", "best_vs_size", "cosine_table", "descent_curves",
    "best_spread", "quantiles",
]

#: the spread columns every aggregation adds beside ``mean`` and ``std``: min, quartiles, max
SPREAD = ("min", "q25", "median", "q75", "max")


def quantiles(grouped: "pd.core.groupby.SeriesGroupBy") -> pd.DataFrame:
    """``min``, ``q25``, ``median``, ``q75``, ``max`` of each group (linear interpolation, as
    numpy's default): the spread a mean and a std hide (a skewed or two-humped sample)."""
    q = grouped.quantile([0.25, 0.5, 0.75]).unstack()
    q.columns = ["q25", "median", "q75"]
    return pd.concat([grouped.min().rename("min"), q, grouped.max().rename("max")], axis=1)[list(SPREAD)]


def lr_curves(probe: pd.DataFrame) -> pd.DataFrame:
    """Per (config, lr): ``mean``, ``std``, ``n``, ``down`` and the spread (``min``, ``q25``,
    ``median``, ``q75``, ``max``) of the loss decrease, plus ``cells`` and ``seeds`` counted. ``probe``: rows of the ``probe`` record with ``config``."""
    frame = probe[["config", "lr", "loss_decrease", "cell_id", "seed"]].assign(
        went_down=(probe["loss_decrease"] > 0).astype(float).where(probe["loss_decrease"].notna())
    )
    grouped = frame.groupby(["config", "lr"], sort=True)
    out = grouped.agg(
        mean=("loss_decrease", "mean"),
        std=("loss_decrease", "std"),
        n=("loss_decrease", "count"),
        down=("went_down", "mean"),
        cells=("cell_id", "nunique"),
        seeds=("seed", "nunique"),
    )
    return out.join(quantiles(grouped["loss_decrease"])).reset_index()


def best_lr(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per config: the row of :func:`lr_curves` at the best lr (largest mean; ties to
    the smaller lr), with ``lr`` renamed ``best_lr``. Configs whose every mean is NaN are left out."""
    valid = curves.dropna(subset=["mean"])
    # Sorted by (config, lr); idxmax keeps the first maximum, i.e. the smallest lr on ties.
    index = valid.groupby("config", sort=True)["mean"].idxmax()
    return valid.loc[index.values].rename(columns={"lr": "best_lr"}).reset_index(drop=True)


def summary(data: ResultsData) -> pd.DataFrame:
    """The summary table: per config of the probe rows, its parameters (those set for some
    cell), ``best_lr``, ``best_mean``, ``best_std`` (over seeds and batches at the best lr),
    ``down`` (fraction of batches whose loss went down at the best lr), ``n`` (samples at the best
    lr), ``estimator_seconds`` (mean over (cell, batch)), ``cells`` and ``seeds``."""
    return data.memo("summary", lambda: _summary(data))


def probe_curves(data: ResultsData) -> pd.DataFrame:
    """:func:`lr_curves` of the folder's probe rows, computed once per :class:`ResultsData`."""
    return data.memo("lr_curves", lambda: lr_curves(data.records("probe")))


def _summary(data: ResultsData) -> pd.DataFrame:
    probe = data.records("probe")
    if probe.empty or probe["loss_decrease"].isna().all():
        return pd.DataFrame()
    best = best_lr(probe_curves(data)).set_index("config")
    per_batch = probe.drop_duplicates(["cell_id", "batch"])
    seconds = per_batch.groupby("config")["estimator_seconds"].mean()
    configs = data.configs(probe)
    table = pd.DataFrame(
        {
            "best_lr": best["best_lr"],
            "best_mean": best["mean"],
            "best_std": best["std"],
            "down": best["down"],
            "n": best["n"],
            "estimator_seconds": seconds,
            "cells": configs["cells"],
            "seeds": configs["seeds"],
        }
    )
    params = configs[["estimator_label", "pretrain_label", *data.param_columns]]
    return params.join(table, how="inner").reset_index()


def best_vs_size(data: ResultsData, axis: str) -> pd.DataFrame:
    """The points of "best loss decrease vs <axis>": per config (so per estimator config and
    size), ``axis``, ``best_lr``, ``best_mean``, ``best_std``, with the config's labels; sorted
    by estimator label, student and size. Empty when the axis is not a parameter of the folder."""
    table = summary(data)
    if table.empty or axis not in table.columns:
        return pd.DataFrame()
    points = table[table[axis].notna()]
    return points.sort_values(["estimator_label", "pretrain_label", axis]).reset_index(drop=True)


def cosine_table(cosine: pd.DataFrame) -> pd.DataFrame:
    """Per (config, reference, layer): ``mean``, ``std``, ``n`` and the spread (``min``,
    ``q25``, ``median``, ``q75``, ``max``) of the cosine over seeds and batches, and ``cells``,
    ``seeds``."""
    grouped = cosine.groupby(["config", "reference", "layer"], sort=True, dropna=False, observed=True)
    out = grouped.agg(
        mean=("cosine", "mean"),
        std=("cosine", "std"),
        n=("cosine", "count"),
        cells=("cell_id", "nunique"),
        seeds=("seed", "nunique"),
    ).join(quantiles(grouped["cosine"])).reset_index()
    # Plain strings from here on (rows hold them as categoricals, for speed).
    return out.astype({"reference": object, "layer": object})


def descent_curves(descent: pd.DataFrame) -> pd.DataFrame:
    """Per (config, step): ``mean``, ``min``, ``max`` of the loss over seeds, and ``n``."""
    grouped = descent.groupby(["config", "step"], sort=True)
    return grouped.agg(
        mean=("loss", "mean"), min=("loss", "min"), max=("loss", "max"), n=("loss", "count"),
    ).reset_index()


def best_spread(data: ResultsData) -> pd.DataFrame:
    """Per config of the summary: the loss decreases of every (seed, batch) at the config's best
    lr, as ``min``, ``q25``, ``median``, ``q75``, ``max`` beside ``best_mean``/``best_std``, and
    the same of each (seed, batch)'s own best over the lr grid (``own_*``: how much a lucky
    batch helps). Two configs whose boxes overlap cannot be told apart by their means."""
    return data.memo("best_spread", lambda: _best_spread(data))


def _best_spread(data: ResultsData) -> pd.DataFrame:
    table = summary(data)
    if table.empty:
        return pd.DataFrame()
    probe = data.records("probe")[["config", "cell_id", "batch", "lr", "loss_decrease"]].dropna(subset=["loss_decrease"])
    at_best = probe.merge(table[["config", "best_lr"]], left_on=["config", "lr"], right_on=["config", "best_lr"])
    spread = quantiles(at_best.groupby("config")["loss_decrease"])
    own = probe.groupby(["config", "cell_id", "batch"], observed=True)["loss_decrease"].max().reset_index()
    own_spread = quantiles(own.groupby("config")["loss_decrease"]).add_prefix("own_")
    return table.set_index("config").join(spread).join(own_spread).reset_index()
