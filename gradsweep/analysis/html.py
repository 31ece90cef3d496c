"""The report page: one static ``index.html`` that opens from the file system.

Everything is inline (CSS, a few lines of script) and images are relative paths under the
report folder, so the page needs no server and no network. On load, the script records how many
images rendered in ``data-images-loaded`` / ``data-images-total`` on ``<body>`` (what the browser
test reads back).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gradsweep.analysis.core import Figure, ResultsData

__all__ = ["SectionResult", "write_index"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.note { background: #fff6e0; border: 1px solid #e6c36a; padding: 0.6em 1em; border-radius: 4px; }
.ok { background: #eef8ee; border-color: #8c8; } .error { background: #fde8e8; border-color: #d88; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 1000px; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var ok = 0;
  imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { ok += 1; } });
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
"""


@dataclass
class SectionResult:
    """What one section produced: its figures, or the error that stopped it."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None


def _missing_note(data: ResultsData) -> str:
    """The "missing / partial" box: failures, cells without a file, unreadable files."""
    present = len(data.cells)
    lines = [f"{present} cells have results ({len(data.rows)} rows)."]
    if data.expected_cell_ids is not None:
        missing = len(data.missing_cell_ids)
        lines.append(
            f"The spec expands to {len(data.expected_cell_ids)} cells; {missing} have no result file yet."
            if missing else f"The spec expands to {len(data.expected_cell_ids)} cells; all have results."
        )
    elif data.expected_note:
        lines.append(html.escape(data.expected_note) + ".")
    if data.failures:
        lines.append(f"{len(data.failures)} cells failed (records in <code>_gradsweep/failures/</code>):")
        items = "".join(
            f"<li><code>{html.escape(f.cell_id)}</code>: {html.escape(f.error[:200])}</li>" for f in data.failures[:50]
        )
        more = f"<li>... and {len(data.failures) - 50} more</li>" if len(data.failures) > 50 else ""
        lines.append(f"<ul>{items}{more}</ul>")
    else:
        lines.append("No failed cells recorded.")
    if data.unreadable:
        items = "".join(f"<li>{html.escape(u)}</li>" for u in data.unreadable)
        lines.append(f"{len(data.unreadable)} cell files could not be read and were skipped:<ul>{items}</ul>")
    partial = bool(data.failures or data.missing_cell_ids or data.unreadable)
    css = "note" if partial else "note ok"
    head = "<b>Partial results.</b> " if partial else ""
    return f'<div class="{css}" id="missing">{head}' + " ".join(lines) + "</div>"


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def write_index(
    data: ResultsData, sections: list[SectionResult], summary_md: pd.DataFrame, out_dir: Path
) -> Path:
    """Write ``out_dir/index.html`` and return its path."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>gradsweep report: {esc(data.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sweep <code>{esc(data.name)}</code></h1>",
        f"<p>Results folder: <code>{esc(str(data.folder))}</code></p>",
        "<h2>Missing / partial</h2>",
        _missing_note(data),
        "<h2>Contents</h2><ul>",
        '<li><a href="#summary">Summary table</a></li>',
    ]
    parts += [f'<li><a href="#section-{esc(s.name)}">{esc(s.title)}</a> ({len(s.figures)} figures)</li>' for s in sections]
    parts += ['<li><a href="#spec">Spec</a></li>', "</ul>"]
    parts.append('<h2 id="summary">Summary per estimator config</h2>')
    if summary_md.empty:
        parts.append("<p>No probe rows: no summary table.</p>")
    else:
        parts.append(
            "<p>Best lr: the lr of the largest mean loss decrease. Mean and std over seeds and batches at that lr;"
            " down: fraction of batches whose loss went down there; seconds: mean estimator time per batch."
            ' Also in <a href="summary.csv">summary.csv</a> (every parameter) and <a href="summary.md">summary.md</a>.</p>'
        )
        parts.append(summary_md.to_html(index=False, na_rep="", escape=True, border=0))
    for s in sections:
        parts.append(f'<h2 id="section-{esc(s.name)}">{esc(s.title)}</h2>')
        if s.error:
            parts.append(f'<div class="note error">This section failed: <pre>{esc(s.error)}</pre></div>')
        elif not s.figures:
            parts.append("<p>No rows of this kind in this folder.</p>")
        for f in s.figures:
            parts.append(
                f'<figure><img src="{esc(_relative(f.path, out_dir))}" alt="{esc(f.title)}">'
                f"<figcaption><b>{esc(f.title)}</b>. {esc(f.caption)}</figcaption></figure>"
            )
    parts.append('<h2 id="spec">Spec</h2>')
    if data.spec_text is not None:
        parts.append("<p>From <code>_gradsweep/spec.yaml</code> (the spec as last run):</p>")
        parts.append(f"<pre>{esc(data.spec_text)}</pre>")
    else:
        parts.append("<p>No <code>_gradsweep/spec.yaml</code> in this folder.</p>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
