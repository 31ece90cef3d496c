"""Plan, run and resume a sweep against its results folder.

The folder is the only truth: a cell is done when its file is there and valid, so ``run`` after
an edit of the spec, after a crash or after Ctrl-C computes exactly the cells that are missing.

- :func:`plan` compares a sweep with its folder (done, failed, pending, cells added since the
  stored spec, cell files the spec no longer has) and estimates the cost. It imports neither torch
  nor Ray and checks cell files only by their two ends, so it stays fast on 100,000 files.
- :func:`run` takes the folder's lock, stores the spec, moves corrupt cell files to quarantine,
  hands the missing cells to an executor and writes each outcome as it arrives.
- :func:`resume` runs the spec stored in a folder.
"""

from __future__ import annotations

import math
import os
from array import array
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Mapping, Sequence

from gradsweep.spec.expand import _gc_off
from gradsweep.spec.errors import Issue, SpecError
from gradsweep.store import StoreError, SweepStore
from gradsweep.views import failed_cell_params, format_params

__all__ = [
    "Plan", "RunResult", "Status", "plan", "run", "resume", "status", "load_stored_sweep", "cell_cost",
    "cell_estimate", "CellEstimate", "estimate_seconds",
]

# The cost model's units, measured on a 2-core CPU (see docs/design.md, "What plan estimates"):
# floating-point operations of the cells' loss evaluations per second of one core, and the fixed
# wall time of a cell beyond its arithmetic (building the problem, the table, the Parquet file).
_FLOPS_PER_SECOND = 2e9
_CELL_OVERHEAD_SECONDS = 0.05
#: the one-off cost of a run before its first cell: starting Ray and importing torch in workers
STARTUP_SECONDS = 12.0


# ---------------------------------------------------------------------------------------------
# Cost model: every fact comes from the kinds' declarations (gradsweep.declare)


@dataclass(frozen=True)
class CellEstimate:
    """What ``plan`` knows of a cell before running it: its size in floating-point operations
    (loss evaluations x the cost of one) and its peak memory in bytes (roughly)."""

    flops: float
    memory_bytes: float


def cell_estimate(config: Mapping[str, Any]) -> CellEstimate:
    """Size and memory of one canonical cell, from its kinds' declared cost models.

    Raises ``ValueError`` naming a ``params:`` selector that selects no layer of the problem
    (``linear:9`` of a 3-layer toy): refused before anything runs.
    """
    from gradsweep.declare import selected_sizes
    from gradsweep.registry import registry

    reg = registry()
    problem_cfg, estimator_cfg = config["problem"], config["estimator"]
    pkind = reg.kind("problem", problem_cfg["kind"])
    if pkind.cost is None:  # a plugin problem that declares no cost: count one unit per evaluation
        from gradsweep.declare import ProblemCost

        pcost = ProblemCost(eval_flops=1.0, params=1)
    else:
        pcost = pkind.cost(problem_cfg)
    coords = float(sum(selected_sizes(pcost, config.get("params", "all"))))
    ekind = reg.kind("estimator", estimator_cfg["kind"])
    evaluations = float(ekind.cost(estimator_cfg, coords)) if ekind.cost else 3.0
    xkind = reg.kind("experiment", config.get("experiment", "probe"))
    flops = xkind.cost(config, pcost, evaluations) if xkind.cost else evaluations * pcost.eval_flops
    return CellEstimate(flops=max(flops + pcost.pretrain_flops, 1.0), memory_bytes=pcost.memory_bytes)


def cell_cost(config: Mapping[str, Any]) -> float:
    """A rough size of one cell in floating-point operations (see :func:`cell_estimate`).

    :func:`plan` turns it into seconds with :data:`_FLOPS_PER_SECOND`, or calibrates it against
    the measured ``cell_seconds`` of done cells when there are any. A loose config (missing keys)
    is completed by the spec layer first.
    """
    from gradsweep.spec import canonical_cell

    return cell_estimate(canonical_cell(config)).flops


def estimate_seconds(cells: Any) -> float:
    """Seconds of CPU time the cells are estimated to take, before any was measured.

    Calls :func:`cell_cost` once per distinct (problem, estimator, measure, step) object: cells of
    one grid share those, so this is fast on a whole sweep. Includes the fixed cost per cell.
    """
    memo: dict[tuple, float] = {}
    total = 0.0
    count = 0
    for cell in cells:
        cfg = cell.config
        key = (id(cfg.get("problem")), id(cfg.get("estimator")), id(cfg.get("measure")), id(cfg.get("step")))
        cost = memo.get(key)
        if cost is None:
            cost = memo[key] = cell_cost(cfg)
        total += cost
        count += 1
    return total / _FLOPS_PER_SECOND + count * _CELL_OVERHEAD_SECONDS


def _kinds(config: Mapping[str, Any]) -> tuple[str, str]:
    return str(config.get("problem", {}).get("kind")), str(config.get("estimator", {}).get("kind"))


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass
class Plan:
    """A sweep compared with its results folder. Counts are of cells; ids are kept for ``run``."""

    sweep: str
    folder: str
    total: int
    done: set[str]
    failed: set[str]
    todo_count: int  # cells not done (failed ones included)
    invalid: dict[str, str]
    dropped: set[str]
    added: int | None
    by_kind: dict[tuple[str, str], Counter]
    estimate_seconds: float
    estimate_source: str
    peak_memory_bytes: float = 0.0
    verified: bool = False  # every data page of the done cells read and its checksum checked
    #: one config per group of cells that share their problem, estimator, measure and step (they
    #: differ in the seed), with the group's size: what is judged once per group
    groups: list[tuple[dict[str, Any], int]] = field(default_factory=list)

    @property
    def checked(self) -> str:
        """How the done cells were checked, for the output: ``plan`` and ``status`` must say what they skipped."""
        if self.verified:
            return "  cell files verified: every data page read and its checksum checked"
        return (
            "  cell files checked by their ends and the cell id in their footers; data pages not "
            "verified (run and resume verify them)"
        )

    @property
    def pending(self) -> int:
        """Cells never run (or whose file was lost), failures not counted."""
        return self.todo_count - len(self.failed)

    def format(self) -> str:
        """The plan as the text ``gradsweep plan`` prints."""
        lines = [
            f"sweep {self.sweep}: {self.total} cells -> {self.folder}",
            f"  done {len(self.done)}, failed {len(self.failed)}, pending {self.pending}"
            + (f" (of which {len(self.invalid)} cell files are corrupt and will be re-run)" if self.invalid else ""),
        ]
        if self.added is not None:
            lines.append(f"  since the stored spec: {self.added} cells added")
        if self.dropped:
            lines.append(f"  dropped: {len(self.dropped)} cell files in the folder are not in this spec (kept)")
        if self.done or self.invalid:
            lines.append(self.checked)
        lines.append(f"  {'problem':<16}{'estimator':<16}{'cells':>9}{'done':>9}{'failed':>9}{'pending':>9}")
        for (pkind, ekind), c in sorted(self.by_kind.items()):
            lines.append(
                f"  {pkind:<16}{ekind:<16}{c['total']:>9}{c['done']:>9}{c['failed']:>9}{c['pending']:>9}"
            )
        lines.append(
            f"  estimated cost of the pending cells: {_duration(self.estimate_seconds)} of CPU time "
            f"({self.estimate_source})"
        )
        if self.pending or self.failed:
            lines.append(f"  plus about {_duration(STARTUP_SECONDS)} once to start Ray and import torch in the workers")
        if self.peak_memory_bytes:
            lines.append(f"  estimated peak memory of one cell: {_memory(self.peak_memory_bytes)} "
                         "(data and activations; a worker process adds ~0.5 GB)")
        return "\n".join(lines)


def _memory(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s" if seconds else "<1s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _rate(cells_per_second: float) -> str:
    """Cells per second, readable from 1 cell a day to thousands a second."""
    if cells_per_second >= 10:
        return f"{cells_per_second:.0f} cells/s"
    if cells_per_second >= 0.1 or cells_per_second == 0:
        return f"{cells_per_second:.1f} cells/s"
    return f"{cells_per_second * 3600:.1f} cells/h"


def _calibration(store: SweepStore, done: Sequence[str], sample: int = 32) -> float | None:
    """Seconds per unit of :func:`cell_cost`, from the footers of a sample of done cells."""
    ids = list(done)
    if not ids:
        return None
    rng = random.Random(0)  # which files to sample; not a draw of the science
    seconds = cost = 0.0
    for cell_id in rng.sample(ids, min(sample, len(ids))):
        try:
            meta = store.cell_metadata(cell_id)
            seconds += float(meta["provenance"]["cell_seconds"])
            cost += cell_cost(meta["config"])
        except Exception:  # an unreadable sample is skipped; the run's full check handles it
            continue
    return seconds / cost if cost > 0 and seconds > 0 else None


def _added(store: SweepStore, in_spec: Any) -> int | None:
    """How many cells of ``in_spec`` (a packed id array) the stored spec does not have; None if unreadable."""
    import numpy as np

    text = store.read_spec()
    if text is None:
        return None
    try:
        stored = _packed_ids(_sweep_from_text(text, store.spec_path).iter_cells())
    except Exception:  # a stored spec this version cannot read: no "added" count
        return None
    return int(np.count_nonzero(~np.isin(in_spec, stored)))


def _packed_ids(cells: Any) -> Any:
    """Cell ids as one uint64 array (8 bytes a cell, not ~70 for a str in a set)."""
    import numpy as np

    return np.fromiter((int(c.id, 16) for c in cells), dtype=np.uint64)


def plan(sweep: Any, results: str | os.PathLike[str], *, full: bool = False) -> Plan:
    """Compare ``sweep`` (a ``gradsweep.spec.Sweep``) with ``<results>/<sweep.name>``. Runs nothing.

    ``full=True`` reads every page of every cell file and checks its checksum (as ``run`` does)
    instead of checking each file's ends and the cell id in its footer. The cells are walked once,
    lazily: memory grows with the done and failed cells, not the sweep. A ``params:`` selector
    that selects no layer of its problem is a :class:`SpecError`.
    """
    store = SweepStore.for_sweep(results, sweep.name)
    scan = store.scan(full=full)
    known_done, known_failed = scan.done, scan.failed
    done: set[str] = set()
    failed: set[str] = set()
    total = todo = 0
    by_kind: dict[tuple[str, str], Counter] = {}
    total_cost = 0.0
    peak_memory = 0.0
    stored_text = store.read_spec()
    keep_ids = stored_text is not None and stored_text != sweep.source_text
    ids = array("Q")  # the ids as 64-bit numbers, only when "added" must be counted
    # Cells of one grid share their nested mappings (only the seed differs), so kinds and cost are
    # computed once per distinct (problem, estimator, measure, step) object, and counts are kept
    # per such group ([total, done, failed, cost, kinds]) and summed per kind at the end: the loop
    # below runs ten million times for the largest sweeps.
    memo: dict[tuple, list] = {}
    known_failed_any = bool(known_failed)
    with _gc_off():  # millions of acyclic objects come and go: the cyclic collector would rescan them
        for cid, cfg, _ in sweep.iter_cells():  # each cell once: the expansion makes no repeats
            if keep_ids:
                ids.append(int(cid, 16))
            get = cfg.get
            key = (id(get("problem")), id(get("estimator")), id(get("measure")), id(get("step")))
            entry = memo.get(key)
            if entry is None:
                try:
                    estimate = cell_estimate(cfg)
                except ValueError as exc:
                    message = f"{exc} (problem {cfg['problem']['kind']})".removeprefix("params: ")
                    raise SpecError([Issue("params", message)], source=str(sweep.path or sweep.name)) from None
                peak_memory = max(peak_memory, estimate.memory_bytes)
                entry = memo[key] = [0, 0, 0, estimate.flops, _kinds(cfg), cfg]
            entry[0] += 1
            if cid in known_done:
                done.add(cid)
                entry[1] += 1
            elif known_failed_any and cid in known_failed:
                failed.add(cid)
                entry[2] += 1
    for n, n_done, n_failed, cost, kinds, _ in memo.values():
        counts = by_kind.get(kinds)
        if counts is None:
            counts = by_kind[kinds] = Counter()
        counts["total"] += n
        counts["done"] += n_done
        counts["failed"] += n_failed
        counts["pending"] += n - n_done - n_failed
        total += n
        todo += n - n_done
        total_cost += (n - n_done) * cost
    per_unit = _calibration(store, sorted(done)) if done else None
    if per_unit is None:
        estimate_s = total_cost / _FLOPS_PER_SECOND + todo * _CELL_OVERHEAD_SECONDS
        source = (f"rough: the cells' loss evaluations at {_FLOPS_PER_SECOND / 1e9:g} GFLOP/s per CPU plus "
                  f"{_CELL_OVERHEAD_SECONDS * 1000:g} ms per cell, measured on a 2-core CPU")
    else:
        estimate_s = total_cost * per_unit
        source = "the cells' sizes, calibrated on this folder's measured cell_seconds"
    if stored_text is None:
        added = None
    elif not keep_ids:
        added = 0
    else:
        import numpy as np

        added = _added(store, np.frombuffer(ids, dtype=np.uint64))
    return Plan(
        sweep=sweep.name, folder=store.location, total=total, done=done, failed=failed,
        todo_count=todo, invalid={k: v for k, v in scan.invalid.items()}, dropped=(known_done - done),
        added=added, by_kind=by_kind, estimate_seconds=estimate_s, estimate_source=source,
        peak_memory_bytes=peak_memory, verified=scan.verified,
        groups=[(entry[5], entry[0]) for entry in memo.values()],
    )


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """done / failed / running and an ETA on a stream: redrawn in place on a TTY, else a line at intervals."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, interval: float = 10.0) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self.start = time.monotonic()
        self._last = 0.0
        self.done = self.failed = self.running = 0
        self.done_before: int | None = None  # cells already done when the run started (not in cells/s)

    @property
    def finished_here(self) -> int:
        """Cells finished by this run (done or failed), the basis of cells/s and the ETA."""
        return self.done + self.failed - (self.done_before or 0)

    def line(self) -> str:
        finished = self.done + self.failed
        elapsed = time.monotonic() - self.start
        here = self.finished_here
        eta = elapsed / here * (self.total - finished) if here else float("nan")
        width = 24
        filled = int(width * finished / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        rate = self.finished_here / elapsed if elapsed > 0 else 0.0
        return (
            f"[{bar}] {finished}/{self.total}: {self.done} done, {self.failed} failed, "
            f"{self.running} running, {_rate(rate)}, elapsed {_duration(elapsed)}, ETA {_duration(eta)}"
        )

    def update(self, *, done: int, failed: int, running: int, force: bool = False) -> None:
        if self.done_before is None:
            self.done_before = done + failed
        self.done, self.failed, self.running = done, failed, running
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.update(done=self.done, failed=self.failed, running=0, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Run


@dataclass
class RunResult:
    """What a run did. ``exit_code``: 0 every cell done, 1 some failed, 130 interrupted by Ctrl-C
    (SIGINT), 143 stopped by SIGTERM (what Slurm and Kubernetes send before they kill a job)."""

    sweep: str
    folder: str
    total: int
    done: int
    failed: list[str] = field(default_factory=list)
    ran: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    signum: int = signal.SIGINT  # the signal that interrupted the run

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 128 + int(self.signum)
        return 1 if self.failed or self.done < self.total else 0


class _Interrupt:
    """Turns SIGINT and SIGTERM into a flag while a sweep runs (main thread only): Ctrl-C, and the
    SIGTERM a scheduler sends before it kills a job, stop cleanly. ``signum`` is the first one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.flag = False
        self.signum: int = signal.SIGINT
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second signal: stop at once (files are still never half-written)
            raise KeyboardInterrupt
        self.flag, self.signum = True, signum

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)


def run(
    sweep: Any,
    results: str | os.PathLike[str],
    executor: Any,
    *,
    stream: IO[str] | None = None,
    progress_interval: float = 10.0,
    retries: int = 0,
) -> RunResult:
    """Run every cell of ``sweep`` not done in ``<results>/<sweep.name>`` on ``executor``.

    First asks the executor whether every cell can run at all (:class:`Unsatisfiable` otherwise,
    before the folder is touched). Then holds the folder's lock throughout
    (:class:`gradsweep.store.LockHeld` if another driver has it), stores the spec, quarantines
    corrupt cell files, and writes each outcome as it arrives: a cell file, or a failure record. A
    failing cell is run again up to ``retries`` times before it is recorded failed; the record keeps
    every attempt's error. Ctrl-C stops: results already arrived are written, the rest is
    cancelled, and nothing is half-written.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries: expected an integer >= 0, got {retries!r}")
    out = stream if stream is not None else sys.stderr
    store = SweepStore.for_sweep(results, sweep.name)
    try:
        store.create()
        message = store.acquire_lock()
    except BaseException:
        executor.close()
        raise
    if message:
        print(message, file=out)
    try:
        scan = store.scan(full=True)
        # after the folder's checks, which overlap a Ray started in the background; before the
        # spec is stored or anything runs
        executor.check(_distinct_shapes(sweep.cells))
        store.save_spec(sweep.source_text)
        quarantined = {}
        for cell_id, reason in sorted(scan.invalid.items()):
            dest = store.quarantine(cell_id, reason)
            quarantined[cell_id] = dest
            print(f"cell {cell_id}: {reason}; moved to {dest}, it will be re-run", file=out)
        ids = list(dict.fromkeys(c.id for c in sweep.cells))
        todo = [c for c in {c.id: c for c in sweep.cells}.values() if c.id not in scan.done]
        result = RunResult(
            sweep=sweep.name, folder=store.location, total=len(ids), done=len(ids) - len(todo),
            quarantined=quarantined,
        )
        store.log_event("run_started", cells=len(ids), todo=len(todo), pid=os.getpid())
        if todo:
            print(f"sweep {sweep.name}: {len(todo)} of {len(ids)} cells to run -> {store.location}", file=out)
            _drive(store, todo, executor, result, Progress(len(ids), stream=out, interval=progress_interval),
                   retries=retries)
        store.log_event(
            "run_ended", done=result.done, failed=len(result.failed), interrupted=result.interrupted,
        )
        return result
    finally:
        executor.close()
        store.release_lock()


def _distinct_shapes(cells: Any) -> list[Any]:
    """One cell per distinct (resources, device) pair: all an executor's up-front check needs."""
    seen: dict[tuple, Any] = {}
    for cell in cells:
        key = (id(cell.resources), cell.config.get("device"))
        if key not in seen:
            seen[key] = cell
    return list(seen.values())


def _drive(
    store: SweepStore, todo: list[Any], executor: Any, result: RunResult, progress: Progress, *, retries: int = 0,
) -> None:
    failed: set[str] = set()
    cells = {c.id: c for c in todo} if retries else {}
    earlier: dict[str, list[dict[str, Any]]] = {}  # cell id -> its failed attempts so far
    with _Interrupt() as interrupt:
        executor.submit(todo, sweep=result.sweep)
        progress.update(done=result.done, failed=0, running=executor.running, force=True)
        try:
            while executor.pending and not interrupt.flag:
                for outcome in executor.wait(timeout=0.5):
                    if not outcome.ok and len(earlier.get(outcome.cell_id, ())) < retries and not interrupt.flag:
                        earlier.setdefault(outcome.cell_id, []).append(_attempt(outcome))
                        print(f"cell {outcome.cell_id}: {outcome.error}; retrying "
                              f"({len(earlier[outcome.cell_id])} of {retries})", file=progress.stream)
                        executor.submit([cells[outcome.cell_id]], sweep=result.sweep)
                        continue
                    _record(store, outcome, result, failed, earlier.pop(outcome.cell_id, []))
                progress.update(done=result.done, failed=len(failed), running=executor.running)
            if interrupt.flag:
                # results that already arrived are kept; tasks killed by the Ctrl-C (a terminal
                # signals the workers too) are not failures of their cells
                for outcome in executor.wait(timeout=0):
                    if not getattr(outcome, "lost", False):
                        _record(store, outcome, result, failed, earlier.pop(outcome.cell_id, []))
                cancelled = executor.cancel()
                result.interrupted, result.signum = True, interrupt.signum
                print(
                    f"\n{_stopped_by(interrupt.signum)}: {len(cancelled)} cells not finished were cancelled; "
                    f"`gradsweep resume {store.location}` runs them",
                    file=progress.stream,
                )
        finally:
            result.failed = sorted(failed)
            progress.close()


def _stopped_by(signum: int) -> str:
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def _attempt(outcome: Any) -> dict[str, Any]:
    """One failed attempt of a cell, as kept in its failure record."""
    return {
        "error": outcome.error, "traceback": outcome.traceback, "host": outcome.host,
        "device": outcome.device, "seconds": outcome.seconds,
    }


def _record(
    store: SweepStore, outcome: Any, result: RunResult, failed: set[str], earlier: Sequence[dict[str, Any]] = (),
) -> None:
    result.ran += 1
    if outcome.ok:
        store.write_cell(outcome.cell_id, outcome.data)
        result.done += 1
        failed.discard(outcome.cell_id)
        return
    failed.add(outcome.cell_id)
    errors = [*earlier, _attempt(outcome)]
    store.record_failure(
        outcome.cell_id,
        {
            "error": outcome.error, "traceback": outcome.traceback,
            "attempts": len(earlier) + outcome.attempts,
            "host": outcome.host, "device": outcome.device, "seconds": outcome.seconds,
            "errors": errors,
        },
    )


# ---------------------------------------------------------------------------------------------
# The stored spec: resume and status


def _sweep_from_text(text: str, source: str) -> Any:
    from gradsweep.spec import load_spec

    return load_spec(text if "\n" in text else text + "\n", source=source)


def _split_folder(folder: str | os.PathLike[str]) -> tuple[str, str]:
    from gradsweep.store import split_location

    return split_location(folder)


def load_stored_sweep(folder: str | os.PathLike[str]) -> tuple[Any, str]:
    """The sweep stored in a results folder and the results root it lives under.

    Raises :class:`StoreError` when the folder is missing or holds no spec.
    """
    store = SweepStore(folder)
    if not store.exists():
        raise StoreError(f"results: no such folder {store.location!r}")
    text = store.read_spec()
    if text is None:
        raise StoreError(f"results: {store.location} holds no stored spec ({store.spec_path}): not a sweep folder")
    sweep = _sweep_from_text(text, store.spec_path)
    root, name = _split_folder(folder)
    if sweep.name != name:
        raise StoreError(
            f"results: the spec stored in {store.location} is named {sweep.name!r}, not {name!r} "
            "(folders must keep their sweep's name)"
        )
    return sweep, root


def resume(folder: str | os.PathLike[str], executor: Any, **kwargs: Any) -> RunResult:
    """Run the failed and missing cells of the spec stored in ``folder``."""
    sweep, root = load_stored_sweep(folder)
    return run(sweep, root, executor, **kwargs)


@dataclass
class Status:
    """The state of a results folder: counts, the failed cells with their first error line, the lock."""

    plan: Plan
    failures: dict[str, dict[str, Any]]
    failures_folder: str
    lock: dict[str, Any] | None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # failed cell -> flat parameters
    varying: list[str] = field(default_factory=list)  # parameters that differ between the sweep's cells

    def format(self) -> str:
        p = self.plan
        lines = [
            f"sweep {p.sweep} in {p.folder}: {p.total} cells",
            f"  done {len(p.done)}, failed {len(p.failed)}, pending {p.pending}"
            + (f", dropped from the spec {len(p.dropped)}" if p.dropped else ""),
        ]
        if p.invalid:
            lines.append(
                f"  {len(p.invalid)} cell files are corrupt, truncated or misnamed (run/resume moves them aside and re-runs):"
            )
            for cell_id, reason in sorted(p.invalid.items())[:20]:
                lines.append(f"    {cell_id}  {reason}")
            if len(p.invalid) > 20:
                lines.append(f"    ... and {len(p.invalid) - 20} more")
        if p.done or p.invalid:
            lines.append(p.checked)
        if self.lock:
            lines.append(_lock_line(self.lock))
        if p.failed:
            lines.append("  failed cells (error; attempts):")
            for cell_id in sorted(p.failed):
                rec = self.failures.get(cell_id, {})
                lines.append(f"    {cell_id}  {rec.get('error', '?')}  ({rec.get('attempts', '?')} attempts)")
                if cell_id in self.params:
                    lines.append(f"      {format_params(self.params[cell_id], self.varying)}")
            lines.append(f"  full tracebacks: {self.failures_folder}/<cell_id>.json")
        return "\n".join(lines)


def _lock_line(lock: Mapping[str, Any]) -> str:
    """The lock as ``status`` shows it: who holds it, and whether that driver still runs."""
    if "invalid" in lock:
        return f"  the lock file is {lock['invalid']} (a driver died writing it): the next run takes it over"
    who = f"pid {lock.get('pid')} on {lock.get('host')} since {lock.get('started')}"
    if lock.get("alive") is False:
        return f"  locked by {who}, which is no longer running: the next run takes the lock over"
    if lock.get("alive") is None:
        return f"  being run by {who} (another host: whether it still runs cannot be checked from here)"
    return f"  being run by {who} (running)"


def status(folder: str | os.PathLike[str], *, verify: bool = False,
           select: Callable[[Any], Any] | None = None) -> Status:
    """Done / failed / pending of the spec stored in ``folder`` (``select``: a subset of its sweep).

    Fast by default: cell files are checked by their ends and the cell id in their footers, and
    the output says so; ``verify=True`` reads every page as ``run`` and ``resume`` do.
    """
    sweep, root = load_stored_sweep(folder)
    if select is not None:
        sweep = select(sweep)
    p = plan(sweep, root, full=verify)
    store = SweepStore(folder)
    params, varying = failed_cell_params(sweep.cells, p.failed) if p.failed else ({}, [])
    return Status(p, store.failures(), store.failures_location, store.lock_holder(), params, varying)
