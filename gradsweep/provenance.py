"""Where and with what a cell's numbers were computed: the provenance columns of every row.

The static part (package version, git commit, host, library versions) is computed once per
process and cached; library versions come from the installed distributions' metadata, so asking
for them imports neither torch nor Ray (``gradsweep plan`` must stay light). The per-cell part
(``run_device``, ``cell_seconds``, ``finished_at``) is added by the worker wrapper.
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import gradsweep

__all__ = ["static_provenance", "cell_provenance", "plugin_provenance", "git_commit"]


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout the package is imported from, or None (a wheel install).

    A ``+dirty`` suffix says the checkout had uncommitted changes to tracked files, so a result
    cannot be reproduced from the commit alone.
    """
    here = Path(gradsweep.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        suffix = "+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return commit.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def static_provenance() -> dict[str, Any]:
    """The provenance that does not change within a process."""
    return {
        "gradsweep_version": gradsweep.__version__,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "torch_version": _dist_version("torch"),
        "ray_version": _dist_version("ray"),
        "python_version": platform.python_version(),
    }


def plugin_provenance(config: Mapping[str, Any] | None) -> str | None:
    """``"package==version"`` of every installed plugin whose kinds the cell's config names
    (comma-separated, sorted), or None when it uses gradsweep's own kinds only."""
    if not config:
        return None
    from gradsweep.registry import registry

    by_name: dict[str, set[str]] = {}
    for table in registry().by_role.values():
        for name, kind in table.items():
            if kind.package != "gradsweep":
                by_name.setdefault(name, set()).add(f"{kind.package}=={kind.version}")
    if not by_name:
        return None
    used: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, Mapping):
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)
        elif isinstance(node, str) and node in by_name:
            used.update(by_name[node])

    visit(config)
    return ",".join(sorted(used)) or None


def cell_provenance(*, run_device: str | None, cell_seconds: float,
                    config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Static provenance plus what is particular to one finished cell (its device, its time, the
    plugins whose kinds it used)."""
    return {
        **static_provenance(),
        "plugins": plugin_provenance(config),
        "run_device": run_device,
        "cell_seconds": float(cell_seconds),
        "finished_at": datetime.now(timezone.utc),
    }
