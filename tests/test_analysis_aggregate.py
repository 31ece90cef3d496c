"""Aggregations against numbers computed by hand on tiny synthetic results folders."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gradsweep.analysis.aggregate import best_lr, best_vs_size, cosine_table, descent_curves, lr_curves, summary
from gradsweep.analysis.core import ResultsError, load_results, varying
from analysis_synthetic import TOY, probe_rows, write_cell


def cdg(eps: float, dim: int, seed: int) -> dict:
    return {**TOY, "problem.dim": dim, "estimator.kind": "cdg", "estimator.epsilon": eps,
            "estimator.mode": "central", "seed": seed}


# eps = 0.1, dim 4: loss decrease per (seed, batch, lr)
#            lr 0.1   lr 0.5
#  seed 0 b0   1.0      2.0
#  seed 0 b1   3.0     -1.0
#  seed 1 b0   2.0      4.0
#  seed 1 b1   2.0      7.0
# lr 0.1: mean 2, sample std sqrt(2/3); lr 0.5: mean 3, sample std sqrt(34/3), 3 of 4 down.
EPS01_DIM4 = {
    0: {(0, 0.1): 1.0, (0, 0.5): 2.0, (1, 0.1): 3.0, (1, 0.5): -1.0},
    1: {(0, 0.1): 2.0, (0, 0.5): 4.0, (1, 0.1): 2.0, (1, 0.5): 7.0},
}
SECONDS = {0: {0: 0.1, 1: 0.3}, 1: {0: 0.2, 1: 0.2}}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for seed, values in EPS01_DIM4.items():
        write_cell(tmp_path, cdg(0.1, 4, seed), probe_rows(values, SECONDS[seed]))
    # eps = 0.01, dim 4: the same mean (1.0) at both lrs: the tie goes to the smaller lr.
    for seed in (0, 1):
        write_cell(tmp_path, cdg(0.01, 4, seed), probe_rows({(b, lr): 1.0 for b in (0, 1) for lr in (0.1, 0.5)}))
    # eps = 0.1, dim 8, one seed: best at lr 0.1 (0.5 against -0.5).
    write_cell(tmp_path, cdg(0.1, 8, 0), probe_rows({(0, 0.1): 0.5, (1, 0.1): 0.5, (0, 0.5): -0.5, (1, 0.5): -0.5}))
    return tmp_path


def config_of(data, eps: float, dim: int) -> int:
    cells = data.cells
    match = cells[(cells["estimator.epsilon"] == eps) & (cells["problem.dim"] == dim)]
    assert match["config"].nunique() == 1
    return int(match["config"].iloc[0])


def test_loading_keeps_only_parameters_some_cell_sets(folder: Path) -> None:
    data = load_results(folder)
    assert len(data.cells) == 5
    assert "estimator.sigma" not in data.param_columns and "problem.channels" not in data.param_columns
    assert "estimator.epsilon" in data.param_columns and "seed" not in data.param_columns
    assert data.cells["config"].nunique() == 3  # seeds pool into one config
    assert varying(data.cells, data.param_columns) == ["problem.dim", "estimator.epsilon"]
    assert set(data.cells["estimator_label"]) == {"CDG(epsilon=0.1)", "CDG(epsilon=0.01)"}


def test_lr_curve_mean_std_and_fraction_down_pool_seeds_and_batches(folder: Path) -> None:
    data = load_results(folder)
    curves = lr_curves(data.records("probe")).set_index(["config", "lr"])
    c = config_of(data, 0.1, 4)
    assert curves.loc[(c, 0.1), "mean"] == pytest.approx(2.0)
    assert curves.loc[(c, 0.1), "std"] == pytest.approx(math.sqrt(2 / 3))
    assert curves.loc[(c, 0.5), "mean"] == pytest.approx(3.0)
    assert curves.loc[(c, 0.5), "std"] == pytest.approx(math.sqrt(34 / 3))
    assert curves.loc[(c, 0.5), "down"] == pytest.approx(0.75)
    assert curves.loc[(c, 0.5), ["n", "cells", "seeds"]].tolist() == [4, 2, 2]


def test_best_lr_is_the_largest_mean_and_ties_go_to_the_smaller_lr(folder: Path) -> None:
    data = load_results(folder)
    best = best_lr(lr_curves(data.records("probe"))).set_index("config")
    assert best.loc[config_of(data, 0.1, 4), "best_lr"] == 0.5
    assert best.loc[config_of(data, 0.01, 4), "best_lr"] == 0.1
    assert best.loc[config_of(data, 0.1, 8), "best_lr"] == 0.1


def test_summary_row_per_config(folder: Path) -> None:
    table = summary(load_results(folder))
    row = table[(table["estimator.epsilon"] == 0.1) & (table["problem.dim"] == 4)].iloc[0]
    assert row["best_lr"] == 0.5
    assert row["best_mean"] == pytest.approx(3.0)
    assert row["best_std"] == pytest.approx(math.sqrt(34 / 3))
    assert row["down"] == pytest.approx(0.75)
    assert row["estimator_seconds"] == pytest.approx(0.2)  # mean over (cell, batch), not over lr rows
    assert (row["cells"], row["seeds"]) == (2, 2)
    single = table[(table["problem.dim"] == 8)].iloc[0]
    assert math.isnan(single["best_std"]) is False and single["best_std"] == pytest.approx(0.0)
    assert single["down"] == 1.0 and single["cells"] == 1


def test_best_vs_dim_points_take_the_best_lr_per_dim(folder: Path) -> None:
    points = best_vs_size(load_results(folder), "problem.dim")
    line = points[points["estimator_label"] == "CDG(epsilon=0.1)"]
    assert line["problem.dim"].tolist() == [4, 8]
    assert line["best_lr"].tolist() == [0.5, 0.1]
    assert line["best_mean"].tolist() == pytest.approx([3.0, 0.5])
    assert best_vs_size(load_results(folder), "problem.channels").empty


def test_cosine_and_descent_aggregations(tmp_path: Path) -> None:
    rows = [{"record": "cosine", "batch": b, "layer": layer, "reference": "cdg", "cosine": v}
            for b, (layer, v) in enumerate([("linear:1", 0.5), ("linear:1", 0.7), ("all", 0.9)])]
    write_cell(tmp_path, {**cdg(0.1, 4, 0), "estimator.kind": "ste", "estimator.epsilon": None,
                          "estimator.mode": None, "estimator.variant": "clipped"}, rows)
    rosen = {"problem.kind": "rosenbrock", "problem.n": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.01}
    for seed, losses in ((0, [10.0, 4.0]), (1, [20.0, 2.0])):
        write_cell(tmp_path, {**rosen, "seed": seed},
                   [{"record": "descent", "step": s, "loss": v} for s, v in zip((0, 100), losses)], experiment="descent")
    data = load_results(tmp_path)
    cos = cosine_table(data.records("cosine")).set_index("layer")
    assert cos.loc["linear:1", "mean"] == pytest.approx(0.6)
    assert cos.loc["linear:1", "std"] == pytest.approx(math.sqrt(0.02))
    assert cos.loc["all", "n"] == 1
    curves = descent_curves(data.records("descent")).set_index("step")
    assert curves.loc[0, ["mean", "min", "max", "n"]].tolist() == [15.0, 10.0, 20.0, 2]
    assert curves.loc[100, "mean"] == pytest.approx(3.0)


def test_a_missing_folder_and_an_empty_one_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "_gradsweep" / "failures").mkdir(parents=True)
    (tmp_path / "_gradsweep" / "failures" / "abc.json").write_text('{"error": "boom"}')
    with pytest.raises(ResultsError, match="no results.*1 failed cells"):
        load_results(tmp_path)


def test_an_unreadable_file_is_skipped_and_named(folder: Path) -> None:
    (folder / "0000000000000000.parquet").write_bytes(b"not parquet")
    data = load_results(folder)
    assert len(data.cells) == 5
    assert [u.split(":")[0] for u in data.unreadable] == ["0000000000000000.parquet"]


def test_spread_at_the_best_lr_gives_quartiles_not_only_the_mean(folder: Path) -> None:
    from gradsweep.analysis.aggregate import best_spread

    data = load_results(folder)
    row = best_spread(data).set_index("config").loc[config_of(data, 0.1, 4)]
    # at lr 0.5 (the best lr) the samples are 2, -1, 4, 7: quartiles by linear interpolation
    assert row["best_lr"] == 0.5
    assert [row["min"], row["q25"], row["median"], row["q75"], row["max"]] == [-1.0, 1.25, 3.0, 4.75, 7.0]
    # each (seed, batch)'s own best over the lr grid: max(1, 2), max(3, -1), max(2, 4), max(2, 7)
    assert [row["own_min"], row["own_median"], row["own_max"]] == [2.0, 3.5, 7.0]
    curves = lr_curves(data.records("probe")).set_index(["config", "lr"])
    assert curves.loc[(config_of(data, 0.1, 4), 0.1), ["min", "median", "max"]].tolist() == [1.0, 2.0, 3.0]
