"""Descent figures: loss against step, log scale, one line per config.

One figure per problem setting (the ``problem.*`` parameters other than pretraining); one line
per config inside it (whatever differs: the estimator, the step rule, the pretraining), the mean
loss over seeds with a min-max band.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gradsweep.analysis.aggregate import descent_curves
from gradsweep.analysis.core import Figure, ResultsData, describe, describe_fixed, format_value, group_keys, short_name, varying
from gradsweep.analysis.figures import Palette, panels, slug
from gradsweep.analysis.interactive import hover_columns, Plot, hover_lines, params_of

TITLE = "Descent: loss along repeated steps"


def _line_labels(configs: pd.DataFrame, line_cols: list[str], est_cols: list[str]) -> pd.Series:
    """Per config: its estimator label, plus the other parameters that vary among the lines."""
    others = [c for c in varying(configs, line_cols) if c not in est_cols and c != "sweep"]  # the label has it
    labels = {}
    for config, row in configs.iterrows():
        extra = describe(row, others)
        labels[config] = f"{row['estimator_label']}, {extra}" if extra else row["estimator_label"]
    return pd.Series(labels, dtype=object)


def section(data: ResultsData, out_dir: Path) -> list[Figure]:
    """Every descent figure of the folder; [] when it has no descent rows."""
    descent = data.records("descent")
    if descent.empty or descent["loss"].notna().sum() == 0:
        return []
    curves = descent_curves(descent.dropna(subset=["loss", "step"]))
    by_config = dict(tuple(curves.groupby("config", sort=False)))
    configs = data.configs(descent)
    fig_cols = [c for c in data.setting_columns if c.startswith("problem.")]
    line_cols = [c for c in data.param_columns if c not in fig_cols]
    groups = group_keys(configs, fig_cols)
    labelled = [(key, group, _line_labels(group, line_cols, data.estimator_columns)) for key, group in groups]
    palette = Palette(label for _, _, labels in labelled for label in labels)
    title_cols = varying(configs, fig_cols)
    out = []
    for key, group, labels in labelled:
        where = describe(key, title_cols) if title_cols else format_value(key.get("problem.kind"))
        title = f"loss vs step - {where}"
        canvas = panels(1, panel=6.5, height=4.6)
        ax = canvas.axes[0]
        positive = True
        plot = Plot([""], "step (updates)", "loss", legend_title="config")
        hcols = hover_columns(data, group)
        for config in group.index:
            c = by_config.get(config)
            if c is None:
                continue
            colour = palette(labels[config])
            ax.plot(c["step"], c["mean"], color=colour, label=labels[config], linewidth=1.3)
            if (c["n"] > 1).any():
                ax.fill_between(c["step"], c["min"], c["max"], color=colour, alpha=0.15, linewidth=0)
            positive = positive and bool((c["min"] > 0).all())
            row = group.loc[config]
            hover = [f"<b>{labels[config]}</b><br>step {int(r.step)}<br>mean loss {r.mean:.5g}<br>min-max [{r.min:.5g},"
                     f" {r.max:.5g}] over {int(r.n)} seeds<br>{hover_lines(data, row, columns=hcols)}" for r in c.itertuples()]
            plot.line(0, c["step"], c["mean"], label=labels[config], colour=colour, hover=hover,
                      params=params_of(data, row), band=(c["min"], c["max"]), dash="solid")
        plot.y_type = "log" if positive else "linear"
        if positive:
            ax.set_yscale("log")
        else:  # a loss that reaches 0 (Rosenbrock's minimum) or below: log away from 0
            ax.set_yscale("symlog", linthresh=1e-8)
        ax.set_xlabel("step (updates)")
        ax.set_ylabel("loss (log scale)")
        ax.grid(alpha=0.3, which="both")
        varied = varying(group, line_cols)
        names = ", ".join(short_name(c) for c in varied) or "none"
        path = canvas.save(out_dir / f"descent-{slug(title)}.png", title, f"varied: {names}")
        caption = (
            f"{len(group)} lines (configs), varied: {names}. Each line: the mean loss over"
            f" seeds at each logged step, band min-max over seeds. {data.count(group.index, 'descent')}."
            f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption, plot.to_dict()))
    return out
