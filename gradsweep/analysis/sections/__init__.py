"""The report's sections, in page order.

Each entry names a module of this package (or a full dotted path) that defines ``TITLE`` (the
heading on the page) and ``section(data: ResultsData, out_dir: Path) -> list[Figure]``. A section
draws what the folder has and returns [] when its kind of rows is absent. To add a section, write
its module and add one line here.
"""

from __future__ import annotations

SECTIONS: list[str] = [
    "overview",
    "probe",
    "spread",
    "descent",
    "followups",
    "xnor",
]
