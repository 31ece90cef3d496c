"""``gradsweep report RESULTS/NAME [RESULTS/OTHER ...] [--out DIR]`` (and ``python -m gradsweep.analysis report ...``).

:func:`build_report` reads the folder (or several, compared on the same axes), runs every
section of :data:`gradsweep.analysis.sections.SECTIONS`, writes ``summary.csv``, ``summary.md``,
the PNG figures and one self-contained interactive ``index.html`` into
:func:`report_location` (``<results>/<name>.report/``, beside the data folder so that every
Parquet reader can read the data folder whole). A folder on object storage
(``s3://bucket/results/name``) is read in place, never copied, and its report written locally:
``./<name>.report/`` in the working directory unless ``--out`` says where. The runtime's CLI calls :func:`add_arguments`
and :func:`run`; exit codes: 0 written, 1 written but a section failed (the page says which),
2 bad input (no such folder, no results, an unwritable report folder).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from gradsweep.analysis.aggregate import best_spread
from gradsweep.store import report_location as store_report_location
from gradsweep.analysis.core import ResultsData, ResultsError, format_value, load_results, short_name, varying
from gradsweep.analysis.core import _folder_name, _is_uri
from gradsweep.analysis.html import SectionResult, write_index
from gradsweep.analysis.interactive import filter_values
from gradsweep.analysis.sections import SECTIONS

__all__ = ["add_arguments", "run", "build_report", "Report", "summary_tables"]

REPORT_SUFFIX = ".report"


def report_location(folder: str | Path, *others: str | Path) -> Path:
    """Where the report of a results folder goes: ``<results>/<name>.report/``, a sibling of
    the data folder (inside it, Polars and other readers that take every file of the folder
    would trip over it). Several folders compared: ``<results>/<name>+<other>....report/``
    beside the first. One folder: :func:`gradsweep.store.report_location`.

    A first folder on object storage (``s3://bucket/results/name``) is read in place but its
    report is written locally, in the working directory: ``./<name>.report/`` (a page and PNGs
    to open, not objects to download).
    """
    names = "+".join(_folder_name(f if _is_uri(f) else Path(f)) for f in (folder, *others))
    if _is_uri(folder):
        return Path.cwd() / f"{names}{REPORT_SUFFIX}"
    if not others:
        return Path(store_report_location(folder))
    return Path(folder).parent / f"{names}{REPORT_SUFFIX}"


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
    parser.add_argument(
        "results", type=str, nargs="+",  # str, not Path: Path("s3://b/r") would be "s3:/b/r"
        help="a results folder, <results>/<name>/ or s3://bucket/results/<name> (read in place); "
             "several: their cells on the same axes, told apart by sweep",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"where to write the report (default: <results>/<name>{REPORT_SUFFIX}/ beside the first folder; "
             f"for an s3:// folder ./<name>{REPORT_SUFFIX}/ in the working directory)",
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
    spread = [c for c in ("median", "q25", "q75", "min", "max") if c in table.columns]  # at the best lr
    metrics = ["best_lr", "best_mean", "best_std", *spread, "down", "n", "estimator_seconds", "cells", "seeds"]
    csv = table[[*data.param_columns, *metrics]]
    shown = [c for c in varying(table, data.setting_columns) if not c.startswith("estimator.")]
    readable = table[["estimator_label", *(["pretrain_label"] if table["pretrain_label"].nunique() > 1 else []), *shown, *metrics]]
    readable = readable.rename(columns={
        "estimator_label": "estimator", "pretrain_label": "student", "best_mean": "best decrease (mean)",
        "best_std": "(std)", "median": "(median)", "q25": "(q25)", "q75": "(q75)", "min": "(min)", "max": "(max)",
        "down": "down", "estimator_seconds": "seconds", **{c: short_name(c) for c in shown},
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
    return importlib.import_module(name if "." in name else f"gradsweep.analysis.sections.{name}")


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


def build_report(folder: str | Path | Sequence[str | Path], out_dir: str | Path | None = None, *,
                 select: Any = None) -> Report:
    """Write the report of a results folder, or of several compared; raises
    :class:`ResultsError` on bad input (also an unwritable report folder). ``select``: only the
    cells it keeps (:func:`select_cells`); None: every cell."""
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    data = load_results(folders)
    if select is not None:
        data = select_cells(data, select)
    out = Path(out_dir) if out_dir is not None else report_location(*folders)
    figures_dir = out / "figures"
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResultsError(f"cannot write the report to {str(out)!r}: {err.strerror or err}; write it elsewhere with --out DIR") from err
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
    table = best_spread(data)  # the summary, with the spread over seeds and batches at the best lr
    csv, readable = summary_tables(data, table)
    csv.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(readable), encoding="utf-8")
    index = write_index(data, results, readable, out, filter_values(data))
    return Report(index, out, results, table, data)


def run(args: argparse.Namespace) -> int:
    """Run ``report`` for parsed arguments; 0 ok, 1 a section failed, 2 bad input."""
    try:
        report = build_report(args.results, args.out, select=getattr(args, "select", None))
    except ResultsError as err:
        print(f"gradsweep report: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full results folder: say where, and how to write elsewhere
        where = f" to {err.filename}" if err.filename else ""
        print(f"gradsweep report: cannot write the report{where}: {err.strerror or err}; "
              "write it elsewhere with --out DIR", file=sys.stderr)
        return 2
    count = sum(len(s.figures) for s in report.sections)
    data = report.data
    print(f"report: {report.index} ({count} figures, {len(data.cells)} cells)")
    if args.out is None and _is_uri(args.results[0]):
        print(f"  read {args.results[0]} in place; the report is written locally, in the working directory "
              f"({report.out_dir}; choose another place with --out DIR)")
    if data.missing_cell_ids or data.failures:
        print(f"  partial: {len(data.missing_cell_ids)} cells without results, {len(data.failures)} failed")
    if data.unreadable:
        print(f"  skipped {len(data.unreadable)} unreadable cell files (not counted):", file=sys.stderr)
        for line in data.unreadable:
            print(f"    {line}", file=sys.stderr)
    for s in report.errors:
        print(f"  section {s.name} failed:\n{s.error}", file=sys.stderr)
    return 1 if report.errors else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gradsweep.analysis report RESULTS/NAME [RESULTS/OTHER ...] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m gradsweep.analysis", description="offline analysis of gradsweep results")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("report", help="figures, tables and index.html for a results folder"))
    return run(parser.parse_args(argv))
