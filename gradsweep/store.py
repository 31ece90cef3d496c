"""The results folder of one sweep: the only truth about which cells are done.

Layout (``docs/results.md``)::

    <results>/<name>/
        <cell_id>.parquet           one per finished cell, the declared schema
        .<cell_id>.parquet.tmp      being written; renamed into place when complete
        _gradsweep/spec.yaml        the spec as last run; specs/<time>.yaml every spec run
        _gradsweep/failures/<cell_id>.json   the last failure of a cell not yet done
        _gradsweep/quarantine/      corrupt or truncated cell files, moved aside, never deleted
        _gradsweep/lock             the driver writing this sweep (pid, host, started)
        _gradsweep/events.jsonl     what happened: runs started and ended, quarantines, take-overs

A cell is done exactly when its file exists and is valid. Only the driver writes here (workers
return their table to it), so the folder may live on any ``pyarrow.fs`` file system: a local
path, ``file:///...`` or ``s3://...``. Names that start with ``_`` or ``.`` are skipped by
``pyarrow.dataset``, so readers see only finished cell files.

Imports pyarrow only: no torch, no Ray.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gradsweep.results_schema import flatten_cell, results_schema

__all__ = [
    "StoreError", "LockHeld", "SweepStore", "Scan", "cell_table", "encode_cell", "read_results", "META_DIR",
]

META_DIR = "_gradsweep"
SUFFIX = ".parquet"
MAGIC = b"PAR1"
# metadata keys of a cell file's Arrow schema
KEY_CELL_ID = b"gradsweep.cell_id"
KEY_SWEEP = b"gradsweep.sweep"
KEY_CONFIG = b"gradsweep.config"
KEY_PROVENANCE = b"gradsweep.provenance"


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


class _Layout:
    """The declared schema's fields as plain tuples, and its all-null columns by length.

    ``cell_table`` runs once per cell, and iterating a ``pa.Schema`` builds a Field per step:
    this is done once (:func:`_layout`).
    """

    def __init__(self, schema: pa.Schema) -> None:
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


@functools.lru_cache(maxsize=1)
def _layout() -> _Layout:
    """The layout of :func:`results_schema` (one schema object for the process)."""
    return _Layout(results_schema())


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
    every file of the sweep, only moves bytes. The file's key-value metadata holds the gradsweep
    keys; the serialised Arrow schema is not stored (``store_schema=False``): every declared type
    is a plain Parquet type that reads back as itself, and on a 132-column schema it was half of
    a small cell's file and a fifth of its encoding time.
    """
    sink = pa.BufferOutputStream()
    meta = table.schema.metadata or {}
    bare = table.replace_schema_metadata(None)
    with pq.ParquetWriter(
        sink, bare.schema, compression="snappy", store_schema=False,
        use_dictionary=table.num_rows >= DICTIONARY_ROWS,
    ) as writer:
        writer.write_table(bare)
        if meta:
            writer.add_key_value_metadata(meta)
    return sink.getvalue().to_pybytes()


@dataclass
class Scan:
    """What the folder holds: done cells, invalid cell files (id -> reason), failure records."""

    done: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


class SweepStore:
    """The results folder ``<results>/<name>`` of one sweep, on any ``pyarrow.fs`` file system."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.location = os.fspath(folder)
        self.fs, self.path = _ensure_fs(folder)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.meta = f"{self.path}/{META_DIR}"
        self._lock_token: str | None = None

    @classmethod
    def for_sweep(cls, results: str | os.PathLike[str], name: str) -> "SweepStore":
        """The folder of sweep ``name`` under the results root ``results``."""
        root = os.fspath(results).rstrip("/")
        return cls(f"{root}/{name}")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        return f"SweepStore({self.location!r})"

    # -- plumbing ----------------------------------------------------------------------------
    def _info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def exists(self) -> bool:
        return self._info(self.path).type == pafs.FileType.Directory

    def _write_bytes(self, path: str, data: bytes, *, tmp: str | None = None, what: str = "write") -> None:
        """Write ``data`` to ``path`` through a temporary name, so readers never see a half file.

        ``tmp`` defaults to a hidden, per-process name beside ``path``; ``what`` names the action in
        the error.
        """
        if tmp is None:
            parent, base = path.rsplit("/", 1)
            tmp = f"{parent}/.{base}.{os.getpid()}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as out:
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

    def create(self) -> None:
        """Make the folder and its ``_gradsweep`` subfolders; a clear error if that is refused."""
        for sub in (self.path, self.meta, f"{self.meta}/failures", f"{self.meta}/quarantine", f"{self.meta}/specs"):
            try:
                self.fs.create_dir(sub, recursive=True)
            except OSError as exc:
                raise self._error("create the folder", sub, exc) from exc
        if self.local and not os.access(self.path, os.W_OK):
            raise StoreError(f"results: cannot write to {self.path}: permission denied")

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

    def quick_check(self, cell_id: str, size: int) -> str | None:
        """Why a cell file is not a complete Parquet file, judged from its two ends; None if it looks whole.

        Cheap enough for ``plan`` on 100,000 files: the size, the magic bytes at both ends and a
        footer length that fits in the file.
        """
        if size < 12:
            return f"truncated ({size} bytes)"
        path = self.cell_path(cell_id)
        try:
            if self.local:
                fd = os.open(path, os.O_RDONLY)
                try:
                    head = os.pread(fd, 4, 0)
                    tail = os.pread(fd, 8, size - 8)
                finally:
                    os.close(fd)
            else:
                with self.fs.open_input_file(path) as f:
                    head = f.read_at(4, 0)
                    tail = f.read_at(8, size - 8)
        except OSError as exc:
            return f"unreadable ({exc})"
        if head != MAGIC:
            return "not a Parquet file (bad header)"
        if tail[4:] != MAGIC:
            return "truncated (no Parquet footer)"
        if int.from_bytes(tail[:4], "little") > size - 12:
            return "truncated (footer longer than the file)"
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
        schema = meta.schema.to_arrow_schema()
        if "cell_id" not in schema.names or "record" not in schema.names:
            return "not a gradsweep cell file (no cell_id/record columns)"
        kv = schema.metadata or {}
        if kv.get(KEY_CELL_ID, cell_id.encode()) != cell_id.encode():
            return f"holds cell {kv[KEY_CELL_ID].decode()!r}, not {cell_id!r}"
        return None

    def scan(self, *, full: bool) -> Scan:
        """The done cells, the invalid cell files and the recorded failures.

        ``full=False`` (``plan``) checks the ends of each file; ``full=True`` (run, resume) also
        parses each footer.
        """
        out = Scan()
        for cell_id, size in self.cell_files().items():
            reason = self.quick_check(cell_id, size)
            if reason is None and full:
                reason = self.full_check(cell_id)
            if reason is None:
                out.done.add(cell_id)
            else:
                out.invalid[cell_id] = reason
        out.failed = set(self.failures()) - out.done
        return out

    def write_cell(self, cell_id: str, data: "pa.Table | bytes") -> None:
        """Write one cell (a table, or its Parquet bytes from :func:`encode_cell`) atomically.

        The bytes go to ``.<cell_id>.parquet.tmp``, which is then renamed into place. On any
        error (full disk, permission) the temporary file is removed, the finished files are
        untouched, and a :class:`StoreError` names the path.
        """
        if isinstance(data, pa.Table):
            data = encode_cell(data)
        if len(data) < 12 or data[:4] != MAGIC or data[-4:] != MAGIC:
            raise ValueError(f"cell {cell_id}: refusing to write bytes that are not a Parquet file")
        self._write_bytes(
            self.cell_path(cell_id), data, tmp=f"{self.path}/.{cell_id}{SUFFIX}.tmp", what="write the cell file"
        )
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
        """Move a bad cell file into ``_gradsweep/quarantine/`` (never delete it); its new path."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        dest = f"{self.meta}/quarantine/{cell_id}.{stamp}{SUFFIX}"
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

    def record_failure(self, cell_id: str, record: Mapping[str, Any]) -> None:
        """Keep a cell's failure (error, traceback, attempts, host, time) until it succeeds.

        ``attempts`` counts the failed runs of this cell over all runs of the sweep.
        """
        previous = self.failures().get(cell_id, {})
        data = {"cell_id": cell_id, "time": _now(), **record}
        data["attempts"] = int(previous.get("attempts", 0)) + int(record.get("attempts", 1))
        self._write_bytes(self.failure_path(cell_id), json.dumps(data, indent=1, default=str).encode())

    def failures(self) -> dict[str, dict[str, Any]]:
        """``{cell_id: failure record}`` of the cells whose last run failed."""
        folder = f"{self.meta}/failures"
        out: dict[str, dict[str, Any]] = {}
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            return out
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name.endswith(".json") and info.base_name[0] != ".":
                try:
                    with self.fs.open_input_stream(info.path) as f:
                        out[info.base_name[:-5]] = json.loads(f.read())
                except (OSError, ValueError):
                    continue
        return out

    def clear_failure(self, cell_id: str) -> None:
        path = self.failure_path(cell_id)
        if self.local:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        elif self._info(path).type == pafs.FileType.File:
            self._discard(path)

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
        """The spec text last run into this folder, or None."""
        try:
            with self.fs.open_input_stream(self.spec_path) as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    # -- the lock ----------------------------------------------------------------------------
    @property
    def lock_path(self) -> str:
        return f"{self.meta}/lock"

    def lock_holder(self) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.lock_path) as f:
                return json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def acquire_lock(self) -> str | None:
        """Become the one driver of this sweep; a message when a stale lock was taken over.

        Raises :class:`LockHeld` naming the holder when another driver holds the lock and is alive
        (or runs on another host, where it cannot be checked). On a local file system the lock is
        created exclusively (``O_EXCL``); on object stores it is best effort.
        """
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "token": os.urandom(8).hex()}
        text = json.dumps(me).encode()
        message = None
        for _ in range(3):
            if self._create_exclusive(self.lock_path, text):
                self._lock_token = me["token"]
                return message
            holder = self.lock_holder()
            if holder is None:  # vanished or half written between our tries
                time.sleep(0.05)
                continue
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                message = (
                    f"taking over the lock of {self.location}: its holder, pid {holder['pid']} on "
                    f"{holder['host']} (started {holder.get('started')}), is no longer running"
                )
                self._discard(self.lock_path)
                self.log_event("lock_taken_over", previous=holder)
                continue
            raise LockHeld(
                f"results: {self.location} is being written by another driver: pid {holder.get('pid')} "
                f"on host {holder.get('host')}, started {holder.get('started')} "
                f"(lock file {self.lock_path}; remove it only if that driver is gone)"
            )
        raise LockHeld(f"results: could not acquire the lock {self.lock_path}")

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        if self.local:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._error("create the lock", path, exc) from exc
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self._info(path).type != pafs.FileType.NotFound:
            return False
        self._write_bytes(path, data)
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
        """Append one line to ``_gradsweep/events.jsonl`` (best effort: never fails a sweep)."""
        line = json.dumps({"time": _now(), "event": event, **fields}, default=str) + "\n"
        path = f"{self.meta}/events.jsonl"
        try:
            if self.local:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(line)
            else:
                with self.fs.open_append_stream(path) as f:
                    f.write(line.encode())
        except (OSError, NotImplementedError, pa.ArrowNotImplementedError):
            pass

    def events(self) -> list[dict[str, Any]]:
        try:
            with self.fs.open_input_stream(f"{self.meta}/events.jsonl") as f:
                text = f.read().decode()
        except (FileNotFoundError, OSError):
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_results(path: str | os.PathLike[str], *, schema: pa.Schema | None = None) -> pa.Table:
    """Every finished cell under ``path`` (a sweep folder or a results root) as one table.

    Reads with ``pyarrow.dataset`` and the declared schema (or ``schema``), so files written by
    older versions with fewer columns still read as one table (their missing columns are null).
    Only ``*.parquet`` files count; names under ``_`` or ``.`` (``_gradsweep/``, the
    quarantine, temporary files) are skipped, as ``pyarrow.dataset`` does.
    """
    fs, base = _ensure_fs(path)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise StoreError(f"results: no such folder {os.fspath(path)!r}")
    files = sorted(
        info.path
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if info.type == pafs.FileType.File and info.base_name.endswith(SUFFIX)
        and not any(part[:1] in ("_", ".") for part in info.path[len(base):].split("/") if part)
    )
    dataset = ds.dataset(files, format="parquet", filesystem=fs, schema=schema or results_schema())
    return dataset.to_table()
