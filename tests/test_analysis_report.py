"""The report end to end: every figure kind for a quick-start-shaped folder, a page that links
only files that exist, partial folders, bad input, and no torch or Ray on the import path."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradsweep.analysis.cli import add_arguments, build_report, run
from analysis_synthetic import TOY, probe_rows, quickstart_like, write_cell

TESTS = Path(__file__).parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("results") / "quickstart"
    quickstart_like(folder)
    (folder / "_gradsweep" / "failures").mkdir(parents=True)
    (folder / "_gradsweep" / "failures" / "deadbeefdeadbeef.json").write_text('{"error": "RuntimeError: out of memory\\n..."}')
    return build_report(folder)


def test_every_figure_kind_is_drawn(report) -> None:
    names = [f.path.name for s in report.sections for f in s.figures]
    assert not report.errors
    # 2 dims x (CDG, NES 50, NES 100, STE) lr figures, one best-vs-dim, 2 cosine heatmaps, 1 descent
    assert sum(n.startswith("lr-") for n in names) == 8
    assert sum(n.startswith("best-") for n in names) == 1
    assert sum(n.startswith("cosine-") for n in names) == 2
    assert sum(n.startswith("descent-") for n in names) == 1
    for s in report.sections:
        for f in s.figures:
            assert f.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_captions_say_what_varied_and_how_much_was_aggregated(report) -> None:
    probe = next(s for s in report.sections if s.name == "probe")
    cdg = next(f for f in probe.figures if f.title == "CDG: loss decrease vs lr - dim=4")
    assert "varied: epsilon (epsilon in {0.01, 0.1})" in cdg.caption
    assert "8 cells, 2 seeds" in cdg.caption and "Panels: raw, pretrained" in cdg.caption
    best = next(f for f in probe.figures if f.title.startswith("best loss decrease vs dim"))
    assert "6 lines" in best.caption and "dim in {4, 8}" in best.caption


def test_page_references_only_files_that_exist_and_all_figures(report) -> None:
    page = re.sub(r"<script[^>]*>.*?</script>", "", report.index.read_text(), flags=re.S)  # Plotly's own source
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert refs, "the page links nothing"
    for ref in refs:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref
        assert ref.startswith("data:image/png;base64,") or (report.out_dir / ref).is_file(), ref
    drawn = {f.path.name for s in report.sections for f in s.figures}
    assert {Path(r).name for r in refs if r.endswith(".png")} == drawn


def test_page_has_summary_spec_note_and_missing_note(report) -> None:
    page = report.index.read_text()
    assert "CDG(epsilon=0.1)" in page and "best_lr" in page
    assert "1 cells failed" in page and "deadbeefdeadbeef" in page and "out of memory" in page
    assert "no _gradsweep/spec.yaml" in page


def test_summary_files(report) -> None:
    csv = pd.read_csv(report.out_dir / "summary.csv")
    assert len(csv) == 24  # 2 dims x raw/pretrained x 6 estimator configs
    assert {"problem.dim", "estimator.epsilon", "best_lr", "best_mean", "best_std", "down",
            "estimator_seconds", "cells", "seeds"} <= set(csv.columns)
    md = (report.out_dir / "summary.md").read_text().splitlines()
    assert md[0].startswith("| estimator | student | dim | best_lr") and len(md) == 2 + 24


def test_a_folder_with_only_descent_rows_gets_no_probe_figures(tmp_path: Path) -> None:
    params = {"problem.kind": "rosenbrock", "problem.n": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.01, "seed": 0}
    write_cell(tmp_path, params, [{"record": "descent", "step": s, "loss": 1.0 / (1 + s)} for s in range(3)],
               experiment="descent")
    report = build_report(tmp_path, tmp_path / "out")
    counts = {s.name: len(s.figures) for s in report.sections}
    assert counts["probe"] == 0 and counts["descent"] == 1 and not report.errors
    page = report.index.read_text()
    assert 'href="#section-descent"' in page
    # no empty section, in the contents or on the page
    assert 'href="#section-probe"' not in page and 'id="section-probe"' not in page and 'href="#summary"' not in page


def test_partial_sweep_counts_cells_without_files(tmp_path: Path) -> None:
    spec_mod = pytest.importorskip("gradsweep.spec")
    if not hasattr(spec_mod, "load_spec"):
        pytest.skip("gradsweep.spec.load_spec is not there yet")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: partial\nexperiment: probe\nproblem: {kind: toy_mlp, dim: {grid: [4, 8]}, data: {batch_size: 8, batches: 1}}\n"
        "estimator: {kind: cdg, epsilon: 0.1}\nmeasure: {lrs: [0.1, 0.5]}\nseeds: [0, 1]\n"
    )
    sweep = spec_mod.load_spec(spec)
    folder = tmp_path / "partial"
    (folder / "_gradsweep").mkdir(parents=True)
    (folder / "_gradsweep" / "spec.yaml").write_text(spec.read_text())
    write_cell(folder, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows({(0, 0.1): 0.2, (0, 0.5): 0.1}))
    report = build_report(folder)
    assert len(report.data.expected_cell_ids) == len(sweep.cells) == 4
    assert len(report.data.missing_cell_ids) == 4  # the hand-written cell's id is not a spec id
    assert "4 have no result file yet" in report.index.read_text()


def test_cli_exit_codes_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(tmp_path / "missing")])) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(parser.parse_args([str(tmp_path / "empty")])) == 2
    assert "no results" in capsys.readouterr().err
    folder = tmp_path / "one"
    write_cell(folder, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows({(0, 0.1): 0.2, (0, 0.5): 0.1}))
    assert run(parser.parse_args([str(folder), "--out", str(tmp_path / "rep")])) == 0
    assert (tmp_path / "rep" / "index.html").is_file()


def test_a_broken_section_is_reported_and_the_others_still_drawn(tmp_path: Path, monkeypatch) -> None:
    import gradsweep.analysis.cli

    monkeypatch.setattr(gradsweep.analysis.cli, "SECTIONS", ["probe", "gradsweep.analysis.sections.no_such_section"])
    write_cell(tmp_path, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows({(0, 0.1): 0.2, (0, 0.5): 0.1}))
    report = build_report(tmp_path, tmp_path / "_out")
    assert [s.name for s in report.errors] == ["no_such_section"]
    assert len(report.sections[0].figures) == 1
    assert "This section failed" in report.index.read_text()


def test_module_entry_point_renders_without_torch_or_ray(tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    # With the spec stored, the report also expands it (gradsweep.spec must stay torch-free).
    quickstart_like(folder, seeds=(0,), spec_text=(ROOT / "specs" / "quickstart.yaml").read_text())
    code = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "sys.argv = ['gradsweep.analysis', 'report', sys.argv[1], '--out', sys.argv[2]]\n"
        "try:\n    runpy.run_module('gradsweep.analysis', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "rep")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout and (tmp_path / "rep" / "index.html").is_file()
    assert "The spec expands to 20 cells" in (tmp_path / "rep" / "index.html").read_text()


def test_quickstart_spec_run_in_process_then_reported(tmp_path: Path) -> None:
    """The real thing at a reduced size: specs/quickstart.yaml (one seed, small batches, 20 NES
    samples) through the runner's in-process executor, then the report."""
    yaml = pytest.importorskip("yaml")
    runner = pytest.importorskip("gradsweep.runner")
    from gradsweep.executors.local import LocalExecutor
    from gradsweep.spec import load_spec

    spec = yaml.safe_load((ROOT / "specs" / "quickstart.yaml").read_text())
    spec["problem"]["data"] = {"batch_size": 64, "batches": 2}
    spec["estimator"][1]["samples"] = 20
    spec["seeds"] = [0]
    sweep = load_spec(yaml.safe_dump(spec), source="quickstart (reduced)")
    result = runner.run(sweep, tmp_path, LocalExecutor(), stream=io.StringIO())
    assert result.exit_code == 0
    report = build_report(tmp_path / sweep.name)
    assert not report.errors and report.data.missing_cell_ids == [] and not report.data.failures
    names = [f.path.name for s in report.sections for f in s.figures]
    # (CDG, NES, STE) x 2 dims, best-vs-dim, a cosine heatmap per dim
    assert sum(n.startswith("lr-") for n in names) == 6
    assert sum(n.startswith("best-") for n in names) == 1
    assert sum(n.startswith("cosine-") for n in names) == 2
    assert len(report.summary) == len(sweep.cells) == 10
    assert set(report.summary["estimator_label"]) == {
        "CDG(epsilon=0.1)", "CDG(epsilon=0.01)", "NES", "STE(variant=clipped)", "STE(variant=polynomial)",
    }
    assert report.summary["best_mean"].notna().all()
    assert "The spec expands to 10 cells; all have results." in report.index.read_text()


def test_a_users_own_analysis_py_does_not_shadow_the_report(tmp_path: Path) -> None:
    """The report's package is ``gradsweep.analysis``: a user's ``analysis.py`` in the working
    directory (first on ``sys.path`` for ``python -m``) must not break ``python -m gradsweep report``."""
    folder = tmp_path / "one"
    write_cell(folder, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows({(0, 0.1): 0.2, (0, 0.5): 0.1}))
    (tmp_path / "analysis.py").write_text("raise SystemExit('the user analysis.py was imported')\n")
    out = subprocess.run([sys.executable, "-m", "gradsweep", "report", str(folder), "--out", str(tmp_path / "rep")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rep" / "index.html").is_file()


def test_an_unwritable_report_folder_is_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "one"
    write_cell(folder, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows({(0, 0.1): 0.2, (0, 0.5): 0.1}))
    (tmp_path / "a-file").write_text("")  # a report folder under a file cannot be created (even by root)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(folder), "--out", str(tmp_path / "a-file" / "report")])) == 2
    err = capsys.readouterr().err
    assert "cannot write the report to" in err and "a-file" in err and "Traceback" not in err
