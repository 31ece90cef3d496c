"""``gradsweep export mlflow``: a real MLflow file store, read back with ``mlflow.search_runs``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradsweep.cli import main
from gradsweep.spec import load_spec
from gradsweep.store import read_results

mlflow = pytest.importorskip("mlflow")

DESCENT_SPEC = """\
name: descent
experiment: descent
problem: {kind: rosenbrock, variant: chain, n: 4, x0: [1.5, -1, 0.5, 2]}
estimator: {kind: cdg, epsilon: 0.01}
step: {lr: 0.001, steps: 30, log_every: 10}
seeds: [0]
device: cpu
"""


def _runs(store: Path, experiment: str):
    mlflow.set_tracking_uri(store.as_uri())
    return mlflow.search_runs(experiment_names=[experiment])


def test_each_cell_is_one_run_with_its_params_metrics_and_tags(tiny_spec: Path, tmp_path: Path, capsys):
    results, store = tmp_path / "results", tmp_path / "mlruns"
    assert main(["run", str(tiny_spec), "--results", str(results), "--local"]) == 0
    assert main(["export", "mlflow", str(results / "tiny"), "--tracking-uri", str(store)]) == 0
    assert "8 runs logged, 0 cells already there" in capsys.readouterr().out

    runs = _runs(store, "tiny")
    sweep = load_spec(tiny_spec)
    assert sorted(runs["tags.gradsweep.cell_id"]) == sorted(c.id for c in sweep.cells)
    assert set(runs["tags.gradsweep.sweep"]) == {"tiny"} and set(runs["status"]) == {"FINISHED"}
    cell = next(c for c in sweep.cells if c.config["estimator"]["kind"] == "cdg")
    run = runs[runs["tags.gradsweep.cell_id"] == cell.id].iloc[0]
    assert run["params.problem.dim"] == str(cell.config["problem"]["dim"])
    assert run["params.estimator.epsilon"] == "0.1" and run["params.seed"] == str(cell.config["seed"])
    assert run["tags.gradsweep.host"] and run["tags.gradsweep.gradsweep_version"]

    # the lr curve: step i is the i-th lr of the grid, the metric `lr` holds its value
    client = mlflow.tracking.MlflowClient(store.as_uri())
    lrs = client.get_metric_history(run["run_id"], "lr")
    assert [(m.step, m.value) for m in sorted(lrs, key=lambda m: m.step)] == [(0, 0.01), (1, 0.1), (2, 1.0)]
    decrease = client.get_metric_history(run["run_id"], "loss_decrease")
    assert sorted(m.step for m in decrease) == [0, 1, 2]
    best = max(decrease, key=lambda m: m.value)
    assert run["metrics.best_loss_decrease"] == pytest.approx(best.value)
    assert run["metrics.best_lr"] == [0.01, 0.1, 1.0][best.step]
    # the values are the cell's own rows, averaged over batches
    rows = read_results(results / "tiny").to_pandas()
    mine = rows[(rows.cell_id == cell.id) & (rows.record == "probe")].groupby("lr").loss_decrease.mean()
    assert [m.value for m in sorted(decrease, key=lambda m: m.step)] == pytest.approx(list(mine))


def test_exporting_again_adds_only_new_cells(tiny_spec: Path, tmp_path: Path, capsys):
    results, store = tmp_path / "results", tmp_path / "mlruns"
    folder = results / "tiny"
    assert main(["run", str(tiny_spec), "--results", str(results), "--local", "--where", "estimator.kind=cdg"]) == 0
    assert main(["export", "mlflow", str(folder), "--tracking-uri", str(store)]) == 0
    assert main(["export", "mlflow", str(folder), "--tracking-uri", str(store)]) == 0
    assert "0 runs logged, 4 cells already there" in capsys.readouterr().out
    assert len(_runs(store, "tiny")) == 4

    assert main(["resume", str(folder), "--local"]) == 0
    assert main(["export", "mlflow", str(folder), "--tracking-uri", str(store)]) == 0
    assert "4 runs logged, 4 cells already there" in capsys.readouterr().out
    runs = _runs(store, "tiny")
    assert len(runs) == 8 and runs["tags.gradsweep.cell_id"].is_unique


def test_an_unfinished_run_of_an_interrupted_export_is_replaced(tiny_spec: Path, tmp_path: Path, capsys):
    results, store = tmp_path / "results", tmp_path / "mlruns"
    assert main(["run", str(tiny_spec), "--results", str(results), "--local", "--where", "seed=0,problem.dim=4"]) == 0
    assert main(["export", "mlflow", str(results / "tiny"), "--tracking-uri", str(store)]) == 0
    client = mlflow.tracking.MlflowClient(store.as_uri())
    run = _runs(store, "tiny").iloc[0]
    client.set_terminated(run["run_id"], status="RUNNING")  # as if the export had died mid-cell
    capsys.readouterr()
    assert main(["export", "mlflow", str(results / "tiny"), "--tracking-uri", str(store)]) == 0
    assert "1 runs logged, 1 cells already there, 1 unfinished runs replaced" in capsys.readouterr().out
    runs = _runs(store, "tiny")
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and run["run_id"] not in set(runs["run_id"])


def test_a_descent_is_logged_on_its_steps(tmp_path: Path):
    spec = tmp_path / "descent.yaml"
    spec.write_text(DESCENT_SPEC)
    results, store = tmp_path / "results", tmp_path / "mlruns"
    assert main(["run", str(spec), "--results", str(results), "--local"]) == 0
    assert main(["export", "mlflow", str(results / "descent"), "--tracking-uri", str(store),
                 "--experiment", "rosenbrock"]) == 0
    [run_id] = _runs(store, "rosenbrock")["run_id"]
    client = mlflow.tracking.MlflowClient(store.as_uri())
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps[0] == 0 and steps[-1] == 30 and len(steps) >= 3


def test_the_default_store_is_mlruns_in_the_current_folder(tiny_spec: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tiny_spec), "--results", "results", "--local", "--cell",
                 load_spec(tiny_spec).cells[0].id]) == 0
    assert main(["export", "mlflow", "results/tiny"]) == 0
    assert (tmp_path / "mlruns").is_dir()
    assert len(_runs(tmp_path / "mlruns", "tiny")) == 1


def test_bad_input_is_one_message(tmp_path: Path, capsys):
    assert main(["export", "mlflow", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", "mlflow", str(tmp_path / "empty")]) == 2
    assert "holds no finished cell" in capsys.readouterr().err

