"""plan / run / resume / status with the in-process executor on real toy cells."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, TINY_SPEC
from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.runner import Plan, cell_cost, plan, resume, run, status
from gradsweep.spec import load_spec
from gradsweep.store import SweepStore, read_results


def _run(spec: Path | str, results: Path, **hooks) -> object:
    return run(load_spec(spec), results, LocalExecutor(hooks=FaultHooks(**hooks)), stream=io.StringIO())


def test_plan_of_a_fresh_folder_counts_cells_per_kind_and_runs_nothing(tiny_spec: Path, tmp_path: Path):
    p = plan(load_spec(tiny_spec), tmp_path / "results")
    assert isinstance(p, Plan)
    assert (p.total, len(p.done), len(p.failed), p.pending) == (8, 0, 0, 8)
    assert p.by_kind[("toy_mlp", "cdg")]["total"] == 4 and p.by_kind[("toy_mlp", "ste")]["total"] == 4
    assert p.added is None and p.estimate_seconds > 0
    assert "pending 8" in p.format()
    assert not (tmp_path / "results").exists()


def test_run_computes_every_cell_once_and_a_second_run_computes_nothing(tiny_spec: Path, tmp_path: Path):
    first = _run(tiny_spec, tmp_path)
    assert (first.done, first.total, first.failed, first.exit_code) == (8, 8, [], 0)
    folder = tmp_path / "tiny"
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    assert len(mtimes) == 8
    second = _run(tiny_spec, tmp_path)
    assert second.ran == 0 and second.exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == mtimes
    assert (tmp_path / "tiny.gradsweep" / "spec.yaml").read_text() == TINY_SPEC
    assert len(list((tmp_path / "tiny.gradsweep" / "specs").glob("*.yaml"))) >= 1
    assert not (tmp_path / "tiny.gradsweep" / "lock").exists()
    assert sorted(p.suffix for p in folder.iterdir()) == [".parquet"] * 8  # the data folder holds cell files only
    table = read_results(folder)
    assert table.num_rows == 8 * 3 and set(table.column("cell_id").to_pylist()) == {c.id for c in load_spec(tiny_spec).cells}
    p = plan(load_spec(tiny_spec), tmp_path)
    assert (len(p.done), p.pending, p.added) == (8, 0, 0)
    assert "calibrated" in p.estimate_source


def test_editing_the_spec_runs_only_new_cells_and_keeps_dropped_ones(tiny_spec: Path, tmp_path: Path):
    _run(tiny_spec, tmp_path)
    edited = tiny_spec.with_name("edited.yaml")
    # dim 4 leaves the grid (4 cells dropped), dim 16 joins it (4 cells added)
    edited.write_text(TINY_SPEC.replace("dim: {grid: [4, 8]}", "dim: {grid: [8, 16]}"))
    p = plan(load_spec(edited), tmp_path)
    assert (len(p.done), p.pending, p.added, len(p.dropped)) == (4, 4, 4, 4)
    assert "4 cells added" in p.format() and "dropped: 4" in p.format()
    result = _run(edited, tmp_path)
    assert result.ran == 4 and result.exit_code == 0
    assert len(list((tmp_path / "tiny").glob("*.parquet"))) == 12  # the dropped cells' files are kept


def test_a_failing_cell_is_recorded_the_rest_finish_and_resume_reruns_only_it(tiny_spec: Path, tmp_path: Path):
    sweep = load_spec(tiny_spec)
    bad = sweep.cells[2].id
    result = _run(tiny_spec, tmp_path, fail_cells=frozenset({bad}))
    assert result.failed == [bad] and result.done == 7 and result.exit_code == 1
    st = status(tmp_path / "tiny")
    assert st.plan.failed == {bad}
    text = st.format()
    assert bad in text and "GRADSWEEP_FAIL_CELLS: injected failure" in text and "failures/<cell_id>.json" in text
    record = SweepStore(tmp_path / "tiny").failures()[bad]
    assert "Traceback" in record["traceback"] and record["attempts"] == 1

    again = resume(tmp_path / "tiny", LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert again.ran == 1 and again.exit_code == 0
    assert SweepStore(tmp_path / "tiny").failures() == {}


def test_corrupt_and_truncated_cell_files_are_quarantined_and_rerun(tiny_spec: Path, tmp_path: Path):
    _run(tiny_spec, tmp_path)
    folder = tmp_path / "tiny"
    files = sorted(folder.glob("*.parquet"))
    truncated, corrupt = files[0], files[1]
    good_bytes = truncated.read_bytes()
    truncated.write_bytes(good_bytes[:1000])
    corrupt.write_bytes(b"garbage" * 100)
    p = plan(load_spec(tiny_spec), tmp_path)
    assert set(p.invalid) == {truncated.stem, corrupt.stem} and p.pending == 2
    out = io.StringIO()
    result = run(load_spec(tiny_spec), tmp_path, LocalExecutor(hooks=FaultHooks()), stream=out)
    assert result.ran == 2 and set(result.quarantined) == {truncated.stem, corrupt.stem}
    assert "moved to" in out.getvalue()
    quarantined = sorted(p.name for p in (tmp_path / "tiny.gradsweep" / "quarantine").iterdir())
    assert len(quarantined) == 2  # kept, never deleted
    assert truncated.read_bytes()[:4] == b"PAR1" and len(read_results(folder)) == 24


def test_resume_of_a_folder_without_a_spec_is_a_clear_error(tmp_path: Path):
    from gradsweep.store import StoreError

    with pytest.raises(StoreError, match="no such folder"):
        resume(tmp_path / "missing", LocalExecutor())
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="holds no stored spec"):
        resume(tmp_path / "empty", LocalExecutor())


def test_cost_model_grows_with_the_work_of_a_cell():
    base = {"experiment": "probe", "problem": {"kind": "toy_mlp", "dim": 8, "depth": 3, "data": {"batch_size": 100, "batches": 1}},
            "estimator": {"kind": "cdg", "epsilon": 0.1}, "measure": {"lrs": [0.1]}}
    bigger = {**base, "problem": {**base["problem"], "dim": 32}}
    nes = {**base, "estimator": {"kind": "nes", "samples": 50000}}
    ste = {**base, "estimator": {"kind": "ste"}}
    assert cell_cost(ste) < cell_cost(base) < cell_cost(bigger)
    assert cell_cost(nes) > cell_cost(base)


def test_ctrl_c_stops_cleanly_keeping_finished_cells(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    env = {**cli_env, "GRADSWEEP_CELL_DELAY": "0.5"}
    proc = subprocess.Popen(
        [PYTHON, "-m", "gradsweep", "run", str(tiny_spec), "--results", str(tmp_path), "--local"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    folder = tmp_path / "tiny"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(folder.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = list(folder.glob("*.parquet"))
    assert 2 <= len(done) < 8
    assert not list((tmp_path / "tiny.gradsweep" / "tmp").glob("*")) and not (tmp_path / "tiny.gradsweep" / "lock").exists()
    assert len(read_results(folder)) == 3 * len(done)


def test_cdg_cost_counts_only_the_selected_layers_and_the_coordinate_sample() -> None:
    from gradsweep.runner import cell_cost
    from gradsweep.spec import canonical_cell

    def cost(**kw: object) -> float:
        problem = {"kind": "xnor_resnet18", "channels": 8, **kw.pop("problem", {})}  # type: ignore[dict-item]
        return cell_cost(canonical_cell({"problem": problem, "estimator": {"kind": "cdg"}, **kw}))

    first, second_to_last = cost(params=["conv:1"]), cost(params=["conv:-2"])
    assert first < second_to_last < cost(params="all")
    # conv:1 of c = 8 is 8 x 8 x 3 x 3 = 576 weights, conv:-2 is 64 x 64 x 3 x 3 = 36,864: 64 times more
    # moves, each costing the same forward in this rough model (the lr scan adds a little to both).
    assert 50 < second_to_last / first < 64
    assert cost(params=["conv:-2"], problem={"coords": {"sample": 576}}) == first
