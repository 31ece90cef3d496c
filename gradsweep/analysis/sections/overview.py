"""The notes' key view: every estimator on one axis (figure 202104300030 of the notes).

An estimator *family* is an estimator kind with the parameters that make it a different
method (NES's sample count, the STE variant, sr-STE's N, CDG's mode), but not its tuned step
parameters (:data:`TUNED`: CDG's epsilon, NES's sigma). Each family is drawn at its best tuning:

- **loss decrease vs lr, every estimator**: per problem setting (and sweep-independent, so
  compared sweeps share the axes), one curve per family: the config of the family with the
  largest best mean loss decrease, its mean over seeds and batches with an interquartile band;
- **best loss decrease vs dim, every estimator**: one line per family, each point the largest
  mean loss decrease over the lr grid *and* the tuned parameters at that size; the hover names
  the lr and epsilon/sigma that reached it.

Raw and pretrained students are side-by-side panels. The lr axis follows the spec's grid; a
divergent tail (loss decrease far below zero at large lr) is clipped below so the peak stays
readable, and the caption says how many points lie below.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gradsweep.analysis.aggregate import probe_curves, summary
from gradsweep.analysis.core import KIND_NAMES, Figure, ResultsData, describe, describe_fixed, format_value, group_keys, short_name, varying
from gradsweep.analysis.figures import Palette, slug
from gradsweep.analysis.interactive import hover_columns, DASHES, Plot, clipped_range, hover_lines, lr_axis, params_of

TITLE = "Every estimator on one axis"

#: estimator parameters tuned per family (the best value is taken), not what makes a family
TUNED = ("estimator.epsilon", "estimator.sigma", "estimator.seed")
SIZE_AXES = ("problem.dim", "problem.channels", "problem.n")
DECREASE = "loss decrease L(w) - L(w - lr g/|g|)"


def families(data: ResultsData, table: pd.DataFrame) -> pd.Series:
    """Per summary row: its family label, ``NES(samples=500)``, ``STE(variant=clipped)``, ``CDG``,
    naming the non-tuned parameters that vary within its kind (and the sweep when compared)."""
    cols = [c for c in data.estimator_columns if c not in TUNED and c != "estimator.kind"]
    labels = pd.Series("", index=table.index, dtype=object)
    for kind, group in table.groupby("estimator.kind", dropna=False, sort=False):
        name = KIND_NAMES.get(kind, str(kind))
        vary = varying(group, cols, null_is_value=False)
        for i, row in group.iterrows():
            text = describe(row, vary, skip_null=True)
            labels[i] = f"{name}({text})" if text else name
    if data.compared:
        labels = labels + " [" + table["sweep"].astype(str) + "]"
    return labels


def _panel_order(labels: pd.Series) -> list[str]:
    return sorted(labels.unique(), key=lambda s: (s != "raw", s))


def section(data: ResultsData, out_dir: Path) -> list[Figure]:
    """The two views per problem setting; [] without probe rows."""
    table = summary(data)
    if table.empty or "estimator.kind" not in table.columns:
        return []
    table = table.assign(family=families(data, table))
    if table["family"].nunique() < 2:
        return []  # one estimator family: the per-kind figures already show it
    palette = Palette(table["family"])
    sweep_dash = {s: DASHES[i % len(DASHES)] for i, s in enumerate(data.sweeps)}
    out = _lr_view(data, table, palette, sweep_dash, out_dir)
    out += _size_view(data, table, palette, sweep_dash, out_dir)
    return out


def _lr_view(data: ResultsData, table: pd.DataFrame, palette: Palette, dash: dict, out_dir: Path) -> list[Figure]:
    curves = probe_curves(data)
    by_config = dict(tuple(curves.groupby("config", sort=False)))
    fig_cols = data.figure_columns(data.setting_columns)
    title_cols = varying(table, fig_cols)
    out = []
    for key, group in group_keys(table, fig_cols):
        panels = _panel_order(group["pretrain_label"])
        where = describe(key, title_cols) if title_cols else format_value(key.get("problem.kind"))
        title = f"every estimator: loss decrease vs lr - {where}"
        lrs = curves.loc[curves["config"].isin(group["config"]), "lr"].unique()
        plot = Plot(panels, "learning rate lr", DECREASE, x_type=lr_axis(data, lrs), legend_title="estimator (best tuning)")
        lows, highs, chosen = [], [], []
        hcols = hover_columns(data, group)
        for p, panel in enumerate(panels):
            members = group[group["pretrain_label"] == panel]
            for family, of_family in members.groupby("family", sort=True):
                best = of_family.loc[of_family["best_mean"].idxmax()]
                c = by_config.get(best["config"])
                if c is None:
                    continue
                tuned = describe(best, [t for t in TUNED[:2] if t in best.index and pd.notna(best[t])])
                hover = [
                    f"<b>{family}</b>{' (' + tuned + ')' if tuned else ''}<br>{panel}<br>lr={format_value(r.lr)}"
                    f"<br>mean {r.mean:.4g} ± {0 if pd.isna(r.std) else r.std:.3g} (std)"
                    f"<br>median {r.median:.4g}, IQR [{r.q25:.4g}, {r.q75:.4g}], min-max [{r.min:.4g}, {r.max:.4g}]"
                    f"<br>n={int(r.n)} (cells {int(r.cells)}, seeds {int(r.seeds)})<br>{hover_lines(data, best, columns=hcols)}"
                    for r in c.itertuples()
                ]
                plot.line(p, c["lr"], c["mean"], label=family, colour=palette(family), hover=hover,
                          params=params_of(data, best), band=(c["q25"], c["q75"]),
                          dash=dash.get(best.get("sweep"), "dash"))
                lows += list(c["mean"])
                highs += list(c["q75"])
                chosen.append(f"{family}: {tuned or 'its only config'}" + (f" ({panel})" if len(panels) > 1 else ""))
        if not plot.traces:
            continue
        plot.hline(0.0)
        plot.y_range, below = clipped_range(lows, highs)
        path = plot.save_png(out_dir / f"overview-lr-{slug(title)}.png", title)
        caption = (
            "One curve per estimator family at its best tuning (the config with the largest mean loss decrease at its"
            " best lr): mean over seeds and batches, band: interquartile range over them."
            f" Chosen: {'; '.join(chosen)}."
            + (f" The y axis stops at {plot.y_range[0]:.3g}: {below} points of the divergent tail lie below"
               " (autoscale in the page's toolbar shows them)." if plot.y_range else "")
            + f" lr axis: {plot.x_type}. Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption, plot.to_dict()))
    return out


def _size_view(data: ResultsData, table: pd.DataFrame, palette: Palette, dash: dict, out_dir: Path) -> list[Figure]:
    out = []
    for axis in SIZE_AXES:
        if axis not in table.columns or table[axis].nunique() < 2:
            continue
        name = short_name(axis)
        fig_cols = [c for c in data.figure_columns(data.setting_columns) if c != axis]
        title_cols = varying(table, fig_cols)
        for key, group in group_keys(table[table[axis].notna()], fig_cols):
            if group[axis].nunique() < 2:
                continue
            panels = _panel_order(group["pretrain_label"])
            where = describe(key, title_cols) if title_cols else format_value(key.get("problem.kind"))
            title = f"every estimator: best loss decrease vs {name} - {where}"
            sizes = sorted(group[axis].unique())
            hcols = hover_columns(data, group)
            log = min(sizes) > 0 and max(sizes) / min(sizes) >= 4
            plot = Plot(panels, f"{name} (problem size)", "best loss decrease (over lr and tuning)",
                        x_type="log" if log else "linear", legend_title="estimator (best tuning)", x_ticks=sizes)
            for p, panel in enumerate(panels):
                members = group[group["pretrain_label"] == panel]
                for family, of_family in members.groupby("family", sort=True):
                    best = of_family.loc[of_family.groupby(axis)["best_mean"].idxmax()].sort_values(axis)
                    hover = [
                        f"<b>{family}</b><br>{panel}<br>{name}={format_value(r[axis])}<br>best mean {r['best_mean']:.4g}"
                        f" ± {0 if pd.isna(r['best_std']) else r['best_std']:.3g} at lr={format_value(r['best_lr'])}"
                        f"<br>{hover_lines(data, r, skip=[axis], columns=hcols)}"
                        for _, r in best.iterrows()
                    ]
                    points = {c: [format_value(v) for v in best[c]] for c in (axis, *TUNED[:2]) if c in best.columns}
                    first = best.iloc[0]
                    params = {c: v for c, v in params_of(data, first).items() if c not in points}
                    plot.line(p, best[axis], best["best_mean"], label=family, colour=palette(family), hover=hover,
                              params=params, points=points, error=best["best_std"].fillna(0.0),
                              dash=dash.get(first.get("sweep"), "dash"))
            plot.hline(0.0)
            path = plot.save_png(out_dir / f"overview-best-{slug(title)}.png", title)
            caption = (
                f"One line per estimator family against {name} in {{{', '.join(format_value(s) for s in sizes)}}}:"
                f" each point the largest mean loss decrease (over seeds and batches) over the lr grid and the tuned"
                f" parameters ({', '.join(short_name(t) for t in TUNED[:2])}) at that {name}; error bar +-1 std."
                f" Hover: the lr and tuning that reached it. Fixed: {describe_fixed(key)}."
            )
            out.append(Figure(path, title, caption, plot.to_dict()))
    return out
