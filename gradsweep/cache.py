"""A content-keyed disk cache for expensive artefacts shared by many cells (pretrained weights).

The key is a hash of everything that determines the artefact, so the hundreds of cells of a grid
that share one pretrained student train it once. Safe across processes: the first to ask holds a
file lock while it computes; the others wait on the lock and then read the finished file. The
artefact is written to a temporary name and renamed, so a killed writer leaves no half file.

Artefacts and checkpoints are read back with :func:`load_tensors` (``torch.load`` with
``weights_only=True``): they hold only tensors and plain containers, so a cache file someone
replaced cannot run code in the next cell that reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock

__all__ = ["default_cache_dir", "cache_key", "cached_file", "load_tensors"]


def default_cache_dir() -> Path:
    """``$GRADSWEEP_CACHE``, else ``~/.cache/gradsweep``."""
    return Path(os.environ.get("GRADSWEEP_CACHE", Path.home() / ".cache" / "gradsweep"))


def cache_key(what: Mapping[str, Any]) -> str:
    """A stable hex key of a JSON-able mapping (sorted keys)."""
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_file(
    cache_dir: Path | str,
    namespace: str,
    what: Mapping[str, Any],
    compute: Callable[[Path], None],
    *,
    suffix: str = ".pt",
) -> tuple[Path, bool]:
    """The path of the artefact for ``what``, computing it once if absent.

    ``compute(tmp_path)`` must write the artefact to ``tmp_path``. Returns ``(path, hit)``, where
    ``hit`` is False when this call computed it. ``namespace`` (e.g. ``"toy_pretrain"``) keeps
    kinds of artefacts apart. The key's inputs are saved beside the artefact as JSON.
    """
    folder = Path(cache_dir) / namespace
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(what)
    path = folder / f"{key}{suffix}"
    if path.exists():
        return path, True
    with FileLock(str(folder / f"{key}.lock")):
        if path.exists():  # another process computed it while we waited
            return path, True
        tmp = folder / f".{key}.{os.getpid()}.tmp{suffix}"
        try:
            compute(tmp)
            (folder / f"{key}.json").write_text(json.dumps(what, sort_keys=True, indent=1, default=str))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path, False


def load_tensors(path: Path | str, *, map_location: Any = None) -> Any:
    """``torch.load`` of a cache or checkpoint file that may hold only tensors and plain containers.

    ``weights_only=True`` refuses any pickle that names a function or class outside torch's
    allow-list, before calling it: a poisoned cache file is a ``ValueError`` naming the file, and
    nothing in it runs. An unreadable (truncated, corrupt) file is the same error.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"cache file {os.fspath(path)!r} holds more than tensors and plain containers, so it was "
            f"refused and nothing in it was run ({first}); delete it to have it computed again"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(
            f"cache file {os.fspath(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
            "delete it to have it computed again"
        ) from None
