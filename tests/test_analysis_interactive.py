"""The interactive report: where it goes, what its figures carry, sweeps compared on one axis,
the lr axis of the spec's grid, and a divergent tail that does not flatten the peak."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from analysis_synthetic import TOY, probe_rows, quickstart_like, write_cell
from gradsweep.analysis.cli import add_arguments, build_report, report_location, run
from gradsweep.analysis.core import load_results
from gradsweep.analysis.interactive import clipped_range, lr_axis


def _figures(report) -> dict[str, dict]:
    return {f.title: f.plot for s in report.sections for f in s.figures if f.plot is not None}


def _page_figures(report) -> list[dict]:
    page = report.index.read_text()
    found = re.search(r'<script type="application/json" id="gs-figures">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_the_report_lies_beside_the_data_folder_which_stays_pure_parquet(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "quickstart"
    quickstart_like(folder, seeds=(0,))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(folder)])) == 0
    out = tmp_path / "results" / "quickstart.report"
    assert report_location(folder) == out
    assert (out / "index.html").is_file() and (out / "summary.csv").is_file() and any((out / "figures").glob("*.png"))
    assert sorted(p.suffix for p in folder.iterdir()) == [".parquet"] * len(list(folder.iterdir()))
    assert ds.dataset(folder, format="parquet").count_rows() > 0


def test_the_page_is_self_contained_with_plotly_and_every_figure_as_data(tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    quickstart_like(folder, seeds=(0,))
    report = build_report(folder)
    page = report.index.read_text()
    assert "Plotly" in page and "cdn.plot.ly" not in page.split("<script>", 1)[0]
    assert not re.search(r'<script[^>]+src=', page) and not re.search(r'<link[^>]+href=', page)
    figures = _page_figures(report)
    assert len(figures) == len(_figures(report)) >= 10
    for figure in figures:
        assert len(figure["keys"]) == len(figure["data"])  # the filter knows every trace
    # every PNG is still written, and linked from its caption
    for s in report.sections:
        for f in s.figures:
            assert f.path.is_file() and f'href="figures/{f.path.name}"' in page
    # the filter offers every varied parameter with its values
    assert 'data-column="estimator.epsilon"' in page and 'value="0.01"' in page and 'data-column="problem.dim"' in page


def test_every_estimator_on_one_axis_best_tuning_per_family(tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    quickstart_like(folder, seeds=(0, 1))
    figures = _figures(build_report(folder))
    lr = figures["every estimator: loss decrease vs lr - dim=4"]
    names = {t["name"] for t in lr["data"] if t.get("showlegend")}
    assert names == {"CDG", "NES(samples=50)", "NES(samples=100)", "STE(variant=clipped)", "STE(variant=polynomial)"}
    best = figures["every estimator: best loss decrease vs dim - toy_mlp"]
    cdg = next(t for t in best["data"] if t["name"] == "CDG" and t["mode"] == "lines+markers")
    assert cdg["x"] == [4, 8]
    # quickstart_like: CDG epsilon=0.1 is the better tuning (index 0); its best mean at lr 0.6:
    # 0.4 / sqrt(dim) * 0.6 * 0.6 * 4 + 0.01 * mean(b - seed) = 0.288 at dim 4
    assert cdg["y"][0] == pytest.approx(0.4 / 2 * 0.6 * 0.6 * 4)
    assert "epsilon=0.1" in cdg["text"][0] and "lr=0.6" in cdg["text"][0]


def test_two_sweeps_share_the_axes_and_are_told_apart(tmp_path: Path) -> None:
    cpu, gpu = tmp_path / "cpu" / "quickstart", tmp_path / "gpu" / "quickstart"
    quickstart_like(cpu, seeds=(0,))
    quickstart_like(gpu, seeds=(0,))
    data = load_results([cpu, gpu])
    assert data.sweeps == ["cpu/quickstart", "gpu/quickstart"]  # same sweep name: told apart by folder
    assert len(data.cells) == 2 * len(load_results(cpu).cells)  # the same cell ids, two cells each
    report = build_report([cpu, gpu])
    assert report.out_dir == tmp_path / "cpu" / "quickstart+quickstart.report"
    figures = _figures(report)
    cdg = figures["CDG: loss decrease vs lr - dim=4"]
    names = {t["name"] for t in cdg["data"] if t.get("showlegend")}
    assert "CDG(epsilon=0.1) [cpu/quickstart]" in names and "CDG(epsilon=0.1) [gpu/quickstart]" in names
    dashes = {t["line"]["dash"] for t in cdg["data"] if t["mode"] == "lines+markers"}
    assert len(dashes) == 2
    assert 'data-column="sweep"' in report.index.read_text()


def _lr_spec(lrs: str) -> str:
    return (f"name: s\nexperiment: probe\nproblem: {{kind: toy_mlp, dim: 4}}\nestimator: {{kind: cdg}}\n"
            f"measure: {{lrs: {lrs}}}\nseeds: [0]\n")


def test_the_lr_axis_follows_the_specs_grid(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_cell(folder, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows({(0, lr): 0.1 for lr in (0.01, 0.03, 0.05, 0.07)}))
    (folder / "_gradsweep").mkdir()
    data = load_results(folder)
    geometric, even = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], [0.01, 0.03, 0.05, 0.07]
    assert lr_axis(data, geometric) == "log" and lr_axis(data, even) == "linear"  # no spec: the spacing
    for spec, expected in (("{logspace: [-5, 0, 6]}", "log"), ("{linspace: [0.01, 0.99, 50]}", "linear")):
        (folder / "_gradsweep" / "spec.yaml").write_text(_lr_spec(spec))
        assert lr_axis(load_results(folder), geometric) == expected


def test_a_divergent_tail_does_not_flatten_the_peak(tmp_path: Path) -> None:
    assert clipped_range([0.1, -0.2], [0.3, 0.1]) == (None, 0)  # an ordinary tail: automatic range
    rng, below = clipped_range([0.1, 0.2, -50.0, -1e6], [0.3, 0.25])
    assert rng[0] == pytest.approx(-0.6 - 0.045) and rng[1] == pytest.approx(0.3 + 0.045) and below == 2
    folder = tmp_path / "d"
    values = {(0, lr): d for lr, d in ((0.1, 0.2), (0.2, 0.3), (0.4, 0.1), (0.8, -40.0), (1.6, -9e5))}
    write_cell(folder, {**TOY, "problem.dim": 4, "estimator.kind": "cdg", "estimator.epsilon": 0.1, "seed": 0},
               probe_rows(values))
    report = build_report(folder)
    figure = next(f for s in report.sections for f in s.figures if f.title.startswith("CDG"))
    assert figure.plot["layout"]["yaxis"]["range"][0] > -1
    assert "2 points of the divergent tail lie below" in figure.caption
