"""Subsets of a sweep (--where, --cell) on plan, run, resume, status and report; status/plan --json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gradsweep.cli import main
from gradsweep.select import SelectionError, parse_selection, select_cells
from gradsweep.spec import load_spec
from gradsweep.store import read_results


def _kept(spec: Path, where: list[str] = (), cells: list[str] = ()) -> list:
    return select_cells(load_spec(spec).cells, parse_selection(where, cells))


@pytest.mark.parametrize(
    "where, count",
    [
        (["estimator.kind=cdg"], 4),
        (["estimator.kind=cdg,problem.dim=8"], 2),
        (["estimator.kind=cdg", "problem.dim=8"], 2),  # repeated --where: all hold
        (["estimator.kind=[cdg,ste]"], 8),
        (["estimator.kind!=cdg"], 4),
        (["estimator.epsilon=0.1"], 4),
        (["estimator.epsilon=null"], 4),  # STE cells: epsilon does not apply
        (["seed=1,problem.dim=4"], 2),
        (["experiment=probe"], 8),
    ],
)
def test_where_keeps_the_matching_cells(tiny_spec: Path, where: list[str], count: int):
    assert len(_kept(tiny_spec, where)) == count


def test_cell_keeps_that_cell_by_id_or_prefix(tiny_spec: Path):
    ids = [c.id for c in load_spec(tiny_spec).cells]
    assert [c.id for c in _kept(tiny_spec, cells=[ids[3]])] == [ids[3]]
    assert [c.id for c in _kept(tiny_spec, cells=[ids[2][:10], ids[5]])] == [ids[2], ids[5]]


@pytest.mark.parametrize(
    "where, cells, message",
    [
        (["estimator.knd=cdg"], [], "no parameter column 'estimator.knd'; did you mean 'estimator.kind'?"),
        (["estimator.kind=nes"], [], "--where estimator.kind=nes: no cell of the sweep matches "
                                     '(estimator.kind takes "cdg", "ste")'),
        (["problem.dim"], [], "expected COLUMN=VALUE"),
        (["seed=x"], [], "a seed is an integer"),
        ([], ["zz"], "--cell 'zz': expected a cell id"),
        ([], ["0000000000"], "--cell 0000000000: no cell of the sweep has this id"),
    ],
)
def test_a_bad_selection_says_why(tiny_spec: Path, where: list[str], cells: list[str], message: str):
    with pytest.raises(SelectionError) as info:
        _kept(tiny_spec, where, cells)
    assert message in str(info.value)


def test_the_same_selection_filters_result_rows():
    frame = pd.DataFrame({
        "cell_id": ["aa11", "bb22", "cc33"],
        "estimator.kind": ["cdg", "ste", "cdg"],
        "problem.dim": [4, 8, 8],
        "estimator.epsilon": [0.1, None, 0.1],
    })
    assert parse_selection(["estimator.kind=cdg,problem.dim=8"]).mask(frame).tolist() == [False, False, True]
    assert parse_selection(["estimator.epsilon=null"]).mask(frame).tolist() == [False, True, False]
    assert parse_selection([], ["bb"]).mask(frame).tolist() == [False, True, False]


def test_run_plan_status_and_resume_act_on_the_subset(tiny_spec: Path, tmp_path: Path, capsys):
    results, folder = tmp_path / "results", tmp_path / "results" / "tiny"
    assert main(["run", str(tiny_spec), "--results", str(results), "--local", "--where", "estimator.kind=cdg"]) == 0
    assert "4/4 cells done" in capsys.readouterr().err
    assert set(read_results(folder).to_pandas()["estimator.kind"]) == {"cdg"}

    assert main(["plan", str(tiny_spec), "--results", str(results), "--where", "estimator.kind=ste"]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "pending 4" in out and "dropped" not in out
    assert main(["status", str(folder), "--where", "estimator.kind=cdg"]) == 0
    assert "done 4, failed 0, pending 0" in capsys.readouterr().out
    assert main(["status", str(folder)]) == 1  # the whole sweep is not done

    assert main(["resume", str(folder), "--local", "--where", "problem.dim=4"]) == 0
    assert "4/4 cells done" in capsys.readouterr().err  # dim 4: 2 CDG done before, 2 STE now
    assert len(set(read_results(folder).to_pandas()["cell_id"])) == 6


def test_status_and_plan_json_name_the_failed_cells_parameters(tiny_spec: Path, tmp_path: Path, capsys, monkeypatch):
    sweep = load_spec(tiny_spec)
    bad = next(c for c in sweep.cells if c.config["estimator"]["kind"] == "ste" and c.config["problem"]["dim"] == 8)
    monkeypatch.setenv("GRADSWEEP_FAIL_CELLS", bad.id)
    assert main(["run", str(tiny_spec), "--results", str(tmp_path), "--local"]) == 1
    capsys.readouterr()
    folder = str(tmp_path / "tiny")

    assert main(["status", folder, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert (data["cells"], data["done"], data["failed"], data["pending"], data["complete"]) == (8, 7, 1, 0, False)
    [cell] = data["failed_cells"]
    assert cell["cell_id"] == bad.id and cell["attempts"] == 1 and "injected failure" in cell["error"]
    assert "\n" not in cell["error"]
    assert cell["params"]["estimator.kind"] == "ste" and cell["params"]["problem.dim"] == 8
    assert cell["params"]["seed"] == bad.config["seed"] and cell["params"]["estimator.variant"] == "clipped"

    assert main(["status", folder]) == 1  # the text names the parameters that vary, not only the id
    text = capsys.readouterr().out
    line = text.splitlines()[text.splitlines().index(next(t for t in text.splitlines() if bad.id in t)) + 1]
    assert f"estimator.kind=ste problem.dim=8 seed={bad.config['seed']}" == line.strip()  # not depth=3: it is the same everywhere

    assert main(["plan", str(tiny_spec), "--results", str(tmp_path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["failed"] == 1 and plan["failed_cells"][0]["params"]["estimator.kind"] == "ste"
    assert {(k["problem"], k["estimator"], k["failed"]) for k in plan["by_kind"]} == {("toy_mlp", "cdg", 0), ("toy_mlp", "ste", 1)}

    assert main(["status", folder, "--json", "--where", "estimator.kind=cdg"]) == 0
    assert json.loads(capsys.readouterr().out)["failed_cells"] == []


def test_report_draws_only_the_selected_cells(tiny_spec: Path, tmp_path: Path, capsys):
    assert main(["run", str(tiny_spec), "--results", str(tmp_path), "--local"]) == 0
    folder = tmp_path / "tiny"
    assert main(["report", str(folder), "--out", str(tmp_path / "all")]) == 0
    assert main(["report", str(folder), "--out", str(tmp_path / "cdg"), "--where", "estimator.kind=cdg"]) == 0
    assert "4 cells" in capsys.readouterr().out.splitlines()[-1]
    summary = pd.read_csv(tmp_path / "cdg" / "summary.csv")
    assert set(summary["estimator.kind"]) == {"cdg"}
    assert set(pd.read_csv(tmp_path / "all" / "summary.csv")["estimator.kind"]) == {"cdg", "ste"}
    assert main(["report", str(folder), "--where", "estimator.kind=nes"]) == 2
