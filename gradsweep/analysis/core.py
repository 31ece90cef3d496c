"""Loading a results folder and naming what varies in it.

A results folder (``../shared/SPEC.md``) holds one Parquet file per finished cell, all written with
the declared schema of :mod:`gradsweep.results_schema`. :func:`load_results` reads it back with
``pyarrow.dataset`` and that schema (names starting with ``_`` or ``.`` are skipped, so
``_gradsweep/`` and temporary files are never read), drops the parameter columns that are null
everywhere, and gives a :class:`ResultsData`. The folder may also be on object storage
(``s3://bucket/results/name``): it is listed and read in place through the store's
:func:`gradsweep.store.results_files`, never copied.

- ``rows``: every row, with an integer ``config`` column (one id per distinct parameter setting
  other than the seed, so aggregating "over seeds" is a group-by on ``config``);
- ``cells``: one row per cell (its parameters, ``config`` and readable labels);
- what is missing: failed cells (``_gradsweep/failures/``), cells the spec expects that have no
  file yet, files that could not be read.

Labels name only what varies: a figure's legend says ``CDG(epsilon=0.1)`` when epsilon is what
differs between its curves, never the twenty parameters they share. Imports pyarrow, pandas and
the torch-free parts of gradsweep only.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gradsweep import catalog
from gradsweep.catalog import Group, Union
from gradsweep.results_schema import METRIC_FIELDS, introduced_columns, param_fields, results_schema
from gradsweep.store import ResultsFiles, StoreError, SweepStore, results_files, split_location

__all__ = [
    "Figure", "ResultsData", "ResultsError", "load_results", "format_value", "short_name",
    "describe", "varying", "KIND_NAMES",
]

ESTIMATOR_PREFIX = "estimator."
PRETRAIN_PREFIX = "problem.pretrain."

KIND_NAMES = {
    "cdg": "CDG",
    "nes": "NES",
    "ste": "STE",
    "sr_ste": "sr-STE",
    "autograd": "autograd",
    "nes_max_point": "NES max point",
    "perturbed_ste": "perturbed STE",
    "random_ste": "random STE",
}


class ResultsError(ValueError):
    """The folder cannot be reported: it does not exist, or holds no readable result."""


class _WrongCell(ValueError):
    """A cell file whose rows (or metadata) name another cell than its file name."""


#: the key under which the store records a cell file's id in its Parquet metadata
CELL_ID_KEY = b"gradsweep.cell_id"


@dataclass(frozen=True)
class Figure:
    """One figure a section drew: the PNG's path, a title, and a caption for the page.

    The caption says what was varied and how many cells and seeds the figure aggregates.
    ``plot``, where the section drew one, is the same figure for the page (hover, zoom, legend,
    filter); the PNG stays for papers.
    """

    path: Path
    title: str
    caption: str
    plot: dict | None = None  # the interactive version (interactive.Plot.to_dict), where drawn


@dataclass(frozen=True)
class Failure:
    """One entry of ``_gradsweep/failures/``: the cell and the first line of its error."""

    cell_id: str
    error: str


def format_value(value: Any) -> str:
    """A parameter value as a reader writes it: ``0.1``, ``1e-05``, ``500``, ``true``, ``null``."""
    if _is_null(value):
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_name(column: str) -> str:
    """A parameter column as a legend names it: ``estimator.epsilon`` -> ``epsilon``,
    ``problem.dim`` -> ``dim``, ``problem.pretrain.steps`` -> ``pretrain.steps``; other paths
    (``step.lr``, ``measure.reference.kind``) stay whole, since their group says what they are;
    ``problem.kind`` -> ``problem``, ``estimator.kind`` -> ``estimator``."""
    if column.endswith(".kind") and column.count(".") == 1:
        return column[: -len(".kind")]  # problem=toy_mlp, estimator=cdg
    for prefix in ("estimator.", "problem."):
        if column.startswith(prefix):
            return column[len(prefix):]
    return column


def describe(values: Mapping[str, Any], columns: Iterable[str], *, strip: str = "", skip_null: bool = False) -> str:
    """``"dim=8, activation=binary"`` for the given columns of one config (``strip`` removes a
    further prefix from the names, e.g. ``"pretrain."``; ``skip_null`` leaves out parameters
    that do not apply)."""
    parts = []
    for column in columns:
        if skip_null and _is_null(values[column]):
            continue
        name = short_name(column)
        if strip and name.startswith(strip):
            name = name[len(strip):]
        parts.append(f"{name}={format_value(values[column])}")
    return ", ".join(parts)


def describe_fixed(key: Mapping[str, Any], *, prefix: str = "") -> str:
    """A figure key's non-null values (of the columns starting with ``prefix``), for a caption's "Fixed:"."""
    return describe(key, [c for c in key if c.startswith(prefix)], skip_null=True)


def _is_null(value: Any) -> bool:
    """None, NaN or pandas.NA (whatever a null Parquet value became)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def varying(frame: pd.DataFrame, columns: Iterable[str], *, null_is_value: bool = True) -> list[str]:
    """The columns (in the given order) that take more than one value in ``frame``.

    By default null counts as a value (raw vs pretrained is a variation of
    ``problem.pretrain.steps``). ``null_is_value=False`` is for estimator parameters, which are
    null exactly where they do not apply (``threshold`` for a ``polynomial`` STE): the variant
    already tells those apart, so only differences between set values count.
    """
    return [
        c for c in columns if c in frame.columns and frame[c].nunique(dropna=not null_is_value) > 1
    ]


@dataclass
class ResultsData:
    """A results folder read back: rows, cells, the spec and what is missing.

    ``param_columns`` are the parameter columns (catalog paths, ``seed`` excluded) that are set
    for at least one cell; ``estimator_columns``, ``pretrain_columns`` and ``setting_columns``
    (everything else: the problem, the measurement, the step rule, dtype...) partition them.
    """

    folder: Path | str  # a local path, or the URI as given (``s3://bucket/results/name``)
    name: str
    rows: pd.DataFrame
    cells: pd.DataFrame
    param_columns: list[str]
    spec_text: str | None = None
    failures: list[Failure] = field(default_factory=list)
    expected_cell_ids: set[str] | None = None
    expected_note: str | None = None
    unreadable: list[str] = field(default_factory=list)
    folders: list[Path | str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    spec_texts: dict[str, str | None] = field(default_factory=dict)
    _records: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key: the sections and the summary share aggregations."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def compared(self) -> bool:
        """Several sweeps in one report (``sweep`` is then a parameter of every cell)."""
        return len(self.sweeps) > 1

    @property
    def line_columns(self) -> list[str]:
        """What tells two lines of one figure apart: the estimator config, and the sweep when
        several are compared on the same axes."""
        return (["sweep"] if self.compared else []) + self.estimator_columns

    def figure_columns(self, columns: Iterable[str]) -> list[str]:
        """``columns`` without ``sweep``: figures that compare sweeps put them on the same axes."""
        return [c for c in columns if c != "sweep"]

    @property
    def estimator_columns(self) -> list[str]:
        return [c for c in self.param_columns if c.startswith(ESTIMATOR_PREFIX)]

    @property
    def pretrain_columns(self) -> list[str]:
        return [c for c in self.param_columns if c.startswith(PRETRAIN_PREFIX)]

    @property
    def setting_columns(self) -> list[str]:
        return [
            c for c in self.param_columns
            if not c.startswith(ESTIMATOR_PREFIX) and not c.startswith(PRETRAIN_PREFIX)
        ]

    @cached_property
    def missing_cell_ids(self) -> list[str]:
        """Cells the spec expands to that have no file yet (empty when the spec is unknown)."""
        if self.expected_cell_ids is None:
            return []
        return sorted(self.expected_cell_ids - set(self.cells.index))

    def records(self, kind: str) -> pd.DataFrame:
        """The rows of one record kind (``probe``, ``cosine``, ``descent``, ...); empty if none."""
        if kind not in self._records:
            self._records[kind] = self.rows[self.rows["record"] == kind]
        return self._records[kind]

    def cells_with(self, kind: str) -> pd.DataFrame:
        """The cells that have rows of one record kind (computed once per kind)."""
        return self.memo(f"cells_with:{kind}", lambda: self.cells_of(self.records(kind)))

    def count(self, configs: Iterable[int], kind: str) -> str:
        """``"8 cells, 2 seeds"``: what the rows of ``kind`` of these configs aggregate."""
        cells = self.cells_with(kind)
        cells = cells[cells["config"].isin(list(configs))]
        return f"{len(cells)} cells, {cells['seed'].nunique()} seeds"

    def cells_of(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The cells that the rows of ``frame`` come from."""
        return self.cells.loc[self.cells.index.isin(frame["cell_id"].unique())]

    def configs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per ``config`` among the rows of ``frame``: its parameters and labels, plus
        ``cells`` and ``seeds`` (how many of each it aggregates)."""
        cells = self.cells_of(frame)
        counts = cells.groupby("config").agg(cells=("seed", "size"), seeds=("seed", "nunique"))
        first = cells.drop_duplicates("config").set_index("config").drop(columns="seed")
        return first.join(counts).sort_index()


def _palette_labels(cells: pd.DataFrame) -> None:
    """Add ``estimator_label`` and ``pretrain_label`` columns to the cells table, naming only
    the parameters that vary: among cells of one estimator kind for the estimator, among the
    pretrained cells for the pretraining."""
    est_cols = [c for c in cells.columns if c.startswith(ESTIMATOR_PREFIX) and c != "estimator.kind"]
    labels = pd.Series("", index=cells.index, dtype=object)
    if "estimator.kind" in cells.columns:
        for kind, group in cells.groupby("estimator.kind", dropna=False, sort=False):
            name = KIND_NAMES.get(kind, str(kind)) if not _is_null(kind) else "estimator"
            cols = varying(group, est_cols, null_is_value=False)
            for cell_id, row in group.iterrows():
                text = describe(row, cols, skip_null=True)
                labels[cell_id] = f"{name}({text})" if text else name
    if "sweep" in cells.columns:  # several sweeps compared: every label says which one
        labels = labels + " [" + cells["sweep"].astype(str) + "]"
    cells["estimator_label"] = labels
    pre_cols = [c for c in cells.columns if c.startswith(PRETRAIN_PREFIX)]
    pre = pd.Series("raw", index=cells.index, dtype=object)
    if pre_cols:
        pretrained = cells[pre_cols].notna().any(axis=1)
        cols = varying(cells[pretrained], pre_cols)
        for cell_id, row in cells[pretrained].iterrows():
            pre[cell_id] = f"pretrained({describe(row, cols, strip='pretrain.')})" if cols else "pretrained"
    cells["pretrain_label"] = pre


def _absent(table: pa.Table, name: str, dtype: pa.DataType) -> pa.Array:
    """The column of a file written before the parameter ``name`` existed: its ``introduced``
    value where the parameter's group is set (what those cells computed with), null elsewhere."""
    fill = introduced_columns().get(name)
    if fill is None or fill[1] not in table.column_names:
        return pa.nulls(table.num_rows, dtype)
    return pc.if_else(pc.is_valid(table[fill[1]]), pa.scalar(fill[0], dtype), pa.scalar(None, dtype))


def _read_cell_files(
    listing: ResultsFiles, files: list[str], base: list[str], kind_columns: list[str],
    params_for: Callable[[dict[str, str]], list[str]],
) -> tuple[pa.Table | None, list[str]]:
    """Every cell file as one table in the declared types, and the files that could not be read.

    Reading costs per file and column (rows hardly matter), and most of the ~100 parameter
    columns are null in any one cell. So each file is opened once: its ``*.kind`` columns are read
    first, then ``base`` plus only the parameters those kinds declare (``params_for``). Files
    are read on a few threads (pyarrow releases the GIL), through ``listing``'s file system: a
    local folder and an ``s3://`` one are read the same way, in place.
    """
    schema = results_schema()

    def one(path: str) -> pa.Table:
        with listing.open(path) as source:
            return read(source, listing.paths[path])

    def read(source: pa.NativeFile, stem: str) -> pa.Table:
        # Page checksums, where the writer stored them, catch bytes flipped inside a data page.
        reader = pq.ParquetFile(source, page_checksum_verification=True)
        present = set(reader.schema_arrow.names)
        claimed = (reader.schema_arrow.metadata or {}).get(CELL_ID_KEY)
        if claimed is not None and claimed.decode(errors="replace") != stem:
            raise _WrongCell(f"holds cell {claimed.decode(errors='replace')!r} (file metadata), not {stem!r}")
        kinds_table = reader.read(columns=[c for c in kind_columns if c in present], use_threads=False)
        kinds = {}
        for column in kinds_table.column_names:
            values = pc.drop_null(kinds_table[column])
            if len(values):
                kinds[column] = values[0].as_py()
        wanted = [*base, *kind_columns, *params_for(kinds)]
        table = reader.read(columns=[c for c in dict.fromkeys(wanted) if c in present], use_threads=False)
        if "cell_id" in present and table.num_rows:
            ids = pc.unique(table["cell_id"]).to_pylist()
            if ids != [stem]:  # a file copied under another cell's name must not count twice
                shown = ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")
                raise _WrongCell(f"holds rows of cell {shown}, not {stem!r} (copied under another cell's name?)")
        arrays = [
            table[name].cast(schema.field(name).type) if name in present else _absent(table, name, schema.field(name).type)
            for name in dict.fromkeys(wanted)
        ]
        return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in dict.fromkeys(wanted)]))

    def safe(path: str) -> pa.Table | str:
        try:
            return one(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped and listed, never fatal
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            return f"{path.rsplit('/', 1)[-1]}: {first}"

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(safe, files))
    tables = [r for r in results if isinstance(r, pa.Table)]
    bad = [r for r in results if isinstance(r, str)]
    if not tables:
        return None, bad
    # Files of different kinds carry different parameter columns: the union, nulls elsewhere.
    return pa.concat_tables(tables, promote_options="default"), bad


def _union_paths(node: Group | Union, prefix: str = "") -> list[str]:
    """Catalog paths of the kind-discriminated mappings (``problem``, ``estimator``, ...)."""
    if isinstance(node, Union):
        return [prefix]
    out = []
    for key, child in node.fields.items():
        if isinstance(child, (Group, Union)):
            out += _union_paths(child, f"{prefix}.{key}" if prefix else key)
    return out


def _present_paths(node: Group | Union, prefix: str, kinds: Mapping[str, set]) -> list[str]:
    """Parameter paths that can be set given the kinds present at each union path."""
    if isinstance(node, Union):
        out = [f"{prefix}.kind"]
        for kind in kinds.get(prefix, ()):
            out += _present_paths(node.kinds[kind], prefix, kinds)
        return out
    out = []
    for key, child in node.fields.items():
        path = f"{prefix}.{key}" if prefix else key
        out += _present_paths(child, path, kinds) if isinstance(child, (Group, Union)) else [path]
    return out


def _cell_top() -> Group:
    return Group({k: v for k, v in catalog.TOP.fields.items() if k not in catalog.NOT_IN_CELL})


def _is_uri(folder: str | os.PathLike) -> bool:
    """``s3://bucket/results/name`` (any ``pyarrow.fs`` URI), read in place; else a local path."""
    return "://" in os.fspath(folder)


def _folder_name(folder: Path | str) -> str:
    """The last part of a folder's path: ``name`` of ``results/name`` or ``s3://b/results/name?...``."""
    return split_location(folder)[1] if isinstance(folder, str) else folder.name


def _read_failures(store: SweepStore) -> list[Failure]:
    """The failure records of a folder (either bookkeeping layout, any file system); a record that
    cannot be parsed is still listed, so that a failed cell is never silently taken for missing."""
    records = store.failures()
    names = set(records)
    for base in (store.legacy_meta, store.meta):  # records failures() could not parse: listed, not hidden
        try:
            infos = store.fs.get_file_info(pafs.FileSelector(f"{base}/failures", allow_not_found=True))
        except OSError:
            continue
        names |= {
            i.base_name[: -len(".json")] for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(".json") and not i.base_name.startswith(".")
        }
    out = []
    for cell_id in sorted(names):
        try:
            error = str(records[cell_id].get("error", "")).strip().splitlines()
        except (KeyError, AttributeError):
            error = ["(unreadable failure record)"]
        out.append(Failure(cell_id, error[0] if error else ""))
    return out


def _expected_cells(spec_text: str | None, source: str) -> tuple[set[str] | None, str | None]:
    """The cell ids the spec as run (its stored text) expands to, or None and why not."""
    if spec_text is None:
        return None, "no _gradsweep/spec.yaml: cannot tell how many cells are expected"
    try:
        from gradsweep.spec import load_spec  # the spec layer is torch-free (docs/design.md)
    except ImportError as err:
        return None, f"the spec layer is not importable ({err}): expected cells unknown"
    try:  # a one-line text would be taken for a file name: the newline makes it text
        sweep = load_spec(spec_text if "\n" in spec_text else spec_text + "\n", source=source)
        return {cell.id for cell in sweep.iter_cells()}, None
    except Exception as err:  # noqa: BLE001 - any spec error only means "unknown", never a crash
        return None, f"the spec could not be expanded ({str(err).splitlines()[0]}): expected cells unknown"


@dataclass
class _Folder:
    """One results folder as read: its rows (None if no readable file) and what is missing."""

    folder: Path | str  # a local path, or the URI as given (s3://...)
    table: pa.Table | None
    unreadable: list[str]
    failures: list[Failure]
    spec_text: str | None
    expected: set[str] | None
    note: str | None

    @property
    def sweep(self) -> str:
        if self.table is not None:
            names = pc.unique(self.table["sweep"]).to_pylist()
            if len(names) == 1 and names[0]:
                return str(names[0])
        return _folder_name(self.folder)


def _read_folder(folder: Path | str) -> _Folder:
    """One results folder, local or on object storage, read in place through the store's listing."""
    if not _is_uri(folder) and not Path(folder).is_dir():
        raise ResultsError(f"results folder {str(folder)!r} does not exist (expected <results>/<name>/)")
    try:
        listing = results_files(folder)
    except (StoreError, OSError) as err:  # no such prefix, no credentials, no such bucket or endpoint
        text = (str(err).splitlines() or [type(err).__name__])[0].removeprefix("results: ")
        raise ResultsError(f"cannot read the results folder {str(folder)!r}: {text} (expected <results>/<name>/)") from None
    schema = results_schema()
    params = [f.name for f in param_fields() if f.name in schema.names]
    # the folder's own cell files (not those of folders below it), in name order
    files = [path for path in listing.paths if path.rsplit("/", 1)[0] == listing.base]
    unions = [u for u in _union_paths(_cell_top()) if f"{u}.kind" in schema.names]
    catalog_paths = set(params)

    @lru_cache(maxsize=None)
    def declared(kinds: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
        by_union = {column[: -len(".kind")]: {kind} for column, kind in kinds}
        try:
            wanted = set(_present_paths(_cell_top(), "", by_union))
        except KeyError:  # a kind this catalog does not know: read every parameter
            wanted = catalog_paths
        return tuple(p for p in params if p in wanted and p != "seed")

    metrics = [f.name for f in METRIC_FIELDS]
    table, unreadable = _read_cell_files(
        listing, files, ["sweep", "cell_id", "record", "seed", *metrics], [f"{u}.kind" for u in unions],
        lambda kinds: list(declared(tuple(sorted(kinds.items())))),
    )
    if table is not None and table.num_rows == 0:
        table = None
    store = SweepStore(folder)
    try:
        spec_text = store.read_spec()
    except UnicodeDecodeError:
        spec_text, expected, note = None, None, "the stored spec is not UTF-8 text: expected cells unknown"
    else:
        expected, note = _expected_cells(spec_text, store.spec_path)
    return _Folder(folder, table, unreadable, _read_failures(store), spec_text, expected, note)


def _sweep_labels(parts: Sequence[_Folder]) -> list[str]:
    """A distinct label per folder: the sweep name, or the folder path where two names clash
    (the same spec run on CPU and on GPU into two results roots)."""
    names = [part.sweep for part in parts]
    if len(set(names)) == len(names):
        return names
    if any(isinstance(part.folder, str) for part in parts):  # a URI among them: compare path texts
        texts = [_folder_text(part.folder) for part in parts]
        split = [text.split("/") for text in texts]
        common = 0
        while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
            common += 1
        labels = ["/".join(s[common:]) for s in split]
        return labels if len(set(labels)) == len(labels) else texts
    paths = [part.folder.resolve() for part in parts]
    common = Path(os.path.commonpath([str(p) for p in paths]))
    labels = [str(p.relative_to(common)) if p != common else p.name for p in paths]
    return labels if len(set(labels)) == len(labels) else [str(p) for p in paths]


def _folder_text(folder: Path | str) -> str:
    """A folder as one path text: a local one resolved, a URI without its query (endpoint, region)."""
    return folder.partition("?")[0].rstrip("/") if isinstance(folder, str) else str(folder.resolve())


def _relabel(table: pa.Table, label: str) -> pa.Table:
    """Rows of one of several folders: ``sweep`` is the folder's label, cell ids ``label/id``
    (the same cell run in two folders is two cells of the comparison)."""
    n = table.num_rows
    table = table.set_column(table.schema.get_field_index("sweep"), "sweep", pa.array([label] * n, pa.string()))
    ids = pc.binary_join_element_wise(pa.scalar(f"{label}/"), table["cell_id"], "")
    return table.set_column(table.schema.get_field_index("cell_id"), "cell_id", ids)


def load_results(folders: str | os.PathLike | Sequence[str | os.PathLike]) -> ResultsData:
    """Read a results folder (``<results>/<name>/``), or several to compare, for analysis.

    Several folders are one :class:`ResultsData` whose cells carry a ``sweep`` parameter (the
    sweep name, or the folder where names clash) and ids ``<sweep>/<cell_id>``: the same
    config in two sweeps stays two configs. Files that cannot be read, or that hold another
    cell's rows than their name says, are skipped and listed in ``unreadable``.
    A folder is a local path or a URI (``s3://bucket/results/name``, the ``AWS_*`` variables or
    the URI's query naming the endpoint), read in place.
    Raises :class:`ResultsError` when a folder does not exist or none holds a readable result.
    """
    given = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    paths = [os.fspath(f) if _is_uri(f) else Path(f) for f in given]  # a URI stays text: Path("s3://b") is "s3:/b"
    if not paths:
        raise ResultsError("no results folder given")
    parts = [_read_folder(path) for path in paths]
    multi = len(parts) > 1
    labels = _sweep_labels(parts)
    tables, unreadable, failures, expected, notes = [], [], [], set(), []
    for part, label in zip(parts, labels):
        prefix = f"{label}/" if multi else ""
        unreadable += [prefix + u for u in part.unreadable]
        failures += [Failure(prefix + f.cell_id, f.error) for f in part.failures]
        if part.expected is None:
            notes.append(f"{label}: {part.note}" if multi else part.note)
        elif expected is not None:
            expected |= {prefix + i for i in part.expected}
        if part.expected is None:
            expected = None
        if part.table is not None:
            tables.append(_relabel(part.table, label) if multi else part.table)
    if not tables:
        folder = parts[0].folder if not multi else ", ".join(str(p.folder) for p in parts)
        what = f"; {len(failures)} failed cells in _gradsweep/failures/" if failures else ""
        bad = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
        raise ResultsError(f"no results in {str(folder)!r}: no readable <cell_id>.parquet file{what}{bad}")
    table = pa.concat_tables(tables, promote_options="default") if multi else tables[0]
    schema = results_schema()
    params = [f.name for f in param_fields() if f.name in schema.names]
    read_params = [p for p in params if p in table.column_names and p != "seed"]
    if multi:  # the sweep is a parameter of the comparison: configs never pool across sweeps
        read_params.insert(0, "sweep")

    # Cells: the first row of each cell id (parameters are constant within a cell).
    cell_ids = pc.dictionary_encode(table["cell_id"].combine_chunks())
    codes = cell_ids.indices.to_numpy(zero_copy_only=False)
    _, first_rows = np.unique(codes, return_index=True)
    cells = table.select(["seed", *read_params]).take(pa.array(first_rows)).to_pandas()
    cells.index = pd.Index(cell_ids.dictionary.to_pylist(), name="cell_id")
    # Parameters no cell sets are dropped: labels and grouping stay to what the sweep is about.
    param_columns = [p for p in read_params if cells[p].notna().any()]
    cells = cells[["seed", *param_columns]]
    if param_columns:
        cells["config"] = cells.groupby(param_columns, dropna=False, sort=True).ngroup()
    else:
        cells["config"] = 0
    _palette_labels(cells)

    # Rows: metrics only; a row's parameters are its cell's (``config`` links them).
    metrics = [f.name for f in METRIC_FIELDS]
    rows = table.select(["record", "seed", *metrics]).to_pandas(strings_to_categorical=True)
    rows.insert(0, "cell_id", pd.Categorical.from_codes(codes, categories=cells.index))
    rows["config"] = cells["config"].to_numpy()[codes]

    return ResultsData(
        folder=parts[0].folder,
        name=" vs ".join(labels) if multi else labels[0],
        rows=rows,
        cells=cells,
        param_columns=param_columns,
        spec_text=parts[0].spec_text if not multi else None,
        failures=failures,
        expected_cell_ids=expected,
        expected_note="; ".join(n for n in notes if n) or None,
        unreadable=unreadable,
        folders=[p.folder for p in parts],
        sweeps=labels,
        spec_texts={label: part.spec_text for part, label in zip(parts, labels)},
    )


def group_keys(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Split ``frame`` by ``columns`` (null is a value), in sorted order: ``[(values, part)]``."""
    if not columns:
        return [({}, frame)] if len(frame) else []
    out = []
    for key, part in frame.groupby(list(columns), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append((dict(zip(columns, key)), part))
    return out
