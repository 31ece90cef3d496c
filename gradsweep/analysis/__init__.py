"""Offline analysis of gradsweep results folders: figures, tables and one static page.

Reads with pyarrow and pandas and draws with matplotlib; never imports torch or Ray, so a results
folder copied to a laptop can be reported there. ``build_report(folder)`` writes the report;
``load_results(folder)`` gives the rows for your own analysis.
"""

from gradsweep.analysis.core import Figure, ResultsData, ResultsError, load_results

__all__ = ["Figure", "ResultsData", "ResultsError", "load_results", "build_report"]


def build_report(folder, out_dir=None):  # noqa: ANN001, ANN201 - documented in gradsweep.analysis.cli
    """Write the report of a results folder (see :func:`gradsweep.analysis.cli.build_report`)."""
    from gradsweep.analysis.cli import build_report as _build

    return _build(folder, out_dir)
