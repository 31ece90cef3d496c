"""The results folder of one sweep: the only truth about which cells are done.

Layout (``docs/results.md``)::

    <results>/<name>/                    the data: one <cell_id>.parquet per finished cell, nothing else
    <results>/<name>.gradsweep/          the sweep's bookkeeping
        spec.yaml, specs/<time>.yaml     the spec as last run, and every spec run
        failures/<cell_id>.json          the last failure of a cell not yet done
        quarantine/<cell_id>.<time>.parquet.bad   corrupt or misnamed cell files, moved aside, never deleted
        lock                             the driver writing this sweep (pid, host, started)
        events.jsonl (events/ on object stores)   runs started and ended, quarantines, take-overs
        tmp/                             cell files being written (local file systems), renamed into place
    <results>/<name>.report/             what ``gradsweep report`` draws (:func:`report_location`)

The data folder holds cell files only, so pandas, ``pyarrow.dataset``, DuckDB and Polars all read
it as one table. Folders written before this layout kept the bookkeeping in ``<name>/_gradsweep/``:
it is read there, and moved to ``<name>.gradsweep/`` by the next ``run`` or ``resume``.

A cell is done exactly when its file exists and is valid. Only the driver writes here (workers
return their table to it), so the folder may live on any ``pyarrow.fs`` file system: a local
path, ``file:///...`` or ``s3://...`` (where a PUT of the final key is the atomic step).

Imports pyarrow only: no torch, no Ray.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gradsweep.results_schema import flatten_cell, results_schema

__all__ = [
    "StoreError", "LockHeld", "SweepStore", "Scan", "ResultsFiles", "cell_table", "encode_cell",
    "read_results", "results_files", "meta_location", "bookkeeping_location", "report_location",
    "join_location", "split_location", "load", "META_SUFFIX",
    "REPORT_SUFFIX", "LEGACY_META_DIR",
]

META_SUFFIX = ".gradsweep"  # <results>/<name>.gradsweep/: the bookkeeping of sweep <name>
REPORT_SUFFIX = ".report"  # <results>/<name>.report/: its report
LEGACY_META_DIR = "_gradsweep"  # <results>/<name>/_gradsweep/: the bookkeeping before 0.1.0's layout change
SUFFIX = ".parquet"
QUARANTINE_SUFFIX = ".parquet.bad"  # not *.parquet: no glob of the results picks a quarantined file up
MAGIC = b"PAR1"
# metadata keys of a cell file's Arrow schema
KEY_CELL_ID = b"gradsweep.cell_id"
KEY_SWEEP = b"gradsweep.sweep"
KEY_CONFIG = b"gradsweep.config"
KEY_PROVENANCE = b"gradsweep.provenance"
# how much of a file's end the quick check reads: a cell file's footer (~14 KB for 130 columns) fits
_TAIL_BYTES = 64 * 1024


class StoreError(Exception):
    """The results folder cannot be read or written (missing, unwritable, full disk)."""


class LockHeld(StoreError):
    """Another live driver is writing this sweep."""


def _ensure_fs(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """A file system and a path in it from a local path or a URI (``s3://``, ``file://``)."""
    text = os.fspath(location)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"results: cannot open {text!r}: {exc}") from exc
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _strip(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    if "://" not in text:
        text = os.path.abspath(text)
    return text.rstrip("/") or text


def _with_suffix(location: str | os.PathLike[str], suffix: str) -> str:
    """``location`` + ``suffix``, before a URI's query (``s3://b/r/x?endpoint_override=...``)."""
    base, sep, query = _strip(location).partition("?")
    return base.rstrip("/") + suffix + sep + query


def join_location(root: str | os.PathLike[str], name: str) -> str:
    """``<root>/<name>`` for a path or a URI, keeping a URI's query (its endpoint, its region) at the end."""
    base, sep, query = os.fspath(root).partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def split_location(folder: str | os.PathLike[str]) -> tuple[str, str]:
    """``(root, name)`` of a sweep folder ``<root>/<name>`` (a path, or a URI with its query kept on the root)."""
    base, sep, query = _strip(folder).partition("?")
    root, _, name = base.rstrip("/").rpartition("/")
    return (root or "/") + sep + query, name


def meta_location(folder: str | os.PathLike[str]) -> str:
    """Where the bookkeeping of the sweep folder ``<results>/<name>`` lives: ``<results>/<name>.gradsweep``.

    A sibling of the data folder, not inside it, so that every Parquet reader sees cell files only.
    Same scheme as ``folder`` (a local path stays a path, ``s3://...`` stays a URI).
    """
    return _with_suffix(folder, META_SUFFIX)


def bookkeeping_location(folder: str | os.PathLike[str]) -> str:
    """The bookkeeping folder a reader should open for ``folder``: :func:`meta_location`, or the
    legacy ``<folder>/_gradsweep`` of a folder written before the layout change (until the next run
    moves it). Holds ``spec.yaml`` and ``failures/<cell_id>.json``."""
    fs, path = _ensure_fs(folder)
    if fs.get_file_info(path + META_SUFFIX).type != pafs.FileType.Directory:
        if fs.get_file_info(f"{path}/{LEGACY_META_DIR}").type == pafs.FileType.Directory:
            return join_location(_strip(folder), LEGACY_META_DIR)
    return meta_location(folder)


def report_location(folder: str | os.PathLike[str]) -> str:
    """Where ``gradsweep report`` writes the report of ``<results>/<name>``: ``<results>/<name>.report``."""
    return _with_suffix(folder, REPORT_SUFFIX)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _is_object_store(fs: pafs.FileSystem) -> bool:
    """S3 and GCS: no rename (a move is a copy), but a PUT of the final key is atomic."""
    return fs.type_name in ("s3", "gcs")


# An empty or unreadable lock younger than this may be being written by a driver right now.
_LOCK_WRITE_GRACE = 2.0


def _holder_of(raw: bytes) -> dict[str, Any]:
    """The lock file's record with ``alive`` added; ``invalid`` (and not alive) when it is unusable."""
    try:
        holder = json.loads(raw)
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return {"invalid": "empty" if not raw.strip() else "unreadable", "alive": False}
    same_host = holder.get("host") == socket.gethostname()
    return {**holder, "alive": _pid_alive(holder["pid"]) if same_host else None}


class _Layout:
    """The declared schema's fields as plain tuples, and its all-null columns by length.

    ``cell_table`` runs once per cell, and iterating a ``pa.Schema`` builds a Field per step:
    this is done once (:func:`_layout`).
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.fields = tuple((f.name, f.type) for f in schema)
        self.names = frozenset(name for name, _ in self.fields)
        self._nulls: dict[int, list[pa.Array]] = {}

    def nulls(self, n: int) -> list[pa.Array]:
        """An all-null column per field, ``n`` long (immutable, so shared between cells)."""
        if n not in self._nulls:
            if len(self._nulls) > 64:
                self._nulls.clear()
            self._nulls[n] = [pa.nulls(n, type=dtype) for _, dtype in self.fields]
        return self._nulls[n]


_LAYOUT: _Layout | None = None


def _layout() -> _Layout:
    """The layout of :func:`results_schema`, built once per schema object (a registry reload
    derives a new schema)."""
    global _LAYOUT
    schema = results_schema()
    if _LAYOUT is None or _LAYOUT.schema is not schema:
        _LAYOUT = _Layout(schema)
    return _LAYOUT


def _constant(value: Any, n: int, dtype: pa.DataType) -> pa.Array:
    """``value`` repeated ``n`` times: one scalar, repeated in C++ (not a Python list of n)."""
    return pa.repeat(pa.scalar(value, type=dtype), n)


def cell_table(
    sweep: str, cell_id: str, config: Mapping[str, Any], rows: Any, provenance: Mapping[str, Any]
) -> pa.Table:
    """The rows of one cell in the declared schema, ready to write.

    ``rows`` is what ``run_cell`` returned (a pandas DataFrame or an Arrow table with ``record``
    and metric columns); the sweep, the cell id, the flattened parameters and the provenance are
    added as constant columns; every other column is null. The full config and the provenance are
    also stored as JSON in the schema's key-value metadata. A column the schema does not declare
    is an error: results must keep one schema.

    Built column by column in the declared order: this runs once per cell on the workers, and a
    cell of ~50 ms should not spend a millisecond on bookkeeping.
    """
    schema = results_schema()
    layout = _layout()
    if isinstance(rows, pa.Table):
        given = {name: rows.column(name) for name in rows.column_names}
        n = rows.num_rows
    else:  # column by column: cheaper than Table.from_pandas for a few columns; NaN becomes null as there
        given = {name: rows[name].to_numpy() for name in rows.columns}
        n = len(rows)
    unknown = [name for name in given if name not in layout.names]
    if unknown:
        raise ValueError(
            f"cell {cell_id}: run_cell returned columns that the results schema does not declare: "
            f"{', '.join(sorted(unknown))}"
        )
    constants: dict[str, Any] = {
        "sweep": sweep, "cell_id": cell_id, "experiment": config.get("experiment"),
        **flatten_cell(config),
    }
    constants.update(provenance)  # a column run_cell returned (run_device) takes precedence
    columns = []
    for (name, dtype), null in zip(layout.fields, layout.nulls(n)):
        col = given.get(name)
        if col is not None:
            if isinstance(col, (pa.Array, pa.ChunkedArray)):
                columns.append(col if col.type == dtype else col.cast(dtype))
            else:
                columns.append(pa.array(col, type=dtype, from_pandas=True))
        elif constants.get(name) is not None:
            columns.append(_constant(constants[name], n, dtype))
        else:
            columns.append(null)
    meta = {
        KEY_CELL_ID: cell_id.encode(),
        KEY_SWEEP: sweep.encode(),
        KEY_CONFIG: json.dumps(config, sort_keys=True).encode(),
        KEY_PROVENANCE: json.dumps(dict(provenance), sort_keys=True, default=str).encode(),
    }
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(meta))


#: below this many rows a cell's columns are written plain: dictionary pages cost more than they save
DICTIONARY_ROWS = 64


def encode_cell(table: pa.Table) -> bytes:
    """A cell table as the bytes of one Parquet file.

    Workers encode (snappy: a tenth of zstd's cost on small tables) so the driver, which writes
    every file of the sweep, only moves bytes. Every page carries a CRC-32 checksum
    (``write_page_checksum``): a byte flipped inside a data page, which leaves the footer intact,
    is then caught by :meth:`SweepStore.verify_cell` instead of being decoded as another number.
    The file's key-value metadata holds the gradsweep keys; the serialised Arrow schema is not
    stored (``store_schema=False``): every declared type is a plain Parquet type that reads back
    as itself, and on a 132-column schema it was half of a small cell's file and a fifth of its
    encoding time.
    """
    sink = pa.BufferOutputStream()
    meta = table.schema.metadata or {}
    bare = table.replace_schema_metadata(None)
    with pq.ParquetWriter(
        sink, bare.schema, compression="snappy", store_schema=False, write_page_checksum=True,
        use_dictionary=table.num_rows >= DICTIONARY_ROWS,
    ) as writer:
        writer.write_table(bare)
        if meta:
            writer.add_key_value_metadata(meta)
    return sink.getvalue().to_pybytes()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A Thrift compact-protocol unsigned varint at ``pos``: (value, position after it)."""
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint runs past the end")


def footer_cell_id(footer: bytes) -> str | None:
    """The ``gradsweep.cell_id`` value in the raw bytes of a Parquet footer, without parsing it.

    A key-value pair of the footer is Thrift-compact encoded as ``0x18 len(key) key 0x18 len(value)
    value``; finding the key's bytes and reading the value after them costs microseconds where
    parsing a 130-column footer costs a millisecond, so ``plan`` and ``status`` can check every
    file's id. None when the key is not there.
    """
    marker = bytes([0x18, len(KEY_CELL_ID)]) + KEY_CELL_ID + b"\x18"
    at = footer.rfind(marker)
    if at < 0:
        return None
    try:
        length, start = _varint(footer, at + len(marker))
    except ValueError:
        return None
    value = footer[start : start + length]
    return value.decode("utf-8", "replace") if len(value) == length else None


@dataclass
class Scan:
    """What the folder holds: done cells, invalid cell files (id -> reason), failure records.

    ``verified`` says whether every data page of the done cells was read and its checksum checked
    (``run`` and ``resume``), or only each file's ends and the cell id in its footer (``plan``,
    ``status``).
    """

    done: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    verified: bool = False


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _parallel_map(fn: Any, items: Sequence[Any], threads: int) -> list[Any]:
    """``[fn(x) for x in items]`` on ``threads`` threads that share one iterator (pyarrow releases the GIL).

    Plain threads, not ``ThreadPoolExecutor.map``: that one queues a work item per element up
    front, and on 2,000 verified files its peak memory was 550 MB against 140 MB for this.
    """
    results: list[Any] = [None] * len(items)
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    counter = iter(range(len(items)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(threads, len(items)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results


class SweepStore:
    """The results folder ``<results>/<name>`` of one sweep, on any ``pyarrow.fs`` file system."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.location = os.fspath(folder)
        self.fs, self.path = _ensure_fs(folder)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.object_store = _is_object_store(self.fs)
        #: the bookkeeping folder (``<name>.gradsweep``); where every write of it goes
        self.meta = f"{self.path}{META_SUFFIX}"
        #: where folders made before the layout change kept it; read, and moved by :meth:`create`
        self.legacy_meta = f"{self.path}/{LEGACY_META_DIR}"
        self._lock_token: str | None = None
        self._failed: set[str] | None = None  # object stores: the cells with a failure record, read once

    @classmethod
    def for_sweep(cls, results: str | os.PathLike[str], name: str) -> "SweepStore":
        """The folder of sweep ``name`` under the results root ``results``."""
        return cls(join_location(results, name))

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def meta_location(self) -> str:
        """The bookkeeping folder as the user names it (a path, or a URI for object stores)."""
        return meta_location(self.location)

    def __repr__(self) -> str:
        return f"SweepStore({self.location!r})"

    # -- plumbing ----------------------------------------------------------------------------
    def _info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def exists(self) -> bool:
        return self._info(self.path).type == pafs.FileType.Directory

    def _write_bytes(self, path: str, data: bytes, *, what: str = "write") -> None:
        """Write ``data`` to ``path`` so that no reader ever sees a half file.

        Local file systems: to a temporary name in ``<name>.gradsweep/tmp/`` (never in the data
        folder, which Polars reads whole), then renamed into place. Object stores: one PUT of the
        final key (or one multipart upload, for large files), which S3 and GCS make visible only
        once complete. pyarrow cannot abort an upload (closing a failed stream completes it with
        the parts sent so far), so after a failed write the key is deleted. ``what`` names the
        action in the error.
        """
        if self.object_store:
            out = None
            try:
                out = self.fs.open_output_stream(path)
                out.write(data)
                out.close()
            except OSError as exc:
                if out is not None:
                    try:
                        out.close()
                    except OSError:
                        pass
                self._discard(path)
                raise self._error(what, path, exc) from exc
            return
        tmp = f"{self.meta}/tmp/{path.rsplit('/', 1)[1]}.{os.getpid()}.tmp"
        try:
            try:
                out = self.fs.open_output_stream(tmp)
            except FileNotFoundError:
                self.fs.create_dir(f"{self.meta}/tmp", recursive=True)
                out = self.fs.open_output_stream(tmp)
            with out:
                out.write(data)
            self.fs.move(tmp, path)
        except OSError as exc:
            self._discard(tmp)
            raise self._error(what, path, exc) from exc

    def _discard(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except OSError:
            pass

    def _error(self, what: str, path: str, exc: BaseException) -> StoreError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            reason = "no space left on the device"
        return StoreError(f"results: cannot {what} {path}: {reason}")

    def _read_meta(self, name: str) -> bytes | None:
        """A bookkeeping file (``spec.yaml``, ``lock``), from ``<name>.gradsweep`` or else the legacy place."""
        for base in (self.meta, self.legacy_meta):
            try:
                with self.fs.open_input_stream(f"{base}/{name}") as f:
                    return f.read()
            except (FileNotFoundError, OSError):
                continue
        return None

    def create(self) -> None:
        """Make the folder and its bookkeeping folder, moving a legacy ``_gradsweep/`` there first.

        A clear error if that is refused.
        """
        for sub in (self.path, self.meta, f"{self.meta}/failures", f"{self.meta}/quarantine", f"{self.meta}/specs"):
            try:
                self.fs.create_dir(sub, recursive=True)
            except OSError as exc:
                raise self._error("create the folder", sub, exc) from exc
        if self.local and not os.access(self.path, os.W_OK):
            raise StoreError(f"results: cannot write to {self.path}: permission denied")
        self._migrate_legacy()

    def _migrate_legacy(self) -> None:
        """Move ``<name>/_gradsweep/*`` to ``<name>.gradsweep/`` (files by file; nothing is deleted unmoved).

        Refused while a live driver of an older version holds the legacy lock. A crash half way
        leaves the rest in place, and readers look in both places, so the next run finishes it.
        Quarantined files get the ``.parquet.bad`` suffix on the way.
        """
        if self._info(self.legacy_meta).type != pafs.FileType.Directory:
            return
        raw = self._read_legacy("lock")
        holder = None if raw is None else _holder_of(raw)
        if holder is not None and "invalid" not in holder and holder["alive"] is not False:
            raise LockHeld(
                f"results: {self.location} is being written by another driver: pid {holder.get('pid')} "
                f"on host {holder.get('host')}, started {holder.get('started')} "
                f"(lock file {self.legacy_meta}/lock; remove it only if that driver is gone)"
            )
        infos = self.fs.get_file_info(pafs.FileSelector(self.legacy_meta, recursive=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(self.legacy_meta) + 1 :]
            if rel.startswith("quarantine/") and rel.endswith(SUFFIX):
                rel = rel[: -len(SUFFIX)] + QUARANTINE_SUFFIX
            dest = f"{self.meta}/{rel}"
            try:
                self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                if rel == "events.jsonl" and self._info(dest).type == pafs.FileType.File:
                    self._append_file(info.path, dest)
                else:
                    self.fs.move(info.path, dest)
            except OSError as exc:
                raise self._error("move the bookkeeping to", dest, exc) from exc
        try:
            self.fs.delete_dir(self.legacy_meta)
        except OSError:
            pass
        self.log_event("layout_migrated", source=f"{self.location}/{LEGACY_META_DIR}", to=self.meta_location)

    def _append_file(self, source: str, dest: str) -> None:
        """Put ``source``'s lines before ``dest``'s (events of earlier runs come first), then drop ``source``."""
        with self.fs.open_input_stream(source) as f:
            older = f.read()
        with self.fs.open_input_stream(dest) as f:
            newer = f.read()
        self._write_bytes(dest, older + newer, what="merge the events into")
        self._discard(source)

    def _read_legacy(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.legacy_meta}/{name}") as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def cell_path(self, cell_id: str) -> str:
        return f"{self.path}/{cell_id}{SUFFIX}"

    # -- cells -------------------------------------------------------------------------------
    def cell_files(self) -> dict[str, int]:
        """``{cell_id: size}`` of every cell file (one directory listing)."""
        out: dict[str, int] = {}
        if self.local:
            try:
                entries = os.scandir(self.path)
            except FileNotFoundError:
                return out
            with entries:
                for entry in entries:
                    name = entry.name
                    if name.endswith(SUFFIX) and name[0] not in "._" and entry.is_file():
                        out[name[: -len(SUFFIX)]] = entry.stat().st_size
            return out
        if not self.exists():
            return out
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False)):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(SUFFIX) and name[0] not in "._":
                out[name[: -len(SUFFIX)]] = info.size
        return out

    def _read_tail(self, path: str, size: int) -> tuple[bytes, bytes]:
        """The first 4 bytes and the last ``min(size, 64 KiB)`` bytes of a file (one read when small)."""
        n = min(size, _TAIL_BYTES)
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                tail = os.pread(fd, n, size - n)
                head = tail[:4] if n == size else os.pread(fd, 4, 0)
            finally:
                os.close(fd)
        else:
            with self.fs.open_input_file(path) as f:
                tail = f.read_at(n, size - n)
                head = tail[:4] if n == size else f.read_at(4, 0)
        return head, tail

    def quick_check(self, cell_id: str, size: int) -> str | None:
        """Why a cell file is not a complete Parquet file of this cell, judged from its ends; None if it looks whole.

        Cheap enough for ``plan`` on 100,000 files: the size, the magic bytes at both ends, a
        footer length that fits in the file, and the cell id in the footer's bytes (a file copied
        under another cell's name is caught here). The data pages are not read: see
        :meth:`verify_cell`.
        """
        if size < 12:
            return f"truncated ({size} bytes)"
        path = self.cell_path(cell_id)
        try:
            head, tail = self._read_tail(path, size)
        except OSError as exc:
            return f"unreadable ({exc})"
        if head != MAGIC:
            return "not a Parquet file (bad header)"
        if tail[-4:] != MAGIC:
            return "truncated (no Parquet footer)"
        footer_len = int.from_bytes(tail[-8:-4], "little")
        if footer_len > size - 12:
            return "truncated (footer longer than the file)"
        if footer_len + 8 <= len(tail):
            return self._id_problem(cell_id, footer_cell_id(tail[len(tail) - 8 - footer_len : -8]))
        return None  # a footer longer than 64 KiB: the full check parses it

    @staticmethod
    def _id_problem(cell_id: str, found: str | None) -> str | None:
        if found is None:
            return "not a gradsweep cell file (no gradsweep.cell_id in its footer)"
        if found != cell_id:
            return f"holds cell {found!r}, not {cell_id!r} (a file copied under the wrong name?)"
        return None

    def full_check(self, cell_id: str) -> str | None:
        """Why a cell file is not valid, reading its footer; None if valid.

        The footer must parse, describe at least the base columns, and name this cell.
        """
        path = self.cell_path(cell_id)
        try:
            with self.fs.open_input_file(path) as f:
                meta = pq.read_metadata(f)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad footer
            return f"unreadable footer ({type(exc).__name__}: {exc})"
        return self._meta_problem(cell_id, meta)

    def _meta_problem(self, cell_id: str, meta: pq.FileMetaData) -> str | None:
        names = set(meta.schema.names)
        if "cell_id" not in names or "record" not in names:
            return "not a gradsweep cell file (no cell_id/record columns)"
        kv = meta.metadata or {}
        found = kv.get(KEY_CELL_ID)
        return self._id_problem(cell_id, None if found is None else found.decode("utf-8", "replace"))

    def verify_cell(self, cell_id: str) -> str | None:
        """Why a cell file is not valid, reading every page and checking its checksum; None if valid.

        What ``run`` and ``resume`` use to decide that a cell is done: the footer must parse and
        name this cell, and every page must decode, with its CRC-32 matching where the file has
        page checksums (every file written since they were added; older files are still decoded
        in full, which catches a damaged compressed page but not every flipped number). The
        ``cell_id`` column must also hold only this cell.
        """
        path = self.cell_path(cell_id)
        try:
            with self.fs.open_input_file(path) as f:
                try:
                    reader = pq.ParquetFile(f, page_checksum_verification=True)
                except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad footer
                    return f"unreadable footer ({type(exc).__name__}: {_first_line(exc)})"
                problem = self._meta_problem(cell_id, reader.metadata)
                if problem:
                    return problem
                table = reader.read(use_threads=False)
        except Exception as exc:  # ArrowInvalid / OSError: a checksum mismatch, a page that does not decode
            return f"damaged data ({type(exc).__name__}: {_first_line(exc)})"
        ids = table.column("cell_id").unique().to_pylist()
        if ids and ids != [cell_id]:
            return f"holds rows of cell {ids[0]!r}, not {cell_id!r}"
        return None

    def scan(self, *, full: bool) -> Scan:
        """The done cells, the invalid cell files and the recorded failures.

        ``full=False`` (``plan``, ``status``) checks each file's ends and the cell id in its
        footer; ``full=True`` (``run``, ``resume``) reads every page of every file and checks its
        checksum (:meth:`verify_cell`), on a few threads.
        """
        out = Scan(verified=full)
        files = self.cell_files()

        def check(item: tuple[str, int]) -> str | None:
            cell_id, size = item
            reason = self.quick_check(cell_id, size)
            if reason is None and full:
                reason = self.verify_cell(cell_id)
            return reason

        items = sorted(files.items())
        # local: threads help only to decode pages; object stores: every check is a request, so many
        threads = 16 if self.object_store else (_threads() if full else 1)
        reasons = _parallel_map(check, items, threads)
        for (cell_id, _), reason in zip(items, reasons):
            if reason is None:
                out.done.add(cell_id)
            else:
                out.invalid[cell_id] = reason
        out.failed = set(self.failures()) - out.done
        return out

    def write_cell(self, cell_id: str, data: "pa.Table | bytes") -> None:
        """Write one cell (a table, or its Parquet bytes from :func:`encode_cell`) atomically.

        See :meth:`_write_bytes`. On any error (full disk, permission) nothing half-written is
        left under the cell's name, the finished files are untouched, and a :class:`StoreError`
        names the path.
        """
        if isinstance(data, pa.Table):
            data = encode_cell(data)
        if len(data) < 12 or data[:4] != MAGIC or data[-4:] != MAGIC:
            raise ValueError(f"cell {cell_id}: refusing to write bytes that are not a Parquet file")
        self._write_bytes(self.cell_path(cell_id), data, what="write the cell file")
        self.clear_failure(cell_id)

    def read_cell(self, cell_id: str) -> pa.Table:
        with self.fs.open_input_file(self.cell_path(cell_id)) as f:
            return pq.read_table(f)

    def cell_metadata(self, cell_id: str) -> dict[str, Any]:
        """The config and provenance stored in a cell file's footer."""
        with self.fs.open_input_file(self.cell_path(cell_id)) as f:
            kv = pq.read_schema(f).metadata or {}
        return {
            "config": json.loads(kv.get(KEY_CONFIG, b"null")),
            "provenance": json.loads(kv.get(KEY_PROVENANCE, b"null")),
        }

    def quarantine(self, cell_id: str, reason: str) -> str:
        """Move a bad cell file to ``<name>.gradsweep/quarantine/`` (never delete it); its new path.

        The new name ends in ``.parquet.bad``, so no ``*.parquet`` glob of the results reads it.
        """
        dest = f"{self.meta}/quarantine/{cell_id}.{_stamp()}{QUARANTINE_SUFFIX}"
        try:
            self.fs.create_dir(f"{self.meta}/quarantine", recursive=True)
            self.fs.move(self.cell_path(cell_id), dest)
        except OSError as exc:
            raise self._error("move aside the bad cell file", self.cell_path(cell_id), exc) from exc
        self.log_event("quarantined", cell_id=cell_id, reason=reason, to=dest)
        return dest

    # -- failures ----------------------------------------------------------------------------
    def failure_path(self, cell_id: str) -> str:
        return f"{self.meta}/failures/{cell_id}.json"

    @property
    def failures_location(self) -> str:
        """Where the failure records are, as the user names it (the legacy place until a run moves it)."""
        base, sep, query = bookkeeping_location(self.location).partition("?")
        return f"{base}/failures{sep}{query}"

    def record_failure(self, cell_id: str, record: Mapping[str, Any]) -> None:
        """Keep a cell's failure (error, traceback, attempts, host, time) until it succeeds.

        ``attempts`` counts the failed runs of this cell over all runs of the sweep.
        """
        previous = self.failures().get(cell_id, {})
        data = {"cell_id": cell_id, "time": _now(), **record}
        data["attempts"] = int(previous.get("attempts", 0)) + int(record.get("attempts", 1))
        self._write_bytes(self.failure_path(cell_id), json.dumps(data, indent=1, default=str).encode())
        if self._failed is not None:
            self._failed.add(cell_id)

    def failures(self) -> dict[str, dict[str, Any]]:
        """``{cell_id: failure record}`` of the cells whose last run failed (either layout)."""
        out: dict[str, dict[str, Any]] = {}
        for base in (self.legacy_meta, self.meta):  # the new place wins
            folder = f"{base}/failures"
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            except OSError:
                continue
            for info in infos:
                if info.type == pafs.FileType.File and info.base_name.endswith(".json") and info.base_name[0] != ".":
                    try:
                        with self.fs.open_input_stream(info.path) as f:
                            out[info.base_name[:-5]] = json.loads(f.read())
                    except (OSError, ValueError):
                        continue
        return out

    def clear_failure(self, cell_id: str) -> None:
        """Remove a cell's failure record (it succeeded).

        On object stores the records are listed once, not looked up per cell: a request per
        written cell would cost the driver minutes on 100,000 cells.
        """
        paths = (self.failure_path(cell_id), f"{self.legacy_meta}/failures/{cell_id}.json")
        if self.local:
            for path in paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            return
        if self._failed is None:
            self._failed = set(self.failures())
        if cell_id in self._failed:
            for path in paths:
                if self._info(path).type == pafs.FileType.File:
                    self._discard(path)
            self._failed.discard(cell_id)

    # -- the spec ----------------------------------------------------------------------------
    @property
    def spec_path(self) -> str:
        return f"{self.meta}/spec.yaml"

    def save_spec(self, text: str) -> None:
        """Keep the spec as run: ``spec.yaml`` (the last) and ``specs/<time>.yaml`` (every one)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self._write_bytes(self.spec_path, text.encode())
        self._write_bytes(f"{self.meta}/specs/{stamp}.yaml", text.encode())

    def read_spec(self) -> str | None:
        """The spec text last run into this folder (either layout), or None."""
        data = self._read_meta("spec.yaml")
        return None if data is None else data.decode()

    # -- the lock ----------------------------------------------------------------------------
    @property
    def lock_path(self) -> str:
        return f"{self.meta}/lock"

    def _read_lock(self) -> bytes | None:
        """The lock file's bytes (in ``<name>.gradsweep`` or else a legacy ``_gradsweep``); None
        when there is none."""
        return self._read_meta("lock")

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the lock (pid, host, started), None when nobody does.

        ``alive`` says whether the holder still runs: True or False on this host, None on another
        host (it cannot be checked from here). An empty or unreadable lock file (a driver that died
        while writing it, e.g. on a full disk) reads as ``{"invalid": reason, "alive": False}``.
        """
        raw = self._read_lock()
        return None if raw is None else _holder_of(raw)

    def acquire_lock(self) -> str | None:
        """Become the one driver of this sweep; a message when a stale lock was taken over.

        Raises :class:`LockHeld` naming the holder when another driver holds the lock and is alive
        (or runs on another host, where it cannot be checked). A lock whose holder is gone, or
        that is empty or unreadable (and not being written right now), is taken over with a
        message. The lock is created exclusively: on a local file system with ``O_EXCL`` (and a
        stale one is moved aside atomically, so two drivers taking over at once cannot both win), on
        S3 with a conditional PUT (``If-None-Match: *``, through boto3), so two drivers on two
        machines cannot both hold it; on other object stores it is check-then-write.
        """
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "token": os.urandom(8).hex()}
        text = json.dumps(me).encode()
        message = None
        for _ in range(8):
            if self._create_exclusive(self.lock_path, text):
                self._lock_token = me["token"]
                return message
            raw = self._read_lock()
            if raw is None:  # vanished between our tries
                time.sleep(0.05)
                continue
            holder = _holder_of(raw)
            if "invalid" in holder:
                if self._lock_age() < _LOCK_WRITE_GRACE:  # perhaps a driver is writing it right now
                    time.sleep(_LOCK_WRITE_GRACE / 4)
                    continue
                message = (
                    f"taking over the lock of {self.location}: the lock file {self.lock_path} is "
                    f"{holder['invalid']} (left by a driver that could not write it, e.g. on a full disk)"
                )
            elif holder["alive"] is False:
                message = (
                    f"taking over the lock of {self.location}: its holder, pid {holder['pid']} on "
                    f"{holder['host']} (started {holder.get('started')}), is no longer running"
                )
            else:
                where = "" if holder["alive"] else " (on another host: remove the lock only if that driver is gone)"
                raise LockHeld(
                    f"results: {self.location} is being written by another driver: pid {holder.get('pid')} "
                    f"on host {holder.get('host')}, started {holder.get('started')}{where} "
                    f"(lock file {self.lock_path}; remove it only if that driver is gone)"
                )
            if self._remove_stale_lock(raw):
                self.log_event("lock_taken_over", previous=holder)
        raise LockHeld(f"results: could not acquire the lock {self.lock_path}")

    def _lock_age(self) -> float:
        """Seconds since the lock file was last written (large when unknown)."""
        mtime = self._info(self.lock_path).mtime
        if mtime is None:
            return float("inf")
        return time.time() - mtime.timestamp()

    def _remove_stale_lock(self, stale: bytes) -> bool:
        """Remove the lock if it still holds ``stale``; False when another driver replaced it first.

        Locally the lock is first renamed to a private name (atomic), so only one of several
        drivers taking over gets it; one that moved a fresh lock by mistake puts it back.
        """
        if not self.local:
            self._discard(self.lock_path)
            return True
        parent, base = self.lock_path.rsplit("/", 1)
        aside = f"{parent}/.{base}.stale.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("take over the lock", self.lock_path, exc) from exc
        try:
            with open(aside, "rb") as f:
                if f.read() == stale:
                    return True
            try:  # a fresh lock of another driver: put it back (never over a newer one)
                os.link(aside, self.lock_path)
            except FileExistsError:
                pass
            return False
        finally:
            os.unlink(aside)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        if self.local:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._error("create the lock", path, exc) from exc
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as exc:  # a full disk: no empty lock may stay behind to block the sweep
                self._discard(path)
                raise self._error("create the lock", path, exc) from exc
            return True
        if self.fs.type_name == "s3":
            return _s3_put_if_absent(self.location, path, data)
        # other object stores: check, then write (two drivers starting in the same instant can race)
        if self._info(path).type != pafs.FileType.NotFound:
            return False
        self._write_bytes(path, data, what="create the lock")
        return True

    def release_lock(self) -> None:
        """Remove the lock if this store object holds it."""
        if self._lock_token is None:
            return
        holder = self.lock_holder()
        if holder and holder.get("token") == self._lock_token:
            self._discard(self.lock_path)
        self._lock_token = None

    def release_stale_lock(self, holder: Mapping[str, Any]) -> bool:
        """Remove the lock if it is still exactly ``holder``, a driver known to be gone (a cancelled
        job's, killed before it could release it); whether it was removed."""
        current = self.lock_holder()
        if not current or current.get("token") != holder.get("token"):
            return False
        self._discard(self.lock_path)
        self.log_event("lock_released", previous=dict(current), why="its driver was stopped")
        return True

    # -- events ------------------------------------------------------------------------------
    def log_event(self, event: str, **fields: Any) -> None:
        """Record one event (best effort: never fails a sweep).

        A line appended to ``events.jsonl``; on object stores, which cannot append, one small
        object ``events/<time>-<random>.json`` per event.
        """
        line = json.dumps({"time": _now(), "event": event, **fields}, default=str) + "\n"
        try:
            if self.local:
                with open(f"{self.meta}/events.jsonl", "a", encoding="utf-8") as f:
                    f.write(line)
            else:
                self._write_bytes(f"{self.meta}/events/{_stamp()}-{os.urandom(4).hex()}.json", line.encode())
        except (OSError, StoreError, NotImplementedError, pa.ArrowNotImplementedError):
            pass

    def events(self) -> list[dict[str, Any]]:
        """Every recorded event, oldest first (either layout)."""
        lines: list[str] = []
        for base in (self.legacy_meta, self.meta):
            try:
                with self.fs.open_input_stream(f"{base}/events.jsonl") as f:
                    lines += f.read().decode().splitlines()
            except (FileNotFoundError, OSError):
                pass
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{self.meta}/events", allow_not_found=True))
        except OSError:
            infos = []
        for info in sorted(infos, key=lambda i: i.base_name):
            if info.type == pafs.FileType.File:
                try:
                    with self.fs.open_input_stream(info.path) as f:
                        lines += f.read().decode().splitlines()
                except OSError:
                    continue
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _s3_put_if_absent(location: str, path: str, data: bytes) -> bool:
    """Create the S3 object ``bucket/key`` only if it does not exist; False if it does.

    pyarrow's S3 file system has no conditional write, so this goes through boto3 (``pip install
    gradsweep[s3]``), with the endpoint and credentials from the usual ``AWS_*`` variables, as
    pyarrow takes them, or from the location's ``endpoint_override`` / ``region`` / ``scheme``
    query. S3 answers 412 to a second ``If-None-Match: *`` PUT of a key, atomically.
    """
    from urllib.parse import parse_qs
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError as exc:
        raise StoreError(
            "results: a lock on S3 needs boto3 for its conditional create (pip install 'gradsweep[s3]')"
        ) from exc
    bucket, _, key = path.partition("/")
    query = {k: v[-1] for k, v in parse_qs(location.partition("?")[2]).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", region_name=query.get("region") or os.environ.get("AWS_DEFAULT_REGION"),
                          endpoint_url=endpoint or None)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or exc.response.get(
            "ResponseMetadata", {}
        ).get("HTTPStatusCode") in (409, 412):
            return False
        raise StoreError(f"results: cannot create the lock s3://{path}: {exc}") from exc
    except Exception as exc:  # botocore's connection and credential errors
        raise StoreError(f"results: cannot create the lock s3://{path}: {exc}") from exc
    return True


# -------------------------------------------------------------------------------------------------
# Reading a results location


@dataclass
class ResultsFiles:
    """The cell files under a results location (a sweep folder or a results root), local or not.

    ``paths`` maps a file's path in ``fs`` to its cell id (the name without ``.parquet``).
    Everything but cell files is left out: the ``<name>.gradsweep/`` and ``<name>.report/``
    siblings, a legacy ``_gradsweep/``, and names starting with ``_`` or ``.``.
    """

    location: str
    fs: pafs.FileSystem
    base: str
    paths: dict[str, str]

    def open(self, path: str) -> pa.NativeFile:
        """A random-access file to hand to ``pyarrow.parquet.ParquetFile``."""
        return self.fs.open_input_file(path)

    def sweep_folders(self) -> list[str]:
        """The sweep folders (locations, same scheme as :attr:`location`) that hold these files."""
        folders = sorted({p.rsplit("/", 1)[0] for p in self.paths})
        return [join_location(self.location, f[len(self.base) :].strip("/")) if f != self.base else self.location
                for f in folders]

    def __len__(self) -> int:
        return len(self.paths)


def _skipped_dir(name: str) -> bool:
    return name[:1] in ("_", ".") or name.endswith((META_SUFFIX, REPORT_SUFFIX))


def results_files(location: str | os.PathLike[str]) -> ResultsFiles:
    """List the cell files of a results location: ``results/x``, ``results``, ``s3://bucket/results/x``.

    The one public way into a results folder for readers outside the store (``gradsweep report``
    and the analysis): it works on any ``pyarrow.fs`` file system, so an ``s3://`` location is
    read in place. Raises :class:`StoreError` when the location is not a folder.
    """
    fs, base = _ensure_fs(location)
    text = os.fspath(location)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise StoreError(f"results: no such folder {text!r}")
    paths: dict[str, str] = {}
    if isinstance(fs, pafs.LocalFileSystem):
        stack = [base]
        while stack:  # os.scandir: no FileInfo objects for 100,000 files
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if entry.is_dir():
                        if not _skipped_dir(name):
                            stack.append(entry.path)
                    elif name.endswith(SUFFIX) and name[0] not in "._":
                        paths[entry.path] = name[: -len(SUFFIX)]
    else:
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type != pafs.FileType.File or not info.base_name.endswith(SUFFIX) or info.base_name[0] in "._":
                continue
            parts = info.path[len(base) :].strip("/").split("/")
            if any(_skipped_dir(part) for part in parts[:-1]):
                continue
            paths[info.path] = info.base_name[: -len(SUFFIX)]
    return ResultsFiles(location=text, fs=fs, base=base, paths=dict(sorted(paths.items())))


#: cell files read into one group before it is compacted into one chunk per column
READ_GROUP = 512


def _read_one(files: ResultsFiles, path: str, names: Sequence[str], schema: pa.Schema) -> pa.Table | str:
    """One cell file as a table of ``names`` in the declared types, or why it cannot be read."""
    cell_id = files.paths[path]
    try:
        with files.open(path) as f:
            reader = pq.ParquetFile(f)
            kv = reader.metadata.metadata or {}
            found = kv.get(KEY_CELL_ID)
            if found is not None and found.decode("utf-8", "replace") != cell_id:
                return f"{path}: holds cell {found.decode('utf-8', 'replace')!r}, not {cell_id!r}"
            present = set(reader.schema_arrow.names)
            table = reader.read(columns=[n for n in names if n in present], use_threads=False)
    except Exception as exc:  # ArrowInvalid, OSError: a damaged file is listed, not fatal
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{path}: {text}"
    arrays = []
    for name in names:
        dtype = schema.field(name).type
        if name in present:
            column = table.column(name)
            arrays.append(column if column.type == dtype else column.cast(dtype))
        else:  # a file of an older version, with fewer columns
            arrays.append(pa.nulls(table.num_rows, dtype))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in names]))


def _groups(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_results(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    schema: pa.Schema | None = None,
    errors: str = "warn",
) -> pa.Table:
    """Every finished cell under ``path`` (a sweep folder or a results root, local or ``s3://``) as one table.

    Reads with the declared schema (or ``schema``), so files written by older versions with
    fewer columns still read as one table (their missing columns are null). ``columns`` selects
    columns and ``filter`` (a ``pyarrow.compute`` expression, e.g. ``pc.field("record") ==
    "probe"``) selects rows; memory stays bounded by what is asked for: files are read in groups
    of :data:`READ_GROUP` on a few threads, and each group is filtered and compacted into one
    chunk per column before the next is read (one Arrow array per file and column was what made
    20,000 tiny cells take 8 GB).

    A file that cannot be read, or whose footer names another cell than its file name, is
    skipped; ``errors`` says what then happens: ``"warn"`` (a warning listing the files),
    ``"raise"`` (a :class:`StoreError` listing them) or ``"ignore"``.
    """
    if errors not in ("warn", "raise", "ignore"):
        raise ValueError(f"errors: expected 'warn', 'raise' or 'ignore', got {errors!r}")
    schema = schema or results_schema()
    names = list(columns) if columns is not None else list(schema.names)
    unknown = [n for n in names if n not in schema.names]
    if unknown:
        raise ValueError(f"columns: not in the results schema: {', '.join(unknown)}")
    # a filter may name columns not asked for: read those too (every column whose name appears in
    # the expression's text: a superset, since pyarrow does not list an expression's fields)
    read_names = names
    if filter is not None:
        text = str(filter)
        read_names = names + [n for n in schema.names if n not in names and n in text]
    out_schema = pa.schema([schema.field(n) for n in names])
    files = results_files(path)
    paths = list(files.paths)
    parts: list[pa.Table] = []
    bad: list[str] = []
    threads = 16 if _is_object_store(files.fs) else _threads()  # object stores: requests, not CPU
    for group in _groups(paths, READ_GROUP):
        tables = []
        for result in _parallel_map(lambda p: _read_one(files, p, read_names, schema), group, threads):
            (bad.append if isinstance(result, str) else tables.append)(result)
        if not tables:
            continue
        part = pa.concat_tables(tables)
        if filter is not None:
            part = part.filter(filter).select(names)
        parts.append(part.combine_chunks())
        del tables, part
    if bad and errors != "ignore":
        listing = "; ".join(bad[:20]) + (f"; and {len(bad) - 20} more" if len(bad) > 20 else "")
        message = f"results: skipped {len(bad)} unreadable or misnamed cell files under {files.location}: {listing}"
        if errors == "raise":
            raise StoreError(message)
        warnings.warn(message, stacklevel=2)
    if not parts:
        return out_schema.empty_table()
    return pa.concat_tables(parts)


# -------------------------------------------------------------------------------------------------
# One tidy table for a notebook

#: how a notebook's ``estimator`` label names each kind
KIND_LABELS = {
    "cdg": "CDG", "nes": "NES", "ste": "STE", "sr_ste": "sr-STE", "autograd": "autograd",
    "nes_max_point": "NES max point", "perturbed_ste": "perturbed STE", "random_ste": "random STE",
}


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load(results: str | os.PathLike[str], *, columns: Sequence[str] | None = None, filter: Any = None) -> Any:
    """A results folder (or root, local or ``s3://``) as one tidy pandas DataFrame, for a notebook.

    Every row of every cell (see :func:`read_results`), with the parameter columns that no row
    sets dropped, and an ``estimator`` column with a readable label of the cell's estimator:
    its kind and the parameters that vary among the cells of that kind (``CDG(epsilon=0.1)``,
    ``NES(samples=500, sigma=0.01)``, ``STE(variant=clipped)``). A ``train`` row's
    estimator-in-force (the metric column ``estimator``) is kept as ``estimator_in_force``.
    Group by ``estimator`` instead of ``estimator.epsilon``: every row has a label, where a
    parameter column is null for the kinds it does not apply to (and pandas' ``groupby`` drops
    null keys unless ``dropna=False``).
    """
    import pandas as pd

    table = read_results(results, columns=columns, filter=filter)
    frame = table.to_pandas()
    if "estimator" in frame.columns:
        frame = frame.rename(columns={"estimator": "estimator_in_force"})
    empty = [c for c in frame.columns if "." in c and frame[c].isna().all()]
    frame = frame.drop(columns=empty)
    if "estimator.kind" not in frame.columns or "cell_id" not in frame.columns:
        return frame
    params = [c for c in frame.columns if c.startswith("estimator.") and c != "estimator.kind"]
    cells = frame.drop_duplicates("cell_id")[["cell_id", "estimator.kind", *params]]
    labels: dict[str, str] = {}
    for kind, group in cells.groupby("estimator.kind", dropna=False, sort=False):
        set_params = [c for c in params if group[c].notna().any()]
        varying = [c for c in set_params if group[c].nunique(dropna=False) > 1]
        name = KIND_LABELS.get(kind, str(kind))
        for row in group.itertuples(index=False):
            values = dict(zip(group.columns, row))
            parts = [
                f"{c[len('estimator.'):]}={_value_text(values[c])}" for c in varying if not pd.isna(values[c])
            ]
            labels[values["cell_id"]] = f"{name}({', '.join(parts)})" if parts else name
    position = frame.columns.get_loc("estimator.kind")
    frame.insert(position, "estimator", frame["cell_id"].map(labels))
    return frame
