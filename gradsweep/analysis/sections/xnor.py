"""XNOR-ResNet figures: the notes' per-batch STE vs CDG figure, and cosine per layer.

- **best loss decrease per batch** (figures 202105190001..08 of the notes): one figure per
  problem setting (channels, weight case, ...) and seed, one panel per measured layer
  (``params``), x = the probe batch, one line per estimator kind. A point is the largest loss
  decrease of that batch over the lr grid *and* over every config of that kind (CDG's epsilons),
  annotated with the lr (and the varying estimator parameter, e.g. epsilon) that reached it.
- **cosine to the reference per layer and weight case**: one figure per remaining setting; x =
  CDG's epsilon, one line per (weights, layer), the mean cosine over batches and seeds with a
  +-1 std band.

Only rows of ``problem.kind == xnor_resnet18`` are drawn; [] when there are none.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gradsweep.analysis.core import KIND_NAMES, Figure, ResultsData, describe, describe_fixed, format_value, group_keys, short_name, varying
from gradsweep.analysis.figures import Palette, panels, slug

__all__ = ["TITLE", "section", "best_per_batch", "layer_label"]

TITLE = "XNOR-ResNet-18: STE vs CDG per batch and layer"

KIND = "xnor_resnet18"
LAYER_COLUMN = "params"
# estimator parameters that are never the "which one won" annotation (they do not vary a config)
_ANNOTATION_SKIP = ("estimator.kind", "estimator.seed")


def layer_label(params: object) -> str:
    """``'["conv:1"]'`` (the params column, JSON) -> ``conv:1``."""
    if not isinstance(params, str):
        return format_value(params)
    try:
        value = json.loads(params)
    except ValueError:
        return params
    return ", ".join(value) if isinstance(value, list) else str(value)


def _layer_order(params: object) -> tuple:
    """conv:1, conv:8, ..., then conv:-2, conv:-1 (from the input, then from the end), then names."""
    label = layer_label(params)
    kind, _, k = label.partition(":")
    try:
        number = int(k)
    except ValueError:
        return (2, 0, label)
    return (0 if number > 0 else 1, number, kind)


def best_per_batch(probe: pd.DataFrame, estimator_columns: list[str]) -> pd.DataFrame:
    """Per (cell group, batch): the row of the largest loss decrease over lr and configs.

    ``probe`` rows of one (setting, seed, layer, estimator kind). Returns one row per batch with
    ``loss_decrease``, ``lr`` and the estimator columns of the winning config (ties: first in
    (lr, parameters) order, i.e. the smaller lr).
    """
    valid = probe.dropna(subset=["loss_decrease"]).sort_values(["batch", "lr", *estimator_columns])
    index = valid.groupby("batch", sort=True)["loss_decrease"].idxmax()
    return valid.loc[index.values].reset_index(drop=True)


def _annotation(row: pd.Series, columns: list[str]) -> str:
    parts = [f"lr={format_value(row['lr'])}"]
    parts += [f"{'ε' if c == 'estimator.epsilon' else short_name(c)}={format_value(row[c])}" for c in columns]
    return "\n".join(parts)


def section(data: ResultsData, out_dir: Path) -> list[Figure]:
    """Every XNOR figure of the folder; [] when it has no xnor_resnet18 rows."""
    cells = data.cells
    if "problem.kind" not in cells.columns or not (cells["problem.kind"] == KIND).any():
        return []
    rows = data.rows[data.rows["cell_id"].isin(cells.index[cells["problem.kind"] == KIND])]
    params = [c for c in cells.columns if c not in rows.columns]
    rows = rows.join(cells[params], on="cell_id")  # the cells' parameters on every row
    figures = per_batch_figures(data, rows[rows["record"] == "probe"], out_dir)
    figures += cosine_figures(data, rows[rows["record"] == "cosine"], out_dir)
    return figures


def _settings(data: ResultsData, frame: pd.DataFrame) -> list[str]:
    """Setting columns that split figures: the problem's (layer excluded) and the measure's."""
    return [c for c in data.setting_columns if c != LAYER_COLUMN and c in frame.columns]


def per_batch_figures(data: ResultsData, probe: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """The notes' figure: best loss decrease of each estimator kind per batch, per layer."""
    probe = probe.dropna(subset=["loss_decrease"])
    if probe.empty:
        return []
    settings = _settings(data, probe)
    title_cols = varying(probe, settings)
    est_cols = [c for c in data.estimator_columns if c in probe.columns and c not in _ANNOTATION_SKIP]
    kinds = sorted(probe["estimator.kind"].dropna().unique())
    palette = Palette(KIND_NAMES.get(k, k) for k in kinds)
    out = []
    for key, part in group_keys(probe, [*settings, "seed"]):
        layers = sorted(part[LAYER_COLUMN].dropna().unique(), key=_layer_order) if LAYER_COLUMN in part else [None]
        where = describe(key, title_cols) if title_cols else KIND
        title = f"best loss decrease per batch - {where}, seed={key['seed']}"
        canvas = panels(len(layers), panel=5.6, height=4.6, sharey=False)
        annotated = []
        for ax, layer in zip(canvas.axes, layers):
            in_layer = part if layer is None else part[part[LAYER_COLUMN] == layer]
            for kind, of_kind in in_layer.groupby("estimator.kind", sort=True):
                name = KIND_NAMES.get(kind, str(kind))
                vary = varying(of_kind, est_cols, null_is_value=False)
                best = best_per_batch(of_kind, vary)
                x = best["batch"].to_numpy() + 1
                ax.plot(x, best["loss_decrease"], "o--", color=palette(name), label=f"{name} (best over lr"
                        + (f", {', '.join(short_name(c) for c in vary)})" if vary else ")"), markersize=4, linewidth=1.2)
                for xi, (_, row) in zip(x, best.iterrows()):
                    ax.annotate(_annotation(row, vary), (xi, row["loss_decrease"]), textcoords="offset points",
                                xytext=(0, 5), ha="center", fontsize=6, color=palette(name))
                annotated += vary
            ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(layer_label(layer) if layer is not None else "all layers", fontsize="medium")
            ax.set_xlabel("probe batch")
            ax.set_xticks(sorted(set((part["batch"] + 1).astype(int))))
            ax.grid(alpha=0.3)
        canvas.axes[0].set_ylabel("best loss decrease (cross-entropy)")
        path = canvas.save(out_dir / f"xnor-batches-{slug(title)}.png", title, "estimator")
        cells = data.cells_of(part)
        names = sorted({short_name(c) for c in annotated})
        caption = (
            "Per probe batch, the largest loss decrease L(w) - L(w - lr g/|g|) over the lr grid"
            + (f" and over {', '.join(names)}" if names else "")
            + f" for each estimator kind, annotated with the lr{' and ' + ', '.join(names) if names else ''} that reached it;"
            f" one panel per measured layer ({', '.join(layer_label(v) for v in layers)}). {len(cells)} cells."
            f" Fixed: {describe_fixed(key, prefix='problem.')}."
        )
        out.append(Figure(path, title, caption))
    return out


def cosine_figures(data: ResultsData, cosine: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Mean cosine of CDG to the reference against epsilon, one line per (weights, layer)."""
    cosine = cosine.dropna(subset=["cosine"])
    cosine = cosine[(cosine["estimator.kind"] == "cdg") & (cosine["layer"] != "all")] if not cosine.empty else cosine
    if cosine.empty or "estimator.epsilon" not in cosine.columns:
        return []
    line_cols = [c for c in ("problem.weights", LAYER_COLUMN) if c in cosine.columns]
    settings = [c for c in _settings(data, cosine) if c not in line_cols]
    title_cols = varying(cosine, settings)
    out = []
    for key, part in group_keys(cosine, [*settings, "reference"]):
        where = describe({k: v for k, v in key.items() if k != "reference"}, title_cols) if title_cols else KIND
        title = f"cosine of CDG to {key['reference']} - {where}"
        canvas = panels(1, panel=6.0, height=4.6)
        ax = canvas.axes[0]
        lines = sorted(group_keys(part, line_cols), key=lambda kv: [
            _layer_order(v) if c == LAYER_COLUMN else (0, 0, format_value(v)) for c, v in kv[0].items()])
        palette = Palette(describe(k, line_cols) for k, _ in lines)
        for line_key, line in lines:
            label = ", ".join(
                layer_label(v) if c == LAYER_COLUMN else f"{short_name(c)}={format_value(v)}" for c, v in line_key.items()
            )
            stats = line.groupby("estimator.epsilon")["cosine"].agg(["mean", "std"]).reset_index()
            colour = palette(describe(line_key, line_cols))
            ax.plot(stats["estimator.epsilon"], stats["mean"], "o-", color=colour, label=label, markersize=4)
            band = stats["std"].fillna(0.0).to_numpy()
            ax.fill_between(stats["estimator.epsilon"], stats["mean"] - band, stats["mean"] + band, color=colour,
                            alpha=0.15, linewidth=0)
        if (part["estimator.epsilon"] > 0).all() and part["estimator.epsilon"].nunique() > 1:
            ax.set_xscale("log")
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("CDG epsilon")
        ax.set_ylabel("cosine(CDG, reference)")
        ax.grid(alpha=0.3)
        path = canvas.save(out_dir / f"xnor-cosine-{slug(title)}.png", title, "weights, layer")
        cells = data.cells_of(part)
        caption = (
            f"Cosine between CDG's gradient and {key['reference']}'s on the same batch and layer, mean over"
            f" batches and seeds (band +-1 std), one line per weight case and layer. {len(cells)} cells,"
            f" {cells['seed'].nunique()} seeds. Fixed: {describe_fixed(key, prefix='problem.')}."
        )
        out.append(Figure(path, title, caption))
    return out

