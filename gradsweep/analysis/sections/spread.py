"""Spread over seeds and batches: is a difference between estimators more than noise?

Means hide it (issue 14: at small sigma NES is nearly a random direction, and its mean cosine
says little). Per problem setting, one box per estimator config (raw and pretrained panels):

- **best loss decrease**: the loss decreases of every (seed, batch) at the config's best lr
  (the lr of the largest mean; the same point as the summary table), box = interquartile range,
  line = median, whiskers = min and max, dashed = mean;
- **cosine to the reference** (layer ``all``, or each layer where no ``all`` row was recorded):
  the cosine of every (seed, batch) estimate, the same box.

Two boxes that overlap cannot be told apart by their means.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gradsweep.analysis.aggregate import best_spread, cosine_table
from gradsweep.analysis.core import Figure, ResultsData, describe, describe_fixed, format_value, group_keys, varying
from gradsweep.analysis.figures import Palette, slug
from gradsweep.analysis.interactive import hover_columns, Plot, hover_lines, params_of

TITLE = "Spread over seeds and batches: best loss decrease and cosine"


def _panel_order(labels: pd.Series) -> list[str]:
    return sorted(labels.unique(), key=lambda s: (s != "raw", s))


def _stats(row: pd.Series, prefix: str = "", mean: str = "mean") -> dict:
    return {"min": row[f"{prefix}min"], "q25": row[f"{prefix}q25"], "median": row[f"{prefix}median"],
            "q75": row[f"{prefix}q75"], "max": row[f"{prefix}max"], "mean": row[mean]}


def _hover(data: ResultsData, row: pd.Series, what: str, s: dict, n: int, extra: str = "", columns: list[str] | None = None) -> str:
    return (
        f"<b>{row['estimator_label']}</b> ({row['pretrain_label']})<br>{what}{extra}<br>median {s['median']:.4g},"
        f" IQR [{s['q25']:.4g}, {s['q75']:.4g}]<br>min {s['min']:.4g}, max {s['max']:.4g}, mean {s['mean']:.4g}"
        f"<br>n={n} (seeds x batches)<br>{hover_lines(data, row, columns=columns)}"
    )


def section(data: ResultsData, out_dir: Path) -> list[Figure]:
    """Box figures of the best loss decrease and of the cosine; [] without such rows."""
    palette = Palette(data.cells["estimator_label"])
    out = _best_figures(data, palette, out_dir)
    cosine = data.records("cosine")
    if not cosine.empty and cosine["cosine"].notna().any():
        out += _cosine_figures(data, cosine_table(cosine.dropna(subset=["cosine"])), palette, out_dir)
    return out


def _best_figures(data: ResultsData, palette: Palette, out_dir: Path) -> list[Figure]:
    table = best_spread(data)
    if table.empty:
        return []
    fig_cols = [c for c in data.figure_columns(data.setting_columns) if c in table.columns]
    title_cols = varying(table, fig_cols)
    out = []
    for key, group in group_keys(table, fig_cols):
        panels = _panel_order(group["pretrain_label"])
        where = describe(key, title_cols) if title_cols else format_value(key.get("problem.kind"))
        title = f"spread of the loss decrease at the best lr - {where}"
        hcols = hover_columns(data, group)
        plot = Plot(panels, "estimator config", x_type="category", y_title="loss decrease at the config's best lr", legend_title="estimator config",
                    height=520)
        for p, panel in enumerate(panels):
            for _, row in group[group["pretrain_label"] == panel].sort_values("config").iterrows():
                s = _stats(row, mean="best_mean")
                label = row["estimator_label"]
                plot.box(p, label, s, label=label, colour=palette(label), params=params_of(data, row),
                         hover=_hover(data, row, "loss decrease", s, int(row["n"]), f" at lr={format_value(row['best_lr'])}", hcols))
        plot.hline(0.0)
        path = plot.save_png(out_dir / f"spread-best-{slug(title)}.png", title)
        caption = (
            "Per estimator config, the loss decrease of every (seed, batch) at the config's best lr (the lr of the"
            " largest mean): box = interquartile range, middle line = median, whiskers = min and max, dashed = mean."
            " Overlapping boxes: the difference of the means is within the spread over seeds and batches."
            f" {data.count(group['config'], 'probe')}. Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption, plot.to_dict()))
    return out


def _cosine_figures(data: ResultsData, table: pd.DataFrame, palette: Palette, out_dir: Path) -> list[Figure]:
    configs = data.configs(data.records("cosine"))
    joined = table.join(configs.drop(columns=["cells", "seeds"]), on="config", how="inner")
    if (joined["layer"] == "all").any():  # every parameter together; per layer is the heatmaps' job
        joined = joined[joined["layer"] == "all"]
    fig_cols = [c for c in data.figure_columns(data.setting_columns) if c in joined.columns] + ["reference", "layer"]
    title_cols = varying(joined, [c for c in fig_cols if c not in ("reference", "layer")])
    out = []
    for key, group in group_keys(joined, fig_cols):
        panels = _panel_order(group["pretrain_label"])
        where = describe({k: v for k, v in key.items() if k in title_cols}, title_cols) if title_cols else ""
        layer = format_value(key["layer"])
        title = f"spread of the cosine to {format_value(key['reference'])}, layer {layer}" + (f" - {where}" if where else "")
        hcols = hover_columns(data, group)
        plot = Plot(panels, "estimator config", x_type="category", y_title=f"cosine to {format_value(key['reference'])}", legend_title="estimator config",
                    height=520)
        for p, panel in enumerate(panels):
            for _, row in group[group["pretrain_label"] == panel].sort_values("config").iterrows():
                s = _stats(row)
                label = row["estimator_label"]
                plot.box(p, label, s, label=label, colour=palette(label), params=params_of(data, row),
                         hover=_hover(data, row, f"cosine, layer {layer}", s, int(row["n"]), columns=hcols))
        plot.hline(0.0)
        path = plot.save_png(out_dir / f"spread-cosine-{slug(title)}.png", title)
        caption = (
            f"Per estimator config, the cosine of every (seed, batch) estimate to the reference on layer {layer}"
            " ('all': every estimated parameter together): box = interquartile range, middle line = median,"
            " whiskers = min and max, dashed = mean. A box reaching 0 is a direction indistinguishable from random."
            f" {data.count(group['config'], 'cosine')}. Fixed: {describe_fixed({k: v for k, v in key.items() if k != 'layer'})}."
        )
        out.append(Figure(path, title, caption, plot.to_dict()))
    return out
