"""``gradsweep export mlflow RESULTS [--tracking-uri URI]``: each done cell as an MLflow run.

Researchers keep their runs in a tracker; this puts a sweep there without changing how it runs:

- one MLflow *experiment* per sweep (named after it, or ``--experiment``), one *run* per done cell;
- params: the cell's flat parameters (``problem.dim``, ``estimator.kind``, ``seed``, ...), the
  same names as the result columns;
- metrics: the cell's metrics on their natural axis. Rows with a ``step`` (descent, train,
  pretrain curves) are logged at that step. A probe's rows are logged per learning rate: step
  ``i`` is the i-th lr of the grid (ascending) and the metric ``lr`` holds its value, so a chart
  of ``loss_decrease`` against the metric ``lr`` is the lr curve; ``best_loss_decrease`` and
  ``best_lr`` summarise it. Batches are averaged. Other records are prefixed with their name
  (``cosine/all/cdg``, ``pretrain/loss``); ``cell_seconds`` is the cell's time;
- tags: ``gradsweep.sweep``, ``gradsweep.cell_id`` and the provenance (host, device, versions,
  ``mlflow.source.git.commit``).

Idempotent: a cell already exported (a finished run with its ``gradsweep.cell_id`` tag) is
skipped, so exporting twice creates no duplicate and exporting after ``resume`` adds only the new
cells; a run left unfinished by an interrupted export is replaced. The default tracking URI is
``$MLFLOW_TRACKING_URI`` or else a local ``./mlruns`` file store: no server, works offline
(MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true`` to use a file store; the export sets it for
itself, and ``mlflow ui --backend-store-uri ./mlruns`` needs it too). Any other URI
(``sqlite:///mlflow.db``, ``http://server:5000``) is used as given.

Reads the folder through :class:`gradsweep.store.SweepStore`; imports mlflow, never torch or Ray.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

from gradsweep.results_schema import flatten_cell

__all__ = ["ExportError", "ExportResult", "export_mlflow", "default_tracking_uri", "cell_metrics"]

CELL_TAG = "gradsweep.cell_id"
SWEEP_TAG = "gradsweep.sweep"
# log_batch's limits per call (MLflow's REST API): 1000 metrics, 100 params, 100 tags
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
_AXES = ("batch", "step", "epoch", "lr")
_TEXT = ("record", "layer", "reference", "estimator")


class ExportError(Exception):
    """The export cannot run: no such results folder, mlflow not installed, tracker unreachable."""


@dataclass
class ExportResult:
    """What an export did."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    cells: int
    logged: int
    already: int
    replaced: int

    def format(self) -> str:
        again = f", {self.replaced} unfinished runs replaced" if self.replaced else ""
        return (f"mlflow: experiment {self.experiment!r} (id {self.experiment_id}) at {self.tracking_uri}: "
                f"{self.logged} runs logged, {self.already} cells already there{again} ({self.cells} done cells)")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a file store ``./mlruns`` in the current folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()


def _uri(given: str | None) -> str:
    if not given:
        return default_tracking_uri()
    if "://" in given or given.startswith(("file:", "databricks")):
        return given
    return Path(given).expanduser().resolve().as_uri()  # a plain path: a local file store


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def _key(text: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return _BAD_KEY.sub("_", text)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def cell_metrics(rows: Any, experiment: str) -> list[tuple[str, float, int]]:
    """``[(name, value, step)]`` of one cell's rows (a pandas DataFrame in the results schema).

    See the module docstring for the axes. Null and non-finite values are left out (MLflow stores
    NaN, but a chart of them says nothing).
    """
    out: list[tuple[str, float, int]] = []
    if rows is None or len(rows) == 0:
        return out
    for record, part in rows.groupby("record", sort=True):
        prefix = "" if record == experiment else f"{record}/"
        values = [c for c in part.columns if c not in _AXES and c not in _TEXT and part[c].notna().any()
                  and part[c].dtype.kind in "fiu" and c in _METRIC_NAMES]
        labels = [c for c in ("layer", "reference") if c in part.columns and part[c].notna().any()]
        for label_values, group in (part.groupby(labels, sort=True) if labels else [((), part)]):
            label_values = label_values if isinstance(label_values, tuple) else (label_values,)
            name_prefix = prefix + "".join(f"{v}/" for v in label_values)
            if "step" in group.columns and group["step"].notna().any():
                series = group.groupby("step", sort=True)[values].mean()
                if "lr" in group.columns and group["lr"].notna().any():
                    series["lr"] = group.groupby("step", sort=True)["lr"].mean()
                for step, row in series.iterrows():
                    out += [(_key(name_prefix + c), float(v), int(step)) for c, v in row.items() if _finite(v)]
            elif "lr" in group.columns and group["lr"].notna().any():
                series = group.groupby("lr", sort=True)[values].mean()
                for i, (lr, row) in enumerate(series.iterrows()):
                    out.append((_key(name_prefix + "lr"), float(lr), i))
                    out += [(_key(name_prefix + c), float(v), i) for c, v in row.items() if _finite(v)]
                if "loss_decrease" in series.columns and series["loss_decrease"].notna().any():
                    best = series["loss_decrease"].idxmax()
                    out.append((_key(name_prefix + "best_loss_decrease"), float(series.loc[best, "loss_decrease"]), 0))
                    out.append((_key(name_prefix + "best_lr"), float(best), 0))
            else:
                means = group[values].mean()
                out += [(_key(name_prefix + c), float(v), 0) for c, v in means.items() if _finite(v)]
    return out


def _metric_names() -> frozenset[str]:
    from gradsweep.results_schema import METRIC_FIELDS

    return frozenset(f.name for f in METRIC_FIELDS if f.name not in _AXES and f.name not in _TEXT)


_METRIC_NAMES = _metric_names()


def _millis(stamp: Any) -> int | None:
    if not stamp:
        return None
    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _chunks(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _existing_runs(client: Any, experiment_id: str) -> dict[str, list[Any]]:
    """``{cell_id: [runs]}`` of the experiment's active runs that carry a cell id tag."""
    from mlflow.entities import ViewType

    out: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        for run in page:
            cell = run.data.tags.get(CELL_TAG)
            if cell:
                out.setdefault(cell, []).append(run)
        token = getattr(page, "token", None)
        if not token:
            return out


def export_mlflow(results: str | os.PathLike[str], *, tracking_uri: str | None = None,
                  experiment: str | None = None) -> ExportResult:
    """Log every done cell of ``results`` (a sweep's folder) not yet in the tracker; see the module doc."""
    from gradsweep.store import SweepStore

    store = SweepStore(results)
    if not store.exists():
        raise ExportError(f"results: no such folder {store.location!r} (expected RESULTS/NAME)")
    cells = sorted(store.cell_files())
    if not cells:
        raise ExportError(f"results: {store.location} holds no finished cell yet")
    try:
        import mlflow  # noqa: F401  (the package; the client below is what is used)
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ExportError(f"`gradsweep export mlflow` needs the mlflow package ({exc}); "
                          "install it with: pip install 'gradsweep[mlflow]'") from None

    uri = _uri(tracking_uri)
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in "maintenance mode" behind this switch; it is the
        # offline, serverless store asked for here (the user's own setting wins).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    name = experiment or store.name
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(
            name, tags={SWEEP_TAG: store.name, "gradsweep.results": store.location})
        existing = _existing_runs(client, experiment_id)
    except Exception as exc:  # an unreachable server, a store this mlflow cannot open
        raise ExportError(f"mlflow: cannot use the tracking store {uri}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    logged = already = replaced = 0
    for cell_id in cells:
        runs = existing.get(cell_id, [])
        if any(r.info.status == "FINISHED" for r in runs):
            already += 1
            continue
        for run in runs:  # an export interrupted mid-run: start this cell again
            client.delete_run(run.info.run_id)
            replaced += 1
        _log_cell(client, experiment_id, store, cell_id, Metric, Param)
        logged += 1
    return ExportResult(uri, name, experiment_id, len(cells), logged, already, replaced)


def _log_cell(client: Any, experiment_id: str, store: Any, cell_id: str, Metric: Any, Param: Any) -> None:
    meta = store.cell_metadata(cell_id)
    config: Mapping[str, Any] = meta.get("config") or {}
    prov: Mapping[str, Any] = meta.get("provenance") or {}
    rows = store.read_cell(cell_id).to_pandas()
    sweep = str(rows["sweep"].iloc[0]) if len(rows) else store.name
    end = _millis(prov.get("finished_at"))
    seconds = prov.get("cell_seconds")
    start = end - int(float(seconds) * 1000) if end is not None and _finite(seconds) else end
    estimator = (config.get("estimator") or {}).get("kind", "cell")
    tags = {
        SWEEP_TAG: sweep, CELL_TAG: cell_id, "gradsweep.experiment": str(config.get("experiment", "")),
        **{f"gradsweep.{k}": str(v) for k, v in prov.items() if v is not None and not isinstance(v, (dict, list))},
    }
    if prov.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(prov["git_commit"])
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{estimator}-{cell_id[:8]}")
    run_id = run.info.run_id
    params = {k: v for k, v in flatten_cell(config).items() if v is not None}
    if "seed" in config:
        params["seed"] = config["seed"]
    stamp = end or 0
    metrics = [Metric(k, v, stamp, step) for k, v, step in cell_metrics(rows, str(config.get("experiment", "")))]
    if _finite(seconds):
        metrics.append(Metric("cell_seconds", float(seconds), stamp, 0))
    param_list = [Param(k, str(v)) for k, v in params.items()]
    for chunk in _chunks(param_list, _MAX_PARAMS):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(metrics, _MAX_METRICS):
        client.log_batch(run_id, metrics=chunk)
    client.set_terminated(run_id, status="FINISHED", end_time=end)
