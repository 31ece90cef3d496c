"""Matplotlib helpers shared by the sections: the Agg backend, panels, colours, file names.

Colours are per *label* across the whole report: :class:`Palette` gives a label the same colour
in every figure (a config is one colour whether it appears in an lr curve or a best-vs-dim line).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402

__all__ = ["Palette", "panels", "save", "slug", "use_log_x", "legend"]

# tab10 first (the most distinguishable), then tab20's lighter shades and Dark2.
_COLOURS: list = (
    list(plt.get_cmap("tab10").colors)
    + list(plt.get_cmap("tab20").colors[1::2])
    + list(plt.get_cmap("Dark2").colors)
)
DPI = 90


class Palette:
    """A fixed colour per label: labels are sorted once, colour i goes to the i-th."""

    def __init__(self, labels: Iterable[str]) -> None:
        self._index = {label: i for i, label in enumerate(sorted(set(labels)))}

    def __call__(self, label: str) -> tuple:
        i = self._index.get(label)
        if i is None:  # a label not known up front still gets a stable colour
            i = int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)
        return _COLOURS[i % len(_COLOURS)]


def panels(count: int, *, width: float = 6.4, height: float = 4.6, sharey: bool = True) -> tuple[MplFigure, list[Axes]]:
    """A figure with ``count`` side-by-side panels (raw vs pretrained, ...)."""
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), sharey=sharey, squeeze=False)
    return fig, list(axes[0])


def use_log_x(values: Sequence[float]) -> bool:
    """Log x when the values are positive and span more than two decades (a logspace lr grid)."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) > 100


def legend(ax: Axes, title: str, count: int) -> None:
    """A legend naming the varied parameter; outside the axes when it has many entries."""
    if count == 0:
        return
    if count > 8:
        ax.legend(title=title, fontsize="x-small", title_fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), ncol=1 + count // 25)
    else:
        ax.legend(title=title, fontsize="small", title_fontsize="small", loc="best")


def slug(*parts: str) -> str:
    """A file-system-safe, stable name for a figure: readable prefix plus a short hash."""
    text = "-".join(parts)
    readable = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def save(fig: MplFigure, path: Path) -> Path:
    """Write the PNG and free the figure (a report draws hundreds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
