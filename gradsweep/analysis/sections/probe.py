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
from gradsweep.analysis.figures import Palette, panels, slug, use_log_x

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
    fig_cols = data.setting_columns + [c for c in FIGURE_ESTIMATOR_COLUMNS if c in configs.columns]
    curve_cols = [c for c in data.estimator_columns if c not in fig_cols]
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
        for ax, panel in zip(canvas.axes, panel_labels):
            members = group[group["pretrain_label"] == panel]
            for config, row in members.iterrows():
                c = by_config.get(config)
                if c is None or c["mean"].isna().all():
                    continue
                colour = palette(row["estimator_label"])
                lr, mean, std = c["lr"].to_numpy(), c["mean"].to_numpy(), c["std"].fillna(0).to_numpy()
                ax.plot(lr, mean, "--", marker=".", color=colour, label=row["estimator_label"], linewidth=1.2)
                ax.fill_between(lr, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
            ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
            if use_log_x(curves.loc[curves["config"].isin(members.index), "lr"].unique().tolist()):
                ax.set_xscale("log")
            ax.set_xlabel(LR_LABEL)
            ax.set_title(f"{panel} ({data.count(members.index, 'probe')})", fontsize="medium")
            ax.grid(alpha=0.3)
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
            + f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption))
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
        fig_cols = [c for c in data.setting_columns if c != axis]
        for key, group in group_keys(table, fig_cols):
            if group[axis].nunique() < 2:
                continue
            name = short_name(axis)
            where = _title_part(key, table, fig_cols)
            title = f"best loss decrease vs {name}" + (f" - {where}" if where else "")
            panel_labels = _panel_order(group["pretrain_label"])
            canvas = panels(len(panel_labels))
            sizes = sorted(group[axis].unique())
            lines = 0
            for ax, panel in zip(canvas.axes, panel_labels):
                members = group[group["pretrain_label"] == panel]
                est_cols = [c for c in data.estimator_columns if c in members.columns]
                line_count = 0
                for _, line in group_keys(members, est_cols):
                    line = line.sort_values(axis)
                    label = line["estimator_label"].iloc[0]
                    ax.errorbar(
                        line[axis], line["best_mean"], yerr=line["best_std"].fillna(0), fmt="--", marker=".",
                        color=palette(label), label=label, capsize=3, linewidth=1.2,
                    )
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
            out.append(Figure(path, title, caption))
    return out


def _layer_order(layers: list[str]) -> list[str]:
    """Layers in their first-seen order, ``all`` last."""
    return [layer for layer in layers if layer != "all"] + (["all"] if "all" in layers else [])


def cosine_figures(data: ResultsData, table: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """A heatmap of the mean cosine (estimator configs by layer) per (setting, reference)."""
    cosine = data.records("cosine")
    configs = data.configs(cosine)
    joined = table.drop(columns=["cells", "seeds"]).join(configs, on="config", how="inner")
    fig_cols = data.setting_columns + ["reference"]
    layer_seen = list(dict.fromkeys(cosine["layer"].dropna()))
    out = []
    for key, group in group_keys(joined, fig_cols):
        reference = format_value(key["reference"])
        where = _title_part(key, joined, data.setting_columns)
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
        for ax, panel in zip(canvas.axes, panel_labels):
            members = group[group["pretrain_label"] == panel]
            grid = members.pivot_table(index="estimator_label", columns="layer", values="mean", aggfunc="mean")
            grid = grid.reindex(index=rows, columns=layers)
            values = grid.to_numpy(dtype=float)
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
        out.append(Figure(path, title, caption))
    return out
