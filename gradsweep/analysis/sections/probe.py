"""Probe figures: loss decrease against lr, best loss decrease against size, cosine heatmaps.

- **lr vs loss decrease**: one figure per (problem setting, estimator kind[, sample count]); one
  curve per remaining estimator config (epsilon, sigma, STE variant...); each point is the mean
  over seeds and batches, the band +-1 std; a dashed zero line. Raw and pretrained students are
  side-by-side panels of one figure.
- **best loss decrease vs dim** (and vs ``channels`` / ``n`` where those vary): one line per
  estimator config; each point is that config's mean at its own best lr for that size.
- **cosine to reference**: per (setting, reference), a heatmap of the mean cosine, estimator
  configs by layer (``all`` last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from gradsweep.analysis.aggregate import best_vs_size, cosine_table, probe_curves
from gradsweep.analysis.core import KIND_NAMES, Figure, ResultsData, describe, describe_fixed, format_value, group_keys, short_name, varying
from gradsweep.analysis.figures import Palette, panels, slug
from gradsweep.analysis.interactive import hover_columns, DASHES, Plot, clipped_range, hover_lines, lr_axis, params_of

TITLE = "Probe: loss decrease along the estimated direction, and cosine to a reference"

# Parameters that may be the x axis of a "best loss decrease vs size" figure.
SIZE_AXES = ("problem.dim", "problem.channels", "problem.n")
# Estimator parameters that split lr figures (the notes draw one NES figure per sample count).
FIGURE_ESTIMATOR_COLUMNS = ("estimator.kind", "estimator.samples")

LR_LABEL = "learning rate lr (step length along the unit-norm estimate)"
DECREASE_LABEL = "loss decrease L(w) - L(w - lr g/|g|) (loss units)"


def section(data: ResultsData, out_dir: Path) -> list[Figure]:
    """Every probe figure of the folder; [] when it has no probe or cosine rows."""
    palette = Palette(data.cells["estimator_label"])
    figures: list[Figure] = []
    probe = data.records("probe")
    if not probe.empty and probe["loss_decrease"].notna().any():
        figures += lr_figures(data, probe_curves(data), out_dir, palette)
        figures += best_vs_size_figures(data, out_dir, palette)
    cosine = data.records("cosine")
    if not cosine.empty and cosine["cosine"].notna().any():
        figures += cosine_figures(data, cosine_table(cosine), out_dir)
    return figures


def _panel_order(labels: pd.Series) -> list[str]:
    """Raw first, then the pretrained variants."""
    return sorted(labels.unique(), key=lambda s: (s != "raw", s))


def _title_part(key: Mapping[str, Any], all_configs: pd.DataFrame, columns: list[str]) -> str:
    """The part of a title that tells this figure from its siblings: the key's columns that vary
    across the folder (the problem kind when nothing does)."""
    cols = varying(all_configs, columns)
    if cols:
        return describe(key, cols)
    kind = key.get("problem.kind")
    return format_value(kind) if kind is not None else ""


def lr_figures(data: ResultsData, curves: pd.DataFrame, out_dir: Path, palette: Palette) -> list[Figure]:
    """One lr-vs-loss-decrease figure per (setting, estimator kind[, samples])."""
    probe = data.records("probe")
    configs = data.configs(probe)
    fig_cols = data.figure_columns(data.setting_columns) + [c for c in FIGURE_ESTIMATOR_COLUMNS if c in configs.columns]
    curve_cols = [c for c in data.line_columns if c not in fig_cols]
    dashes = {s: DASHES[i % len(DASHES)] for i, s in enumerate(data.sweeps)}
    by_config = dict(tuple(curves.groupby("config", sort=False)))
    title_cols = [c for c in fig_cols if c not in FIGURE_ESTIMATOR_COLUMNS]
    out = []
    for key, group in group_keys(configs, fig_cols):
        kind = KIND_NAMES.get(key.get("estimator.kind"), format_value(key.get("estimator.kind")))
        samples = key.get("estimator.samples")
        head = kind if samples is None or pd.isna(samples) else f"{kind} ({format_value(samples)} samples)"
        where = _title_part(key, configs, title_cols)
        title = f"{head}: loss decrease vs lr" + (f" - {where}" if where else "")
        varied = varying(group, curve_cols, null_is_value=False)
        varied_names = ", ".join(short_name(c) for c in varied) or "none"
        panel_labels = _panel_order(group["pretrain_label"])
        canvas = panels(len(panel_labels))
        x_type = lr_axis(data, curves.loc[curves["config"].isin(group.index), "lr"].unique())
        plot = Plot([f"{panel} ({data.count(group.index[group['pretrain_label'] == panel], 'probe')})" for panel in panel_labels],
                    LR_LABEL, DECREASE_LABEL, x_type=x_type, legend_title=f"varied: {varied_names}")
        lows, highs = [], []
        hcols = hover_columns(data, group)
        for i, (ax, panel) in enumerate(zip(canvas.axes, panel_labels)):
            members = group[group["pretrain_label"] == panel]
            for config, row in members.iterrows():
                c = by_config.get(config)
                if c is None or c["mean"].isna().all():
                    continue
                colour = palette(row["estimator_label"])
                lr, mean, std = c["lr"].to_numpy(), c["mean"].to_numpy(), c["std"].fillna(0).to_numpy()
                ax.plot(lr, mean, "--", marker=".", color=colour, label=row["estimator_label"], linewidth=1.2)
                ax.fill_between(lr, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
                hover = [
                    f"<b>{row['estimator_label']}</b> ({panel})<br>lr={format_value(r.lr)}<br>mean {r.mean:.4g} ± "
                    f"{0 if pd.isna(r.std) else r.std:.3g} (std), down {r.down:.0%}<br>median {r.median:.4g},"
                    f" IQR [{r.q25:.4g}, {r.q75:.4g}], min-max [{r.min:.4g}, {r.max:.4g}]<br>n={int(r.n)}"
                    f" (cells {int(r.cells)}, seeds {int(r.seeds)})<br>{hover_lines(data, row, columns=hcols)}"
                    for r in c.itertuples()
                ]
                plot.line(i, lr, mean, label=row["estimator_label"], colour=colour, hover=hover,
                          params=params_of(data, row), band=(mean - std, mean + std),
                          dash=dashes.get(row.get("sweep"), "dash"))
                lows += list(mean)
                highs += list(mean + std)
            ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
            if x_type == "log":
                ax.set_xscale("log")
            ax.set_xlabel(LR_LABEL)
            ax.set_title(f"{panel} ({data.count(members.index, 'probe')})", fontsize="medium")
            ax.grid(alpha=0.3)
        plot.hline(0.0)
        plot.y_range, below = clipped_range(lows, highs)
        if plot.y_range is not None:  # the divergent tail must not flatten the peak
            canvas.axes[0].set_ylim(*plot.y_range)
        canvas.axes[0].set_ylabel(DECREASE_LABEL)
        path = canvas.save(out_dir / f"lr-{slug(title)}.png", title, f"varied: {varied_names}")
        sub = curves[curves["config"].isin(group.index)]
        values = "; ".join(
            f"{short_name(c)} in {{{', '.join(format_value(v) for v in sorted(group[c].dropna().unique()))}}}" for c in varied
        )
        caption = (
            f"{len(group)} curves, varied: {varied_names}" + (f" ({values})" if values else "")
            + f". Each point: mean loss decrease over seeds and batches (up to {int(sub['n'].max())} samples per point),"
            f" band +-1 std; dashed line: no change. {data.count(group.index, 'probe')}."
            + (f" Panels: {', '.join(panel_labels)}." if len(panel_labels) > 1 else "")
            + (f" The y axis stops at {plot.y_range[0]:.3g}: {below} points of the divergent tail lie below"
               " (the page's autoscale shows them)." if plot.y_range is not None else "")
            + f" lr axis: {x_type}. Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption, plot.to_dict()))
    return out


def best_vs_size_figures(data: ResultsData, out_dir: Path, palette: Palette) -> list[Figure]:
    """Best loss decrease against a size parameter, one line per estimator config; the best lr is
    chosen per config, i.e. per estimator config and size."""
    out = []
    for axis in SIZE_AXES:
        table = best_vs_size(data, axis)
        if table.empty:
            continue
        table = table.set_index("config")
        fig_cols = [c for c in data.figure_columns(data.setting_columns) if c != axis]
        dashes = {s: DASHES[i % len(DASHES)] for i, s in enumerate(data.sweeps)}
        for key, group in group_keys(table, fig_cols):
            if group[axis].nunique() < 2:
                continue
            name = short_name(axis)
            where = _title_part(key, table, fig_cols)
            title = f"best loss decrease vs {name}" + (f" - {where}" if where else "")
            panel_labels = _panel_order(group["pretrain_label"])
            canvas = panels(len(panel_labels))
            sizes = sorted(group[axis].unique())
            hcols = hover_columns(data, group)
            lines = 0
            log = min(sizes) > 0 and max(sizes) / min(sizes) >= 4
            plot = Plot([f"{panel} ({data.count(group.index[group['pretrain_label'] == panel], 'probe')})" for panel in panel_labels],
                        f"{name} (problem size)", "best loss decrease over the lr grid", x_type="log" if log else "linear",
                        legend_title="estimator config", x_ticks=sizes)
            for i, (ax, panel) in enumerate(zip(canvas.axes, panel_labels)):
                members = group[group["pretrain_label"] == panel]
                est_cols = [c for c in data.line_columns if c in members.columns]
                line_count = 0
                for _, line in group_keys(members, est_cols):
                    line = line.sort_values(axis)
                    label = line["estimator_label"].iloc[0]
                    ax.errorbar(
                        line[axis], line["best_mean"], yerr=line["best_std"].fillna(0), fmt="--", marker=".",
                        color=palette(label), label=label, capsize=3, linewidth=1.2,
                    )
                    hover = [
                        f"<b>{label}</b> ({panel})<br>{name}={format_value(r[axis])}<br>best mean {r['best_mean']:.4g} ±"
                        f" {0 if pd.isna(r['best_std']) else r['best_std']:.3g} at lr={format_value(r['best_lr'])}"
                        f"<br>n={int(r['n'])}, seeds {int(r['seeds'])}<br>{hover_lines(data, r, skip=[axis], columns=hcols)}"
                        for _, r in line.iterrows()
                    ]
                    first = line.iloc[0]
                    plot.line(i, line[axis], line["best_mean"], label=label, colour=palette(label), hover=hover,
                              params={k: v for k, v in params_of(data, first).items() if k != axis},
                              points={axis: [format_value(v) for v in line[axis]]}, error=line["best_std"].fillna(0.0),
                              dash=dashes.get(first.get("sweep"), "dash"))
                    line_count += 1
                lines = max(lines, line_count)
                ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
                if min(sizes) > 0 and max(sizes) / min(sizes) >= 4:
                    ax.set_xscale("log", base=2)
                ax.set_xticks(sizes)
                ax.set_xticklabels([format_value(s) for s in sizes])
                ax.set_xlabel(f"{name} (problem size)")
                ax.set_title(f"{panel} ({data.count(members.index, 'probe')})", fontsize="medium")
                ax.grid(alpha=0.3)
            canvas.axes[0].set_ylabel("best loss decrease over the lr grid (loss units)")
            path = canvas.save(out_dir / f"best-{slug(title)}.png", title, "estimator config")
            caption = (
                f"{lines} lines (estimator configs) against {name} in {{{', '.join(format_value(s) for s in sizes)}}}."
                f" Each point: the mean loss decrease (over seeds and batches) at that config's best lr, the best lr"
                f" chosen per config and {name}; error bar +-1 std. {data.count(group.index, 'probe')}."
                + (f" Panels: {', '.join(panel_labels)}." if len(panel_labels) > 1 else "")
                + f" Fixed: {describe_fixed(key)}."
            )
            plot.hline(0.0)
            out.append(Figure(path, title, caption, plot.to_dict()))
    return out


def _layer_order(layers: list[str]) -> list[str]:
    """Layers in their first-seen order, ``all`` last."""
    return [layer for layer in layers if layer != "all"] + (["all"] if "all" in layers else [])


def cosine_figures(data: ResultsData, table: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """A heatmap of the mean cosine (estimator configs by layer) per (setting, reference)."""
    cosine = data.records("cosine")
    configs = data.configs(cosine)
    joined = table.drop(columns=["cells", "seeds"]).join(configs, on="config", how="inner")
    fig_cols = data.figure_columns(data.setting_columns) + ["reference"]
    layer_seen = list(dict.fromkeys(cosine["layer"].dropna()))
    out = []
    for key, group in group_keys(joined, fig_cols):
        reference = format_value(key["reference"])
        where = _title_part(key, joined, data.figure_columns(data.setting_columns))
        title = f"cosine to {reference}" + (f" - {where}" if where else "")
        panel_labels = _panel_order(group["pretrain_label"])
        layers = _layer_order([layer for layer in layer_seen if layer in set(group["layer"])])
        # One row per estimator config, in config order, the same rows in every panel.
        rows = list(dict.fromkeys(group.sort_values("config")["estimator_label"]))
        canvas = panels(
            len(panel_labels), panel=max(2.5, 0.8 * len(layers)), height=max(3.0, 0.3 * len(rows) + 1.7),
            left=0.3 + 0.065 * max(len(r) for r in rows), bottom=0.85,
        )
        image = None
        plot = Plot(panel_labels, "layer", "", x_type="category", y_type="category", legend_title="",
                    height=max(300, 28 * len(rows) + 160))
        by_label = group.drop_duplicates("estimator_label").set_index("estimator_label")
        hcols = hover_columns(data, group)
        for p, (ax, panel) in enumerate(zip(canvas.axes, panel_labels)):
            members = group[group["pretrain_label"] == panel]
            grid = members.pivot_table(index="estimator_label", columns="layer", values="mean", aggfunc="mean")
            grid = grid.reindex(index=rows, columns=layers)
            values = grid.to_numpy(dtype=float)
            stats = members.set_index(["estimator_label", "layer"])
            hover = [[
                (f"<b>{r}</b> ({panel})<br>layer {layer}<br>mean {s['mean']:.3f}, median {s['median']:.3f},"
                 f" IQR [{s['q25']:.3f}, {s['q75']:.3f}], min-max [{s['min']:.3f}, {s['max']:.3f}]<br>n={int(s['n'])}"
                 f"<br>{hover_lines(data, by_label.loc[r], columns=hcols)}")
                if (r, layer) in stats.index and not isinstance(s := stats.loc[(r, layer)], pd.DataFrame) else ""
                for layer in layers] for r in rows]
            plot.heatmap(p, values, layers, rows, hover=hover, title="cosine",
                         row_params=[params_of(data, by_label.loc[r]) for r in rows])
            image = ax.imshow(values, cmap="RdBu", vmin=-1.0, vmax=1.0, aspect="auto")
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels(layers, rotation=30, ha="right")
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(rows, fontsize="small")
            if values.size <= 64:  # numbers stay legible (and text is the costly part to draw)
                for (i, j), v in np.ndenumerate(values):
                    if not np.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="x-small",
                                color="white" if abs(v) > 0.6 else "black")
            ax.set_xlabel("layer ('all': every estimated parameter)")
            ax.set_title(f"{panel} ({data.count(members['config'], 'cosine')})", fontsize="medium")
        if image is not None:
            canvas.colorbar(image, "cosine (mean over seeds, batches)")
        path = canvas.save(out_dir / f"cosine-{slug(title)}.png", title)
        caption = (
            f"Mean cosine similarity between each estimator config's gradient (rows, {group['config'].nunique()} configs)"
            f" and the reference {reference}, per layer (columns; 'all' = all estimated parameters together),"
            f" over seeds and batches (up to {int(group['n'].max())} samples per square)."
            f" {data.count(group['config'], 'cosine')}."
            + (f" Panels: {', '.join(panel_labels)}." if len(panel_labels) > 1 else "")
            + f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption, plot.to_dict()))
    return out
