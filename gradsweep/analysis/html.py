"""The report page: one self-contained ``index.html`` with interactive figures.

Everything the page shows is inside it: CSS, Plotly's JavaScript (from the installed ``plotly``
package, never a CDN), every interactive figure as JSON, and the figures that have no
interactive version as inline PNG data. It opens from the file system, offline, and makes no
request. The PNG of every figure also lies in ``figures/`` next to it (papers need them), linked
from each caption.

The page's script draws every figure with Plotly (hover: the cell parameters and numbers of a
point; zoom; a click on a legend entry hides that line in every panel) and offers one filter
over every varied parameter: unticking ``dim=64`` hides the lines (and points) of that value in
every figure. For the browser test it records on ``<body>``: ``data-plots-total`` /
``data-plots-rendered`` and ``data-images-total`` / ``data-images-loaded``.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from gradsweep.analysis.core import Figure, ResultsData, short_name

__all__ = ["SectionResult", "write_index", "plotly_js"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.note { background: #fff6e0; border: 1px solid #e6c36a; padding: 0.6em 1em; border-radius: 4px; }
.ok { background: #eef8ee; border-color: #8c8; } .error { background: #fde8e8; border-color: #d88; }
figure { margin: 1.5em 0; width: 100%; } figure img { max-width: 100%; border: 1px solid #ddd; }
.gs-plot { width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 1100px; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
#filter { background: #fafafa; border: 1px solid #ddd; padding: 0.3em 1em; }
#filter fieldset { display: inline-block; vertical-align: top; border: 1px solid #ddd; margin: 0.2em; font-size: 0.85em; }
#filter label { display: block; white-space: nowrap; } #filter button { font-size: 0.8em; }
"""

_SCRIPT = r"""
(function () {
  var figs = JSON.parse(document.getElementById('gs-figures').textContent);
  var config = {responsive: true, displaylogo: false};
  var allowed = {};  // column -> {value: true}; a column absent: every value shown
  function ok(params) {
    for (var c in params) { var a = allowed[c]; if (a && !a[params[c]]) { return false; } }
    return true;
  }
  function pick(values, keep) { return keep.map(function (j) { return values[j]; }); }
  function shown(fig, gd) {
    return fig.data.map(function (t, i) {
      var key = fig.keys[i] || {};
      var out = Object.assign({}, t);
      var before = gd && gd.data && gd.data[i];
      fig.legendonly = fig.legendonly || {};
      if (before && before.visible !== false) { fig.legendonly[i] = before.visible === 'legendonly'; }
      if (fig.legendonly[i]) { out.visible = 'legendonly'; }  // a legend click survives the filter
      if (!ok(key.params || {})) { out.visible = false; return out; }
      if (key.points) {
        var keep = [];
        for (var j = 0; j < (t.x || []).length; j++) {
          var p = {};
          for (var c in key.points) { p[c] = key.points[c][j]; }
          if (ok(p)) { keep.push(j); }
        }
        ['x', 'y', 'text'].forEach(function (f) { if (t[f]) { out[f] = pick(t[f], keep); } });
        if (t.error_y) { out.error_y = Object.assign({}, t.error_y, {array: pick(t.error_y.array, keep)}); }
        if (!keep.length) { out.visible = false; }
      }
      if (key.rows) {
        var rows = [];
        key.rows.forEach(function (p, j) { if (ok(p)) { rows.push(j); } });
        out.z = pick(t.z, rows); out.y = pick(t.y, rows); out.text = pick(t.text, rows);
      }
      return out;
    });
  }
  function draw(fig) {
    var gd = document.getElementById(fig.id);
    return Plotly.react(gd, shown(fig, gd), fig.layout, config);
  }
  function redrawAll() { figs.forEach(draw); }
  document.querySelectorAll('#filter input[type=checkbox]').forEach(function (box) {
    box.addEventListener('change', function () {
      var set = box.closest('fieldset');
      var column = set.getAttribute('data-column');
      var boxes = set.querySelectorAll('input[type=checkbox]');
      var on = {}, all = true;
      boxes.forEach(function (b) { if (b.checked) { on[b.value] = true; } else { all = false; } });
      if (all) { delete allowed[column]; } else { allowed[column] = on; }
      redrawAll();
    });
  });
  document.querySelectorAll('#filter button').forEach(function (button) {
    button.addEventListener('click', function () {
      var set = button.closest('fieldset');
      var value = button.getAttribute('data-all') === '1';
      set.querySelectorAll('input[type=checkbox]').forEach(function (b) { b.checked = value; });
      set.querySelector('input[type=checkbox]').dispatchEvent(new Event('change'));
    });
  });
  var rendered = 0;
  document.body.setAttribute('data-plots-total', String(figs.length));
  figs.reduce(function (chain, fig) {
    return chain.then(function () { return draw(fig); }).then(function () {
      rendered += 1;
      document.body.setAttribute('data-plots-rendered', String(rendered));
    });
  }, Promise.resolve());
  window.gradsweepFigures = figs;
})();
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


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """Plotly's JavaScript bundle, from the installed ``plotly`` package (embedded, so the page
    works offline); read as a file so the report does not import plotly's Python side."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


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
        items = "".join(f"<li><code>{html.escape(u)}</code></li>" for u in data.unreadable)
        lines.append(
            f"{len(data.unreadable)} cell files could not be read (corrupt, truncated, or holding another cell's rows)"
            f" and were skipped; nothing of them is counted:<ul>{items}</ul>"
        )
    partial = bool(data.failures or data.missing_cell_ids or data.unreadable)
    css = "note" if partial else "note ok"
    head = "<b>Partial results.</b> " if partial else ""
    return f'<div class="{css}" id="missing">{head}' + " ".join(lines) + "</div>"


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _filter_panel(values: dict[str, list[str]]) -> str:
    """One fieldset of checkboxes per varied parameter (every value ticked)."""
    esc = html.escape
    sets = []
    for column, options in values.items():
        boxes = "".join(
            f'<label><input type="checkbox" value="{esc(v)}" checked> {esc(v)}</label>' for v in options
        )
        sets.append(
            f'<fieldset data-column="{esc(column)}"><legend title="{esc(column)}">{esc(short_name(column))}</legend>'
            f'{boxes}<button type="button" data-all="1">all</button> <button type="button" data-all="0">none</button>'
            "</fieldset>"
        )
    return (
        '<details id="filter" open><summary><b>Filter</b>: untick a value to hide its lines and points in every'
        " figure (legend entries: click to hide one line, double-click to show only it)</summary>"
        + "".join(sets) + "</details>"
    )


def _plain(value: object) -> object:
    """JSON-ready: NaN and infinities become null (JSON has neither), numpy scalars plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) or hasattr(value, "dtype"):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return str(value)
        if isinstance(value, bool) or str(getattr(value, "dtype", "")) == "bool":
            return bool(value)
        if number != number or number in (float("inf"), float("-inf")):
            return None
        return int(number) if str(getattr(value, "dtype", "")).startswith("int") else number
    return value


def _json_for_script(value: object) -> str:
    """JSON that cannot end the ``<script>`` element holding it."""
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def write_index(
    data: ResultsData, sections: list[SectionResult], summary_md: pd.DataFrame, out_dir: Path,
    filter_values: dict[str, list[str]] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and return its path."""
    esc = html.escape
    shown = [s for s in sections if s.figures or s.error]  # no empty section on the page or in its contents
    figures_json = []
    body: list[str] = []
    if not summary_md.empty:
        body.append('<h2 id="summary">Summary per estimator config</h2>')
        body.append(
            "<p>Best lr: the lr of the largest mean loss decrease. Mean and std over seeds and batches at that lr;"
            " down: fraction of batches whose loss went down there; seconds: mean estimator time per batch."
            ' Also in <a href="summary.csv">summary.csv</a> (every parameter) and <a href="summary.md">summary.md</a>.</p>'
        )
        body.append(summary_md.to_html(index=False, na_rep="", escape=True, border=0))
    for s in shown:
        body.append(f'<h2 id="section-{esc(s.name)}">{esc(s.title)}</h2>')
        if s.error:
            body.append(f'<div class="note error">This section failed: <pre>{esc(s.error)}</pre></div>')
        for f in s.figures:
            png = esc(_relative(f.path, out_dir))
            caption = f'<figcaption><b>{esc(f.title)}</b>. {esc(f.caption)} <a href="{png}">PNG</a></figcaption>'
            if f.plot is not None:
                plot_id = f"plot-{len(figures_json)}"
                figures_json.append({"id": plot_id, **f.plot})
                body.append(f'<figure><div class="gs-plot" id="{plot_id}" title="{esc(f.title)}"></div>{caption}</figure>')
            else:
                data_uri = "data:image/png;base64," + base64.b64encode(f.path.read_bytes()).decode("ascii")
                body.append(f'<figure><img src="{data_uri}" alt="{esc(f.title)}">{caption}</figure>')
    specs = {k: v for k, v in (data.spec_texts or {"": data.spec_text}).items() if v is not None}
    if specs:
        body.append('<h2 id="spec">Spec</h2>')
        for name, text in specs.items():
            where = f" of <code>{esc(name)}</code>" if data.compared else ""
            body.append(f"<p>From <code>_gradsweep/spec.yaml</code>{where} (the spec as last run):</p><pre>{esc(text)}</pre>")

    contents = ['<h2>Contents</h2><ul>']
    if not summary_md.empty:
        contents.append('<li><a href="#summary">Summary table</a></li>')
    contents += [f'<li><a href="#section-{esc(s.name)}">{esc(s.title)}</a> ({len(s.figures)} figures)</li>' for s in shown]
    if specs:
        contents.append('<li><a href="#spec">Spec</a></li>')
    contents.append("</ul>")

    folders = data.folders or [data.folder]
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradsweep report: {esc(data.name)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{plotly_js()}</script></head><body>",
        f"<h1>{'Sweeps' if data.compared else 'Sweep'} <code>{esc(data.name)}</code></h1>",
        "<p>Results folder" + ("s" if len(folders) > 1 else "") + ": "
        + ", ".join(f"<code>{esc(str(f))}</code>" for f in folders)
        + (". Lines of different sweeps share the axes; the sweep is in every label (dash style per sweep)."
           if data.compared else "") + "</p>",
        _missing_note(data),
        *contents,
    ]
    if figures_json and filter_values:
        head.append(_filter_panel(filter_values))
    tail = [
        f'<script type="application/json" id="gs-figures">{_json_for_script(figures_json)}</script>',
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    path = out_dir / "index.html"
    path.write_text("\n".join([*head, *body, *tail]), encoding="utf-8")
    return path
