"""Interactive figures: one description drawn twice, as a Plotly figure on the page and as a PNG.

A :class:`Plot` holds side-by-side panels of lines (with a band), boxes or a heatmap. Its
:meth:`Plot.to_dict` is a Plotly figure (plain JSON, no plotly import: the page embeds Plotly's
own JavaScript) plus, per trace, the *keys* the page's filter reads: ``params`` (the config's
varied parameters, one value per trace) and ``points`` (parameters that change along a line,
one value per point, e.g. the dim of a best-vs-dim line). :meth:`Plot.save_png` draws the same
description with matplotlib, for papers.

Conventions shared by every figure: hover shows the line's label, its cell parameters and the
numbers of the point; clicking a legend entry hides its line (and band) in every panel; the lr
axis follows the spec's grid (:func:`lr_axis`); a divergent tail does not flatten the peak
(:func:`clipped_range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from gradsweep.analysis.core import ResultsData, format_value, short_name, varying

__all__ = [
    "Plot", "lr_axis", "clipped_range", "filter_columns", "filter_values", "params_of", "hover_columns", "hover_lines", "rgb",
]

DASHES = ("dash", "solid", "dot", "dashdot", "longdash")  # per compared sweep
_MPL_DASH = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-.", "longdash": (0, (8, 3))}


def rgb(colour: Sequence[float], alpha: float | None = None) -> str:
    """A matplotlib colour (0..1 floats) as CSS."""
    r, g, b = (int(round(255 * c)) for c in colour[:3])
    return f"rgba({r},{g},{b},{alpha})" if alpha is not None else f"rgb({r},{g},{b})"


def filter_columns(data: ResultsData) -> list[str]:
    """The parameters the page can filter on: those that take two set values somewhere (a
    parameter that is only null where it does not apply, e.g. ``epsilon`` beside NES, offers
    nothing to choose), and the pretraining (null = the raw student is a choice)."""
    def compute() -> list[str]:
        cells = data.cells
        return [c for c in data.param_columns
                if cells[c].nunique(dropna=True) > 1 or (c in data.pretrain_columns and cells[c].nunique(dropna=False) > 1)]
    return data.memo("filter_columns", compute)


def filter_values(data: ResultsData) -> dict[str, list[str]]:
    """Per filterable parameter, its values as the page shows them (numbers in numeric order)."""
    out = {}
    for column in filter_columns(data):
        values = data.cells[column].drop_duplicates().tolist()
        numeric = [v for v in values if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                   and not (isinstance(v, float) and math.isnan(v))]
        rest = sorted({format_value(v) for v in values if v not in numeric or v is None})
        out[column] = [format_value(v) for v in sorted(set(numeric))] + [r for r in rest if r not in map(format_value, numeric)]
    return out


def params_of(data: ResultsData, row: Mapping[str, Any]) -> dict[str, str]:
    """A config's values of the filterable parameters (formatted as :func:`filter_values`)."""
    return {c: format_value(row[c]) for c in filter_columns(data) if c in row}


def hover_columns(data: ResultsData, among: pd.DataFrame) -> list[str]:
    """The parameters that vary between the configs ``among`` (a figure's): what its hovers name;
    the title names the rest. Computed once per figure (it costs a pass over every column)."""
    return varying(among, data.param_columns)


def hover_lines(data: ResultsData, row: Mapping[str, Any], skip: Iterable[str] = (), columns: Sequence[str] | None = None) -> str:
    """The cell parameters a hover shows, one per line: ``columns`` (:func:`hover_columns`),
    else every varied parameter; parameters that do not apply (null) are left out."""
    skip = set(skip)
    columns = filter_columns(data) if columns is None else columns
    return "<br>".join(
        f"{short_name(c)}={format_value(row[c])}" for c in columns
        if c in row and c not in skip and format_value(row[c]) != "null"
    )


def lr_axis(data: ResultsData, lrs: Iterable[float]) -> str:
    """``"log"`` or ``"linear"``: the spec's lr grid decides (``logspace`` -> log, ``linspace`` /
    ``arange`` -> linear); a plain list (or no spec) is judged by its spacing: log when the
    values are positive and evenly spaced in log but not in linear terms."""
    kinds = set()
    for text in data.spec_texts.values() if data.spec_texts else [data.spec_text]:
        kinds.add(_spec_lr_kind(text))
    kinds.discard(None)
    if kinds == {"logspace"}:
        return "log"
    if kinds and kinds <= {"linspace", "arange"}:
        return "linear"
    values = np.array(sorted({float(v) for v in lrs if v is not None and not math.isnan(v)}))
    if len(values) < 3 or (values <= 0).any():
        return "linear"
    lin = np.diff(values)
    log = np.diff(np.log(values))
    spread = lambda d: float(np.std(d) / abs(np.mean(d))) if np.mean(d) else math.inf  # noqa: E731
    return "log" if spread(log) < spread(lin) else "linear"


def _spec_lr_kind(text: str | None) -> str | None:
    if not text:
        return None
    try:
        import yaml

        spec = yaml.safe_load(text)
        lrs = spec["measure"]["lrs"]
    except Exception:  # noqa: BLE001 - a spec that cannot be read only means "judge by spacing"
        return None
    if isinstance(lrs, dict):
        for key in ("logspace", "linspace", "arange"):
            if key in lrs:
                return key
    return None


def clipped_range(lows: Iterable[float], highs: Iterable[float], *, tail: float = 2.0) -> tuple[list[float] | None, int]:
    """A y range that keeps the peak readable: when the lowest value lies more than ``tail``
    times the highest positive value below zero (a divergent lr tail), the axis stops there.
    Returns (range or None for automatic, number of values below the range)."""
    lows = np.array([v for v in lows if v is not None and np.isfinite(v)], dtype=float)
    highs = np.array([v for v in highs if v is not None and np.isfinite(v)], dtype=float)
    if not len(lows) or not len(highs):
        return None, 0
    top = float(highs.max())
    if top <= 0 or float(lows.min()) >= -tail * top:
        return None, 0
    bottom = -tail * top
    pad = 0.05 * (top - bottom)
    return [bottom - pad, top + pad], int((lows < bottom - pad).sum())


@dataclass
class Plot:
    """Side-by-side panels (raw vs pretrained, ...) of lines, boxes or a heatmap."""

    panels: list[str]
    x_title: str
    y_title: str
    x_type: str = "linear"
    y_type: str = "linear"
    y_range: list[float] | None = None
    legend_title: str = ""
    height: int = 460
    traces: list[dict] = field(default_factory=list)
    keys: list[dict] = field(default_factory=list)
    shapes: list[dict] = field(default_factory=list)
    x_ticks: list | None = None
    _legend_seen: set = field(default_factory=set)

    def _axes(self, panel: int) -> dict:
        suffix = "" if panel == 0 else str(panel + 1)
        return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}

    def _legend(self, label: str) -> bool:
        first = label not in self._legend_seen
        self._legend_seen.add(label)
        return first

    def line(
        self, panel: int, x: Sequence, y: Sequence, *, label: str, colour: Sequence[float], hover: Sequence[str],
        params: Mapping[str, str] | None = None, points: Mapping[str, Sequence[str]] | None = None,
        band: tuple[Sequence, Sequence] | None = None, dash: str = "dash", error: Sequence | None = None,
    ) -> None:
        """A line with markers (and a filled band, or error bars), one legend entry per label."""
        key = {"params": dict(params or {}), **({"points": {k: list(v) for k, v in points.items()}} if points else {})}
        x, y = _list(x), _list(y)
        if band is not None:
            lo, hi = _list(band[0]), _list(band[1])
            common = {"x": x, "mode": "lines", "line": {"width": 0, "color": rgb(colour)}, "legendgroup": label,
                      "showlegend": False, "hoverinfo": "skip", "type": "scatter", **self._axes(panel)}
            self.traces.append({**common, "y": lo, "name": label})
            self.traces.append({**common, "y": hi, "name": label, "fill": "tonexty", "fillcolor": rgb(colour, 0.15)})
            self.keys += [key, key]
        trace = {
            "type": "scatter", "x": x, "y": y, "mode": "lines+markers", "name": label, "legendgroup": label,
            "showlegend": self._legend(label), "line": {"color": rgb(colour), "width": 1.6, "dash": dash},
            "marker": {"size": 5}, "text": list(hover), "hovertemplate": "%{text}<extra></extra>", **self._axes(panel),
        }
        if error is not None:
            trace["error_y"] = {"type": "data", "array": _list(error), "visible": True, "thickness": 1}
        self.traces.append(trace)
        self.keys.append(key)

    def box(
        self, panel: int, x: str, stats: Mapping[str, float], *, label: str, colour: Sequence[float], hover: str,
        params: Mapping[str, str] | None = None, offset: str | None = None,
    ) -> None:
        """One precomputed box: quartiles, whiskers at min and max, the mean as a dashed line."""
        self.traces.append({
            "type": "box", "x": [x], "q1": [stats["q25"]], "median": [stats["median"]], "q3": [stats["q75"]],
            "lowerfence": [stats["min"]], "upperfence": [stats["max"]], "mean": [stats["mean"]],
            "name": label, "legendgroup": label, "showlegend": self._legend(label), "boxpoints": False,
            "marker": {"color": rgb(colour)}, "line": {"width": 1.3}, "hoverinfo": "skip",
            **({"offsetgroup": offset} if offset else {}), **self._axes(panel),
        })
        self.keys.append({"params": dict(params or {})})
        # boxes do not take custom hover text: an invisible marker at the median carries it
        self.traces.append({
            "type": "scatter", "x": [x], "y": [stats["median"]], "mode": "markers", "name": label,
            "legendgroup": label, "showlegend": False, "marker": {"size": 12, "color": "rgba(0,0,0,0)"},
            "text": [hover], "hovertemplate": "%{text}<extra></extra>", **self._axes(panel),
        })
        self.keys.append({"params": dict(params or {})})

    def heatmap(self, panel: int, z: np.ndarray, columns: list[str], rows: list[str], *, hover: list[list[str]],
                row_params: list[Mapping[str, str]], title: str) -> None:
        """A heatmap of -1..1 values (cosines); the filter hides rows."""
        self.traces.append({
            "type": "heatmap", "z": [[None if np.isnan(v) else float(v) for v in row] for row in z], "x": columns,
            "y": rows, "zmin": -1, "zmax": 1, "colorscale": "RdBu", "colorbar": {"title": {"text": title}},
            "showscale": panel == 0, "text": hover, "hovertemplate": "%{text}<extra></extra>", **self._axes(panel),
        })
        self.keys.append({"rows": [dict(p) for p in row_params]})

    def hline(self, y: float = 0.0) -> None:
        """A dotted reference line across every panel (no change: decrease 0)."""
        for panel in range(len(self.panels)):
            suffix = "" if panel == 0 else str(panel + 1)
            self.shapes.append({"type": "line", "xref": f"x{suffix} domain", "yref": f"y{suffix}", "x0": 0, "x1": 1,
                                "y0": y, "y1": y, "line": {"color": "grey", "width": 1, "dash": "dot"}})

    def to_dict(self) -> dict:
        """The Plotly figure (``data``, ``layout``) and the filter's ``keys``, one per trace."""
        n = max(1, len(self.panels))
        gap = 0.07 if n > 1 else 0.0
        width = (1 - gap * (n - 1)) / n
        layout: dict[str, Any] = {
            "height": self.height, "margin": {"l": 70, "r": 20, "t": 40, "b": 60}, "hovermode": "closest",
            "legend": {"title": {"text": self.legend_title}, "groupclick": "togglegroup"}, "shapes": self.shapes,
            "annotations": [], "template": {"layout": {"plot_bgcolor": "white", "paper_bgcolor": "white"}},
            "boxmode": "group",
        }
        for i, title in enumerate(self.panels or [""]):
            suffix = "" if i == 0 else str(i + 1)
            lo = i * (width + gap)
            xaxis = {"domain": [lo, lo + width], "anchor": f"y{suffix}", "title": {"text": self.x_title},
                     "type": self.x_type, "gridcolor": "#e5e5e5", "zeroline": False}
            if self.x_ticks is not None:
                xaxis.update(tickmode="array", tickvals=self.x_ticks, ticktext=[format_value(v) for v in self.x_ticks])
            yaxis = {"anchor": f"x{suffix}", "type": self.y_type, "gridcolor": "#e5e5e5", "zeroline": False}
            if i == 0:
                yaxis["title"] = {"text": self.y_title}
            else:
                yaxis["matches"] = "y"
            if self.y_range is not None:
                yaxis["range"] = self.y_range
            layout[f"xaxis{suffix}"] = xaxis
            layout[f"yaxis{suffix}"] = yaxis
            if title:
                layout["annotations"].append({"text": title, "x": lo + width / 2, "y": 1.0, "xref": "paper", "yref": "paper",
                                              "xanchor": "center", "yanchor": "bottom", "showarrow": False})
        return {"data": self.traces, "layout": layout, "keys": self.keys}

    def save_png(self, path, title: str) -> Any:  # noqa: ANN001 - a Path; returns it
        """The same figure with matplotlib (lines, bands, error bars, boxes; heatmaps are not drawn here)."""
        from gradsweep.analysis.figures import panels as mpl_panels

        canvas = mpl_panels(max(1, len(self.panels)))
        for trace in self.traces:
            ax = canvas.axes[int(trace["xaxis"][1:] or 1) - 1]
            if trace["type"] == "scatter" and trace.get("fill") == "tonexty":
                lo = next(t for t in reversed(self.traces[: self.traces.index(trace)]) if t.get("name") == trace["name"])
                ax.fill_between(trace["x"], _nan(lo["y"]), _nan(trace["y"]), color=_mpl_colour(trace["fillcolor"]),
                                alpha=0.15, linewidth=0)
            elif trace["type"] == "scatter" and trace.get("showlegend") is not None and trace["mode"] == "lines+markers":
                colour = _mpl_colour(trace["line"]["color"])
                style = _MPL_DASH.get(trace["line"].get("dash", "solid"), "-")
                label = trace["name"] if trace["showlegend"] else None
                if "error_y" in trace:
                    ax.errorbar(trace["x"], _nan(trace["y"]), yerr=_nan(trace["error_y"]["array"]), color=colour,
                                linestyle=style, marker=".", capsize=3, linewidth=1.2, label=label)
                else:
                    ax.plot(trace["x"], _nan(trace["y"]), linestyle=style, marker=".", color=colour, linewidth=1.2, label=label)
            elif trace["type"] == "box":
                stats = {"med": trace["median"][0], "q1": trace["q1"][0], "q3": trace["q3"][0],
                         "whislo": trace["lowerfence"][0], "whishi": trace["upperfence"][0], "mean": trace["mean"][0],
                         "label": trace["x"][0], "fliers": []}
                position = len([t for t in self.traces[: self.traces.index(trace)] if t["type"] == "box"
                                and t["xaxis"] == trace["xaxis"]])
                colour = _mpl_colour(trace["marker"]["color"])
                ax.bxp([stats], positions=[position], showmeans=True, meanline=True, widths=0.6,
                       boxprops={"color": colour}, whiskerprops={"color": colour}, capprops={"color": colour},
                       medianprops={"color": colour, "linewidth": 2}, meanprops={"color": "grey"})
        for i, ax in enumerate(canvas.axes):
            boxes = [t for t in self.traces if t["type"] == "box" and int(t["xaxis"][1:] or 1) - 1 == i]
            if boxes:
                ax.set_xticks(range(len(boxes)))
                ax.set_xticklabels([b["x"][0] for b in boxes], rotation=35, ha="right", fontsize="x-small")
                extra = max(0.0, 0.05 * max(len(b["x"][0]) for b in boxes) + 0.4 - canvas.bottom)
                canvas.bottom += extra
                canvas.height += extra
            if self.shapes:
                ax.axhline(self.shapes[0]["y0"], color="grey", linestyle=":", linewidth=0.8)
            if self.x_type == "log":
                ax.set_xscale("log")
            if self.y_type == "log":
                ax.set_yscale("log")
            if self.x_ticks is not None:
                ax.set_xticks(self.x_ticks)
                ax.set_xticklabels([format_value(v) for v in self.x_ticks])
            if self.y_range is not None:
                ax.set_ylim(*self.y_range)
            if self.panels and self.panels[i]:
                ax.set_title(self.panels[i], fontsize="medium")
            if not boxes:
                ax.set_xlabel(self.x_title)
            ax.grid(alpha=0.3)
        canvas.axes[0].set_ylabel(self.y_title)
        return canvas.save(path, title, self.legend_title or None)


def _list(values: Iterable) -> list:
    """JSON-ready numbers: NaN becomes null, numpy scalars plain Python."""
    out = []
    for v in values:
        if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, (np.integer,)):
            out.append(int(v))
        elif isinstance(v, (np.floating, float)):
            out.append(float(v))
        else:
            out.append(v if not isinstance(v, (pd.Timestamp,)) else str(v))
    return out


def _nan(values: Iterable) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _mpl_colour(css: str) -> tuple[float, ...]:
    inner = css[css.index("(") + 1: css.index(")")].split(",")
    return tuple(int(float(v)) / 255 for v in inner[:3])
