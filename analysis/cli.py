"""``gradsweep report RESULTS/NAME [--out DIR]`` (and ``python -m analysis report ...``).

:func:`build_report` reads the folder, runs every section of :data:`analysis.sections.SECTIONS`,
writes ``summary.csv``, ``summary.md`` and ``index.html``. The runtime's CLI calls
:func:`add_arguments` and :func:`run`; exit codes: 0 written, 1 written but a section failed (the
page says which), 2 bad input (no such folder, no results).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.aggregate import summary
from analysis.core import ResultsData, ResultsError, format_value, load_results, short_name, varying
from analysis.html import SectionResult, write_index
from analysis.sections import SECTIONS

__all__ = ["add_arguments", "run", "build_report", "Report", "summary_tables"]

DEFAULT_OUT = "_report"  # inside the results folder; "_" keeps it out of pyarrow.dataset's view


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    index: Path
    out_dir: Path
    sections: list[SectionResult]
    summary: pd.DataFrame
    data: ResultsData

    @property
    def errors(self) -> list[SectionResult]:
        return [s for s in self.sections if s.error]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand's arguments."""
    parser.add_argument("results", type=Path, help="a results folder, <results>/<name>/")
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"where to write the report (default: RESULTS/NAME/{DEFAULT_OUT}/)",
    )


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return format_value(value)


def summary_tables(data: ResultsData, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(csv, readable): the csv has every parameter set in the folder; the readable table names
    the estimator config and only the parameters that vary, with numbers rounded."""
    if table.empty:
        return table, table
    metrics = ["best_lr", "best_mean", "best_std", "down", "n", "estimator_seconds", "cells", "seeds"]
    csv = table[[*data.param_columns, *metrics]]
    shown = [c for c in varying(table, data.setting_columns) if not c.startswith("estimator.")]
    readable = table[["estimator_label", *(["pretrain_label"] if table["pretrain_label"].nunique() > 1 else []), *shown, *metrics]]
    readable = readable.rename(columns={
        "estimator_label": "estimator", "pretrain_label": "student", "best_mean": "best decrease (mean)",
        "best_std": "(std)", "down": "down", "estimator_seconds": "seconds", **{c: short_name(c) for c in shown},
    })
    readable = readable.apply(lambda col: col.map(_fmt))
    return csv, readable


def _markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "No probe rows: no summary.\n"
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _section_module(name: str):
    return importlib.import_module(name if "." in name else f"analysis.sections.{name}")


def select_cells(data: ResultsData, select: Any) -> ResultsData:
    """Only the cells ``select`` keeps: an object with ``mask(frame) -> bool Series`` over a frame of
    ``cell_id`` and the flat parameter columns (``gradsweep.select.Selection``, from ``--where``/``--cell``)."""
    cells = data.cells.reset_index()
    keep = set(cells.loc[select.mask(cells).to_numpy(), "cell_id"])
    if not keep:
        raise ResultsError(f"{select.describe()}: no cell of {str(data.folder)!r} matches")
    rows = data.rows[data.rows["cell_id"].isin(keep)].copy()
    rows["cell_id"] = rows["cell_id"].cat.remove_unused_categories()
    return replace(
        data, rows=rows, cells=data.cells[data.cells.index.isin(keep)],
        failures=[f for f in data.failures if f.cell_id in keep],
        expected_cell_ids=None if data.expected_cell_ids is None else data.expected_cell_ids & keep,
        _records={}, _memo={},
    )


def build_report(folder: str | Path, out_dir: str | Path | None = None, *, select: Any = None) -> Report:
    """Write the report of a results folder; raises :class:`ResultsError` on bad input.

    ``select``: only the cells it keeps (:func:`select_cells`); None: every cell.
    """
    data = load_results(folder)
    if select is not None:
        data = select_cells(data, select)
    out = Path(out_dir) if out_dir is not None else Path(folder) / DEFAULT_OUT
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for old in figures_dir.glob("*.png"):  # a rerun on more results replaces, never mixes
        old.unlink()
    results = []
    for name in SECTIONS:
        try:
            module = _section_module(name)
            result = SectionResult(name.rsplit(".", 1)[-1], getattr(module, "TITLE", name))
            result.figures = list(module.section(data, figures_dir))
        except Exception:  # noqa: BLE001 - one broken section must not lose the others
            result = SectionResult(name.rsplit(".", 1)[-1], name, error=traceback.format_exc())
        results.append(result)
    table = summary(data)
    csv, readable = summary_tables(data, table)
    csv.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(readable), encoding="utf-8")
    index = write_index(data, results, readable, out)
    return Report(index, out, results, table, data)


def run(args: argparse.Namespace) -> int:
    """Run ``report`` for parsed arguments; 0 ok, 1 a section failed, 2 bad input."""
    try:
        report = build_report(args.results, args.out, select=getattr(args, "select", None))
    except ResultsError as err:
        print(f"gradsweep report: {err}", file=sys.stderr)
        return 2
    count = sum(len(s.figures) for s in report.sections)
    data = report.data
    print(f"report: {report.index} ({count} figures, {len(data.cells)} cells)")
    if data.missing_cell_ids or data.failures:
        print(f"  partial: {len(data.missing_cell_ids)} cells without results, {len(data.failures)} failed")
    for s in report.errors:
        print(f"  section {s.name} failed:\n{s.error}", file=sys.stderr)
    return 1 if report.errors else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis report RESULTS/NAME [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description="offline analysis of gradsweep results")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("report", help="figures, tables and index.html for a results folder"))
    return run(parser.parse_args(argv))
