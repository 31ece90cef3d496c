"""Follow-up figures: sr-STE against N, who beats vanilla STE, NES's cosine to CDG, training curves.

- **sr-STE vs N** (the notes' figures 202105190009..13): per problem setting and temperature,
  three panels against the number of sampled gradients N: the loss before the update and the best
  loss after it (min over the lr grid) for sr-STE, vanilla STE's best loss after as a dashed line
  (mean over seeds and batches, band min-max over them); per batch (first seed), sr-STE's best
  loss after minus vanilla STE's on the same batch (below 0: sr-STE did better there); the best lr.
- **beats vanilla STE**: per setting and student (raw / pretrained), for every estimator config,
  the fraction of (seed, batch) pairs where its best loss decrease exceeds vanilla (clipped,
  t = 1) STE's on the same batch (the notes counted 8/10 batches).
- **NES cosine to CDG**: the cosine over all layers between NES and the CDG reference against
  sigma, one line per sample count, raw and pretrained students side by side (the notes saw NES
  stop pointing downhill after pretraining).
- **training curves**: the ``train`` rows' loss against step, one line per config, a marker where
  a ``switch`` changed the estimator.

Every figure is drawn only when its rows are in the folder. Imports pandas and matplotlib only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from gradsweep.analysis.core import KIND_NAMES, Figure, ResultsData, describe, describe_fixed, format_value, group_keys, short_name, varying
from gradsweep.analysis.figures import Palette, panels, slug

TITLE = "Follow-ups: sr-STE against N, who beats vanilla STE, NES against CDG, training curves"

BEST_LOSS_LABEL = "loss (best over the lr grid for 'after')"


def section(data: ResultsData, out_dir: Path) -> list[Figure]:
    """Every follow-up figure the folder has rows for; [] when none applies."""
    figures: list[Figure] = []
    probe = data.records("probe")
    if not probe.empty and probe["loss_decrease"].notna().any():
        per_batch = best_per_batch(data)
        figures += sr_ste_figures(data, per_batch, out_dir)
        figures += beats_vanilla_figures(data, per_batch, out_dir)
    cosine = data.records("cosine")
    if not cosine.empty and cosine["cosine"].notna().any():
        figures += nes_cosine_figures(data, cosine, out_dir)
    train = data.records("train")
    if not train.empty and train["loss"].notna().any():
        figures += training_figures(data, train, out_dir)
    return figures


# -- aggregations (pure pandas) ---------------------------------------------------------------


def best_per_batch(data: ResultsData) -> pd.DataFrame:
    """One row per (cell, batch): ``loss_before``, ``best_after`` (min loss after over the lr
    grid), ``best_decrease`` and ``best_lr`` (at the largest decrease; ties: the smaller lr), with
    ``seed``, ``config`` and a ``match`` key: cells with equal keys share problem, data and seed,
    so their batch ``b`` is the same data (only the estimator differs)."""
    return data.memo("followups_best_per_batch", lambda: _best_per_batch(data))


def _best_per_batch(data: ResultsData) -> pd.DataFrame:
    probe = data.records("probe").dropna(subset=["loss_decrease"])
    ordered = probe.sort_values(["cell_id", "batch", "loss_decrease", "lr"], ascending=[True, True, False, True])
    best = ordered.drop_duplicates(["cell_id", "batch"])[["cell_id", "batch", "seed", "config", "loss_before", "loss_decrease", "lr"]]
    best = best.rename(columns={"loss_decrease": "best_decrease", "lr": "best_lr"})
    best["best_after"] = best["loss_before"] - best["best_decrease"]
    return best.assign(match=best["cell_id"].map(match_keys(data))).reset_index(drop=True)


def match_keys(data: ResultsData) -> pd.Series:
    """Per cell: a text key of every non-estimator parameter and the seed."""
    cols = [c for c in data.param_columns if not c.startswith("estimator.")] + ["seed"]
    cells = data.cells[cols].astype(object).where(data.cells[cols].notna(), None)
    return cells.apply(lambda row: repr(tuple(row)), axis=1)


def vanilla_mask(cells: pd.DataFrame) -> pd.Series:
    """Cells of vanilla STE: ``ste``, clipped, threshold 1 (columns absent mean the defaults)."""
    mask = cells.get("estimator.kind", pd.Series(None, index=cells.index)) == "ste"
    if "estimator.variant" in cells.columns:
        mask &= cells["estimator.variant"].isna() | (cells["estimator.variant"] == "clipped")
    if "estimator.threshold" in cells.columns:
        mask &= cells["estimator.threshold"].isna() | (cells["estimator.threshold"] == 1.0)
    return mask


def against_vanilla(data: ResultsData, per_batch: pd.DataFrame) -> pd.DataFrame:
    """``per_batch`` rows of non-vanilla cells joined with vanilla STE's best on the same batch
    (``vanilla_decrease``, ``vanilla_after``) and ``beats`` (strictly larger best decrease)."""
    vanilla_cells = data.cells.index[vanilla_mask(data.cells)]
    is_vanilla = per_batch["cell_id"].isin(vanilla_cells)
    vanilla = per_batch[is_vanilla].drop_duplicates(["match", "batch"])[["match", "batch", "best_decrease", "best_after"]]
    vanilla = vanilla.rename(columns={"best_decrease": "vanilla_decrease", "best_after": "vanilla_after"})
    joined = per_batch[~is_vanilla].merge(vanilla, on=["match", "batch"], how="inner")
    return joined.assign(beats=joined["best_decrease"] > joined["vanilla_decrease"])


def beat_rates(data: ResultsData, per_batch: pd.DataFrame) -> pd.DataFrame:
    """Per config (non-vanilla): ``wins``, ``batches`` and ``rate`` = wins / batches."""
    joined = against_vanilla(data, per_batch)
    if joined.empty:
        return pd.DataFrame(columns=["config", "wins", "batches", "rate"])
    out = joined.groupby("config").agg(wins=("beats", "sum"), batches=("beats", "size")).reset_index()
    return out.assign(rate=out["wins"] / out["batches"])


# -- figures ------------------------------------------------------------------------------------


def _setting_cols(data: ResultsData) -> list[str]:
    return [c for c in data.setting_columns if c.startswith("problem.") or c.startswith("measure.")]


def _where(key: dict[str, Any], configs: pd.DataFrame, cols: list[str]) -> str:
    shown = varying(configs, cols)
    return describe(key, shown) if shown else format_value(key.get("problem.kind", ""))


def sr_ste_figures(data: ResultsData, per_batch: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Loss before/after and best lr against N for sr-STE, with vanilla STE for reference."""
    cells = data.cells
    if "estimator.samples" not in cells.columns or not (cells.get("estimator.kind") == "sr_ste").any():
        return []
    sr_cells = cells.index[cells["estimator.kind"] == "sr_ste"]
    fig_cols = _setting_cols(data) + ["pretrain_label"] + (["estimator.tau"] if "estimator.tau" in cells else [])
    rows = per_batch[per_batch["cell_id"].isin(sr_cells)].merge(
        cells[[*fig_cols, "estimator.samples"]], left_on="cell_id", right_index=True,
    )
    versus = against_vanilla(data, per_batch).set_index(["cell_id", "batch"])
    configs = data.configs(rows)
    out: list[Figure] = []
    for key, part in group_keys(rows, fig_cols):
        title = f"sr-STE vs N - {_where(key, configs, fig_cols)}"
        canvas = panels(3, sharey=False, panel=4.4, gap=1.1)
        mean_ax, batch_ax, lr_ax = canvas.axes
        stats = part.groupby("estimator.samples").agg(
            before=("loss_before", "mean"), after=("best_after", "mean"),
            after_min=("best_after", "min"), after_max=("best_after", "max"), best_lr=("best_lr", "mean"),
            lr_std=("best_lr", "std"),
        )
        n = stats.index.to_numpy()
        mean_ax.plot(n, stats["after"], "-", color="tab:red", marker=".", label="sr-STE: best loss after")
        mean_ax.fill_between(n, stats["after_min"], stats["after_max"], color="tab:red", alpha=0.15, linewidth=0)
        keyed = part.set_index(["cell_id", "batch"])
        matched = versus.loc[versus.index.intersection(keyed.index)]
        if not matched.empty:
            mean_ax.axhline(matched["vanilla_after"].mean(), color="black", linestyle="--", label="vanilla STE: best loss after")
            first = part["seed"].min()
            sub = matched.reset_index()[["cell_id", "batch", "seed", "best_after", "vanilla_after"]].merge(
                part[["cell_id", "batch", "estimator.samples"]], on=["cell_id", "batch"])
            sub = sub[sub["seed"] == first]
            for b, one in sub.groupby("batch"):
                one = one.sort_values("estimator.samples")
                batch_ax.plot(one["estimator.samples"], one["best_after"] - one["vanilla_after"], linewidth=0.9,
                              marker=".", label=f"batch {b}")
            batch_ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
        mean_ax.set_ylabel(BEST_LOSS_LABEL)
        batch_ax.set_ylabel("sr-STE minus vanilla STE")
        lr_ax.errorbar(n, stats["best_lr"], yerr=stats["lr_std"].fillna(0.0), color="tab:red", marker=".", capsize=2)
        lr_ax.set_ylabel("best lr (mean +-1 std)")
        before = ", ".join(f"{v:.4g}" for v in sorted(set(stats["before"].round(6))))
        panel_titles = (f"mean over seeds and batches (loss before: {before})",
                        "best loss after, per batch (first seed)", "best lr")
        for ax, what in zip(canvas.axes, panel_titles):
            ax.set_xlabel("N, sampled STE gradients averaged")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(what, fontsize="small")
            ax.grid(alpha=0.3)
        path = canvas.save(out_dir / f"followups-{slug(title)}.png", title)
        count = part["cell_id"].nunique()
        caption = (
            f"sr-STE with N = {', '.join(str(int(v)) for v in n)}; {count} cells, {part['seed'].nunique()} seeds,"
            f" {part['batch'].nunique()} batches. 'Best loss after' is the lowest loss over the lr grid on that batch;"
            " band: min-max over seeds and batches; vanilla STE on the same batches dashed. Middle: per batch of"
            " the first seed, below 0 means sr-STE reached a lower loss than vanilla STE on that batch."
            f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption))
    return out


def beats_vanilla_figures(data: ResultsData, per_batch: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Per setting, bars: how often each estimator config beats vanilla STE on the same batch."""
    rates = beat_rates(data, per_batch)
    if rates.empty:
        return []
    configs = data.configs(per_batch)
    table = rates.set_index("config").join(configs[["estimator_label", "pretrain_label", *_setting_cols(data)]])
    fig_cols = [c for c in _setting_cols(data) if c in table.columns]
    out: list[Figure] = []
    for key, part in group_keys(table.reset_index(), fig_cols):
        students = sorted(part["pretrain_label"].unique(), key=lambda s: (s != "raw", s))
        title = f"beats vanilla STE - {_where(key, configs, fig_cols)}"
        height = max(3.0, 0.28 * part.groupby("pretrain_label").size().max() + 1.4)
        canvas = panels(len(students), panel=5.0, height=height, left=3.2, sharey=False)
        for ax, student in zip(canvas.axes, students):
            rows = part[part["pretrain_label"] == student].sort_values("estimator_label")
            y = np.arange(len(rows))
            ax.barh(y, rows["rate"], color="tab:blue", alpha=0.8)
            ax.set_yticks(y, rows["estimator_label"], fontsize="x-small")
            for yi, (wins, total) in enumerate(zip(rows["wins"], rows["batches"])):
                ax.text(1.01, yi, f"{int(wins)}/{int(total)}", va="center", fontsize="x-small")
            ax.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
            ax.set_xlim(0, 1.15)
            ax.set_xlabel("fraction of (seed, batch) with a larger best loss decrease than vanilla STE")
            ax.set_title(student, fontsize="small")
        path = canvas.save(out_dir / f"followups-{slug(title)}.png", title)
        caption = (
            "Per estimator config: wins / (seed, batch) pairs, where a win is a strictly larger best loss"
            " decrease (max over the lr grid) than vanilla STE (clipped, t = 1) on the same batch and seed."
            f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption))
    return out


def nes_cosine_figures(data: ResultsData, cosine: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Cosine(NES, reference) over all layers against sigma, a line per sample count."""
    cells = data.cells
    if "estimator.sigma" not in cells.columns or not (cells.get("estimator.kind") == "nes").any():
        return []
    nes_cells = cells.index[cells["estimator.kind"] == "nes"]
    rows = cosine[(cosine["layer"] == "all") & cosine["cell_id"].isin(nes_cells) & cosine["cosine"].notna()]
    if rows.empty:
        return []
    rows = rows.merge(cells[["estimator.sigma", "estimator.samples", "pretrain_label"]], left_on="cell_id", right_index=True)
    fig_cols = [c for c in _setting_cols(data) if c in rows.columns] + ["reference"]
    configs = data.configs(rows)
    palette = Palette(str(int(s)) for s in rows["estimator.samples"].unique())
    out: list[Figure] = []
    for key, part in group_keys(rows, fig_cols):
        students = sorted(part["pretrain_label"].unique(), key=lambda s: (s != "raw", s))
        where = _where(key, configs, [c for c in fig_cols if c != "reference"])
        title = f"NES cosine to {key['reference']}" + (f" - {where}" if where else "")
        canvas = panels(len(students))
        for ax, student in zip(canvas.axes, students):
            for samples, one in part[part["pretrain_label"] == student].groupby("estimator.samples"):
                stats = one.groupby("estimator.sigma")["cosine"].agg(["mean", "std"]).sort_index()
                colour = palette(str(int(samples)))
                ax.plot(stats.index, stats["mean"], marker=".", color=colour, label=f"samples={int(samples)}")
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                                color=colour, alpha=0.15, linewidth=0)
            ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xscale("log")
            ax.set_xlabel("NES sigma (smoothing scale)")
            ax.set_ylabel("cosine over all layers (mean +-1 std)")
            ax.set_title(student, fontsize="small")
            ax.grid(alpha=0.3, which="both")
        path = canvas.save(out_dir / f"followups-{slug(title)}.png", title, "NES samples")
        caption = (
            f"Cosine between NES and the reference over all estimated layers, mean over seeds and batches"
            f" ({part['cell_id'].nunique()} cells). Near 0 or below: NES no longer points where the reference does."
            f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption))
    return out


def _train_label(row: pd.Series, others: list[str], switch_cols: list[str]) -> str:
    """``STE``, ``STE -> NES(sigma=0.01)``: the estimator, its switch, and what else varies."""
    label = row["estimator_label"]
    kind = row.get("step.switch.kind")
    if kind is not None and not pd.isna(kind):
        detail = describe(row, switch_cols, strip="step.switch.", skip_null=True)
        name = KIND_NAMES.get(kind, str(kind))
        label += f" -> {name}({detail})" if detail else f" -> {name}"
    extra = describe(row, others)
    return f"{label}, {extra}" if extra else label


def training_figures(data: ResultsData, train: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Loss against step per config; a marker where the estimator in force changed."""
    rows = train.dropna(subset=["loss", "step"])
    configs = data.configs(rows)
    fig_cols = [c for c in data.setting_columns if c.startswith("problem.")] + data.pretrain_columns
    line_cols = [c for c in data.param_columns if c not in fig_cols]
    out: list[Figure] = []
    for key, group in group_keys(configs, [c for c in fig_cols if c in configs.columns]):
        others = [c for c in varying(group, line_cols) if not c.startswith(("estimator.", "step.switch."))]
        switch_cols = [c for c in varying(group, line_cols, null_is_value=False)
                       if c.startswith("step.switch.") and c != "step.switch.kind"]
        labels = {config: _train_label(row, others, switch_cols) for config, row in group.iterrows()}
        palette = Palette(labels.values())
        title = f"training loss vs step - {_where(key, configs, fig_cols)}"
        canvas = panels(1, panel=6.5, height=4.6)
        ax = canvas.axes[0]
        for config in group.index:
            one = rows[rows["config"] == config]
            curve = one.groupby("step")["loss"].agg(["mean", "min", "max"])
            colour = palette(labels[config])
            ax.plot(curve.index, curve["mean"], color=colour, label=labels[config], linewidth=1.2)
            ax.fill_between(curve.index, curve["min"], curve["max"], color=colour, alpha=0.12, linewidth=0)
            first = one[one["seed"] == one["seed"].min()].sort_values("step")
            switched = first[first["estimator"] != first["estimator"].iloc[0]]
            if not switched.empty:
                s = int(switched["step"].iloc[0])
                ax.plot([s], [float(curve.loc[s, "mean"])], marker="v", color=colour, markersize=8)
        ax.set_yscale("log")
        ax.set_xlabel("step (updates)")
        ax.set_ylabel("loss on the probe batches (log scale)")
        ax.grid(alpha=0.3, which="both")
        names = ", ".join(short_name(c) for c in varying(group, line_cols)) or "none"
        path = canvas.save(out_dir / f"followups-{slug(title)}.png", title, "estimator (then switch)")
        cells = data.cells_of(rows[rows["config"].isin(group.index)])
        caption = (
            f"{len(group)} configs, varied: {names}. Mean loss over seeds (band min-max) on the fixed probe"
            " batches at each logged step; a triangle marks the first logged step after a switch of estimator"
            f" (first seed). {len(cells)} cells, {cells['seed'].nunique()} seeds."
            f" Fixed: {describe_fixed(key)}."
        )
        out.append(Figure(path, title, caption))
    return out
