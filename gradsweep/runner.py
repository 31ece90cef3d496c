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

import contextlib
import gc
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
from typing import IO, Any, Mapping, Sequence

from gradsweep.store import StoreError, SweepStore

__all__ = [
    "Plan", "RunResult", "Status", "plan", "run", "resume", "status", "load_stored_sweep", "cell_cost",
    "estimate_seconds",
]

# A rough CPU throughput to turn the size estimate into seconds before any cell was measured.
_FLOPS_PER_SECOND = 2e9


# ---------------------------------------------------------------------------------------------
# Cost model


def _layer_sizes(problem: Mapping[str, Any]) -> dict[str, list[int]]:
    """Weights per layer, by the selector kind that counts them (``linear`` / ``conv``), from the input."""
    if problem.get("kind") == "toy_mlp":
        d, depth = int(problem.get("dim", 8)), int(problem.get("depth", 3))
        return {"linear": [d * d] * (depth - 1) + [d]}
    if problem.get("kind") == "xnor_resnet18":
        c = int(problem.get("channels", 8))
        sizes = []
        for j in range(16):  # the 16 binary 3x3 convs of blocks [2, 2, 2, 2], stage widths c..8c
            width = c * 2 ** (j // 4)
            fan_in = width // 2 if j in (4, 8, 12) else width
            sizes.append(width * fan_in * 9)
        return {"conv": sizes}
    return {}


def _estimated_params(config: Mapping[str, Any], total: float) -> float:
    """How many coordinates a per-coordinate estimator (CDG) moves: the selected layers only,
    each capped by ``problem.coords.sample``. Selectors by module name count as ``total``/layers."""
    problem = config.get("problem", {})
    selection = config.get("params", "all")
    sizes = _layer_sizes(problem)
    if selection == "all" or not sizes:
        chosen = [total]
    else:
        kind, layers = next(iter(sizes.items()))
        chosen = []
        for sel in [selection] if isinstance(selection, str) else selection:
            name, _, k = str(sel).partition(":")
            if name == kind and k.lstrip("-").isdigit() and 0 < abs(int(k)) <= len(layers):
                chosen.append(layers[int(k) - 1 if int(k) > 0 else int(k)])
            else:
                chosen.append(total / max(len(layers), 1))
    sample = (problem.get("coords") or {}).get("sample")
    return float(sum(min(n, sample) if sample else n for n in chosen))


def cell_cost(config: Mapping[str, Any]) -> float:
    """A rough size of one cell in floating-point operations, from its config.

    Only ratios matter: :func:`plan` calibrates it against the measured ``cell_seconds`` of done
    cells when there are any. Model: (loss evaluations) x (forward cost per example) x (examples).
    """
    problem = config.get("problem", {})
    kind = problem.get("kind")
    data = problem.get("data") or {}
    if kind == "toy_mlp":
        d, depth = int(problem.get("dim", 8)), int(problem.get("depth", 3))
        params = d * d * (depth - 1) + d
        per_example, examples = 2.0 * params, int(data.get("batch_size", 1)) * int(data.get("batches", 1))
    elif kind == "xnor_resnet18":
        scale = (int(problem.get("channels", 8)) / 64.0) ** 2 * (int(data.get("image_size", 32)) / 32.0) ** 2
        params = 11e6 * (int(problem.get("channels", 8)) / 64.0) ** 2
        per_example, examples = 1.1e9 * scale, int(data.get("batch_size", 1)) * int(data.get("batches", 1))
    else:  # rosenbrock and anything else: a vector function
        params = int(problem.get("n", 100))
        per_example, examples = 4.0 * params, 1
    est = config.get("estimator", {})
    ekind = est.get("kind")
    if ekind == "cdg":
        evals = (1.0 if est.get("mode") == "forward" else 2.0) * _estimated_params(config, params)
    elif ekind in ("nes", "nes_max_point"):
        evals = float(est.get("samples", 500)) * (2.0 if est.get("antithetic") else 1.0)
    elif ekind == "perturbed_ste":
        evals = 3.0 + float(est.get("candidates", 8))
    else:  # autograd and the STE family: a forward and a backward
        evals = 3.0 * float(est.get("samples", 1))
    experiment = config.get("experiment", "probe")
    if experiment == "probe":
        evals += len((config.get("measure") or {}).get("lrs") or [1])
    else:
        step = config.get("step") or {}
        evals *= int(step.get("steps", 1))
        if kind != "rosenbrock":
            examples = max(examples // max(int(data.get("batches", 1)), 1), 1)
    cost = evals * per_example * examples
    pretrain = problem.get("pretrain")
    if pretrain:
        cost += 3.0 * per_example * int(pretrain.get("steps", 0)) * int(pretrain.get("batch_size", 1))
    return max(cost, 1.0)


def estimate_seconds(cells: Any) -> float:
    """Seconds of CPU time the cells are estimated to take, before any was measured.

    Calls :func:`cell_cost` once per distinct (problem, estimator, measure, step) object: cells of
    one grid share those, so this is fast on a whole sweep.
    """
    memo: dict[tuple, float] = {}
    total = 0.0
    for cell in cells:
        cfg = cell.config
        key = (id(cfg.get("problem")), id(cfg.get("estimator")), id(cfg.get("measure")), id(cfg.get("step")), cfg.get("experiment"))
        cost = memo.get(key)
        if cost is None:
            cost = memo[key] = cell_cost(cfg)
        total += cost
    return total / _FLOPS_PER_SECOND


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
        lines.append(f"  {'problem':<16}{'estimator':<16}{'cells':>9}{'done':>9}{'failed':>9}{'pending':>9}")
        for (pkind, ekind), c in sorted(self.by_kind.items()):
            lines.append(
                f"  {pkind:<16}{ekind:<16}{c['total']:>9}{c['done']:>9}{c['failed']:>9}{c['pending']:>9}"
            )
        lines.append(
            f"  estimated cost of the pending cells: {_duration(self.estimate_seconds)} of CPU time "
            f"({self.estimate_source})"
        )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
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


@contextlib.contextmanager
def _gc_paused() -> Any:
    """The cyclic collector off while millions of acyclic objects come and go (it would rescan them)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan(sweep: Any, results: str | os.PathLike[str], *, full: bool = False) -> Plan:
    """Compare ``sweep`` (a ``gradsweep.spec.Sweep``) with ``<results>/<sweep.name>``. Runs nothing.

    ``full=True`` parses every cell file's footer (as ``run`` does) instead of checking its ends.
    The cells are walked once, lazily: memory grows with the done and failed cells, not the sweep.
    """
    store = SweepStore.for_sweep(results, sweep.name)
    scan = store.scan(full=full)
    known_done, known_failed = scan.done, scan.failed
    done: set[str] = set()
    failed: set[str] = set()
    total = todo = 0
    by_kind: dict[tuple[str, str], Counter] = {}
    total_cost = 0.0
    stored_text = store.read_spec()
    keep_ids = stored_text is not None and stored_text != sweep.source_text
    ids = array("Q")  # the ids as 64-bit numbers, only when "added" must be counted
    # Cells of one grid share their nested mappings (only the seed differs), so kinds and cost are
    # computed once per distinct (problem, estimator, measure, step) object, and counts are kept
    # per such group ([total, done, failed, cost, kinds]) and summed per kind at the end: the loop
    # below runs ten million times for the largest sweeps.
    memo: dict[tuple, list] = {}
    known_failed_any = bool(known_failed)
    with _gc_paused():
        for cid, cfg, _ in sweep.iter_cells():  # each cell once: the expansion makes no repeats
            if keep_ids:
                ids.append(int(cid, 16))
            get = cfg.get
            key = (id(get("problem")), id(get("estimator")), id(get("measure")), id(get("step")))
            entry = memo.get(key)
            if entry is None:
                entry = memo[key] = [0, 0, 0, cell_cost(cfg), _kinds(cfg)]
            entry[0] += 1
            if cid in known_done:
                done.add(cid)
                entry[1] += 1
            elif known_failed_any and cid in known_failed:
                failed.add(cid)
                entry[2] += 1
    for n, n_done, n_failed, cost, kinds in memo.values():
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
        estimate, source = total_cost / _FLOPS_PER_SECOND, "rough, from the cells' sizes"
    else:
        estimate, source = total_cost * per_unit, "from the cells' sizes, calibrated on measured cell_seconds"
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
        added=added, by_kind=by_kind, estimate_seconds=estimate, estimate_source=source,
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
    """What a run did. ``exit_code``: 0 every cell done, 1 some failed, 130 interrupted."""

    sweep: str
    folder: str
    total: int
    done: int
    failed: list[str] = field(default_factory=list)
    ran: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.done < self.total else 0


class _Interrupt:
    """Turns SIGINT into a flag while a sweep runs (main thread only): Ctrl-C stops cleanly."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second Ctrl-C: stop at once (files are still never half-written)
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
                result.interrupted = True
                print(
                    f"\ninterrupted: {len(cancelled)} cells not finished were cancelled; "
                    f"`gradsweep resume {store.location}` runs them",
                    file=progress.stream,
                )
        finally:
            result.failed = sorted(failed)
            progress.close()


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
    text = os.fspath(folder).rstrip("/")
    if "://" not in text:
        text = os.path.abspath(text)
    root, _, name = text.rpartition("/")
    return root or "/", name


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

    def format(self) -> str:
        p = self.plan
        lines = [
            f"sweep {p.sweep} in {p.folder}: {p.total} cells",
            f"  done {len(p.done)}, failed {len(p.failed)}, pending {p.pending}"
            + (f", dropped from the spec {len(p.dropped)}" if p.dropped else ""),
        ]
        if p.invalid:
            lines.append(f"  {len(p.invalid)} cell files are corrupt or truncated (run/resume moves them aside and re-runs)")
        if self.lock:
            lines.append(
                f"  being run by pid {self.lock.get('pid')} on {self.lock.get('host')} since {self.lock.get('started')}"
            )
        if p.failed:
            lines.append("  failed cells (error; attempts):")
            for cell_id in sorted(p.failed):
                rec = self.failures.get(cell_id, {})
                lines.append(f"    {cell_id}  {rec.get('error', '?')}  ({rec.get('attempts', '?')} attempts)")
            lines.append(f"  full tracebacks: {self.failures_folder}/<cell_id>.json")
        return "\n".join(lines)


def status(folder: str | os.PathLike[str]) -> Status:
    """Done / failed / pending of the spec stored in ``folder``."""
    sweep, root = load_stored_sweep(folder)
    p = plan(sweep, root)
    store = SweepStore(folder)
    return Status(p, store.failures(), f"{store.meta}/failures", store.lock_holder())
