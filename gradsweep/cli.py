"""The ``gradsweep`` command: plan, run, status, resume, report, submit, logs, cancel, export.

One function per subcommand, listed in :data:`COMMANDS`; a subcommand that lives in another
package (``report`` in ``gradsweep.analysis.cli``) is named by its module, which must define
``add_arguments(parser)`` and ``run(args) -> int``, and is imported only when that subcommand
runs. Exit codes: 0 every cell done, 1 cells failed (or, for ``status``, not all done), 2 bad
input (bad spec, missing folder, lock held, unwritable results) with one message on stderr and no
traceback, 130 interrupted.

``plan`` and ``status`` import neither torch nor Ray.

Common to the commands that take a spec (plan, run, submit): ``KEY=VALUE`` overrides after the
spec (:mod:`gradsweep.spec.overrides`). To those that act on cells (plan, run, resume, status,
report): ``--where`` and ``--cell`` (:mod:`gradsweep.select`). Everywhere: ``-q`` (only errors and
the final summary) and ``-v`` (also Ray's own banners and warnings, hidden by default).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gradsweep import __version__
from gradsweep import errors
from gradsweep.errors import BadInput, quiet_ray

__all__ = ["main", "build_parser", "COMMANDS", "Command", "BadInput", "quiet_ray"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130



@dataclass(frozen=True)
class Command:
    """A subcommand: its help, and either functions or the module that provides them."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    module: str | None = None  # "package.module" with add_arguments(parser) and run(args)


# -- shared arguments ------------------------------------------------------------------------------


def _add_execution_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="join the Ray cluster at ADDR (default: start an embedded local Ray)")
    p.add_argument("--max-in-flight", type=_positive_int, default=None, metavar="N",
                   help="Ray tasks submitted at once (default: twice the cells the cluster runs at once)")
    p.add_argument("--chunk-size", type=_positive_int, default=None, metavar="N",
                   help="cells per Ray task (default: adapts so a task lasts about a second)")
    p.add_argument("--max-retries", type=_non_negative_int, default=3, metavar="N",
                   help="runs again of a cell whose worker process died (default: 3)")
    p.add_argument("--num-cpus", type=_positive_int, default=None, metavar="N",
                   help="CPUs of the embedded Ray (default: all of this machine's)")
    p.add_argument("--local", action="store_true", help="run the cells one by one in this process, without Ray (debugging)")
    p.add_argument("--ray", action="store_true",
                   help="use Ray even for a sweep small enough to run in this process (default: a sweep estimated "
                        f"at under {SMALL_SWEEP_SECONDS:g} s of work runs in-process, unless --address is given)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                   help="stop a cell after S seconds and record it failed ('timed out'); a spec's "
                        "resources.timeout wins (default: no limit)")
    p.add_argument("--retries", type=_non_negative_int, default=0, metavar="N",
                   help="run a failing cell again up to N times before recording it failed, keeping every "
                        "attempt's error (default: 0)")


SMALL_SWEEP_SECONDS = 5.0  # a sweep estimated below this runs in-process: Ray's start-up would dominate


def _number(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)``, refused with "expected ..." unless ``ok``."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number of seconds > 0")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_int = _number(int, lambda v: v >= 1, "a positive integer")


def _load_spec(path: str, overrides: Sequence[str] = ()) -> Any:
    from gradsweep.spec.overrides import load_spec_with_overrides

    return load_spec_with_overrides(path, list(overrides))


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change the spec without editing it, e.g. problem.dim=64 'estimator[0].epsilon=[0.1,0.01]' "
                        "seeds=[0,1] (YAML values; a list for a one-value key is a grid)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="only the cells whose parameters match, e.g. 'estimator.kind=cdg,problem.dim=32' "
                        "(COLUMN=VALUE, COLUMN!=VALUE, COLUMN=[A,B]; repeatable, all must hold)")
    p.add_argument("--cell", action="append", default=[], metavar="ID",
                   help="only this cell (its id, or a unique prefix of it; repeatable)")


def _selection(args: argparse.Namespace) -> Any:
    from gradsweep.select import parse_selection

    return parse_selection(getattr(args, "where", []) or [], getattr(args, "cell", []) or [])


def _selected(sweep: Any, args: argparse.Namespace) -> Any:
    """The sweep with only the cells that ``--where``/``--cell`` keep (all without them)."""
    from gradsweep.select import select_sweep

    return select_sweep(sweep, _selection(args))


def _progress_stream() -> Any:
    """Where progress goes: stderr, or nowhere with -q (errors and the final summary still print)."""
    return open(os.devnull, "w") if errors.VERBOSITY < 0 else sys.stderr


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, sort_keys=False, default=str))


def _executor(args: argparse.Namespace, sweep: Any = None) -> Any:
    """The executor the options ask for. Ray is started in the background (:class:`LazyRay`), so
    that its start-up overlaps the checks of the results folder; a small sweep runs in-process."""
    from gradsweep.executors.base import FaultHooks

    try:
        hooks = FaultHooks.from_env()
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    timeout = getattr(args, "timeout", None)
    if not args.local and sweep is not None and not (args.ray or args.address):
        seconds = _small_sweep_seconds(sweep)
        if seconds is not None:
            print(f"sweep {sweep.name}: about {seconds:.1f} s of work estimated: running it in this process "
                  "(--ray to use Ray)", file=sys.stderr)
            args.local = True
    if args.local:
        from gradsweep.executors.local import LocalExecutor

        return LocalExecutor(hooks=hooks, timeout=timeout)
    from gradsweep.executors.background import LazyRay

    return LazyRay(
        address=args.address, num_cpus=args.num_cpus, prepare=quiet_ray,
        options=dict(max_in_flight=args.max_in_flight, chunk_size=args.chunk_size, max_retries=args.max_retries,
                     hooks=hooks, timeout=timeout),
    )


def _small_sweep_seconds(sweep: Any, limit: int = 1000) -> float | None:
    """The estimated seconds of a sweep of at most ``limit`` cells if under the small-sweep bound, else None."""
    if len(sweep) > limit:
        return None
    from gradsweep.runner import estimate_seconds

    try:
        seconds = estimate_seconds(sweep.iter_cells())
    except Exception:  # a cost model that cannot size a cell: let the run (on Ray) report it
        return None
    return seconds if seconds < SMALL_SWEEP_SECONDS else None


def _finish(result: Any) -> int:
    print(
        f"sweep {result.sweep}: {result.done}/{result.total} cells done, {len(result.failed)} failed"
        + (" (interrupted)" if result.interrupted else "") + f"; results in {result.folder}",
        file=sys.stderr,
    )
    if result.failed:
        print(f"  see `gradsweep status {result.folder}` for the errors", file=sys.stderr)
    return result.exit_code


# -- subcommands -----------------------------------------------------------------------------------


def _spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the sweep spec (YAML)")
    _add_overrides(p)
    p.add_argument("--results", default="results", metavar="DIR", help="results root (default: ./results); a path or a URI")
    _add_selection(p)


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    _spec_arguments(p)
    p.add_argument("--json", action="store_true", help="print counts and the failed cells as JSON")


def cmd_plan(args: argparse.Namespace) -> int:
    """Print what ``run`` would do: cells per kind, done / failed / pending, cost. Runs nothing."""
    from gradsweep.runner import plan
    from gradsweep.spec.inert import inert_warnings
    from gradsweep.store import SweepStore

    whole = _load_spec(args.spec, args.overrides)
    sweep = _selected(whole, args)
    p = plan(sweep, args.results)
    if sweep is not whole:  # cells left out by --where/--cell are not "dropped"
        p.dropped -= {c.id for c in whole.iter_cells()}
    if args.json:
        from gradsweep.views import plan_json

        failures = SweepStore.for_sweep(args.results, sweep.name).failures() if p.failed else {}
        _print_json(plan_json(p, sweep, failures))
    else:
        print(p.format())
        for warning in inert_warnings(p.groups, groups=True):
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _run_arguments(p: argparse.ArgumentParser) -> None:
    _spec_arguments(p)
    _execution_and_progress(p)


def _execution_and_progress(p: argparse.ArgumentParser) -> None:
    _add_execution_arguments(p)
    p.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal (default: 10)")


def cmd_run(args: argparse.Namespace) -> int:
    """Run every cell of the spec that is not done in RESULTS/<name>."""
    from gradsweep.runner import run

    sweep = _selected(_load_spec(args.spec, args.overrides), args)
    executor = _executor(args, sweep)
    return _finish(run(sweep, args.results, executor, stream=_progress_stream(), progress_interval=args.progress_every,
                       retries=args.retries))


def _folder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a sweep's results folder, RESULTS/NAME")


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a sweep's results folder, RESULTS/NAME, or a job id printed by `gradsweep submit`")
    p.add_argument("--address", default=None, help="with a job id: the cluster's dashboard, http://HEAD:8265")
    p.add_argument("--verify", action="store_true",
                   help="read every page of every cell file and check its checksum, as run and resume do (slower)")
    _add_selection(p)
    p.add_argument("--json", action="store_true", help="print counts and the failed cells (id, parameters, "
                   "error, attempts) as JSON")


def cmd_status(args: argparse.Namespace) -> int:
    """Print done / failed / pending and the failed cells' errors; exit 0 only when all are done."""
    from gradsweep.runner import status
    from gradsweep.submit import cmd_job_status, is_job_id

    if is_job_id(args.folder):
        if not args.json:
            return cmd_job_status(args.folder, args.address)
        from dataclasses import asdict

        from gradsweep.submit import job_status

        report = job_status(args.folder, address=args.address)
        _print_json(asdict(report))
        return EXIT_FAILED if report.status in ("FAILED", "STOPPED") else EXIT_OK

    selection = _selection(args)
    whole: set[str] = set()

    def select(sweep: Any) -> Any:
        from gradsweep.select import select_sweep

        whole.update(c.id for c in sweep.cells)
        return select_sweep(sweep, selection)

    st = status(args.folder, verify=args.verify, select=select if selection else None)
    if selection:  # cells left out by --where/--cell are not "dropped from the spec"
        st.plan.dropped -= whole
    if args.json:
        from gradsweep.views import status_json

        _print_json(status_json(st))
    else:
        print(st.format())
    return EXIT_OK if len(st.plan.done) == st.plan.total else EXIT_FAILED


def _resume_arguments(p: argparse.ArgumentParser) -> None:
    _folder_arguments(p)
    _add_selection(p)
    _execution_and_progress(p)


def cmd_resume(args: argparse.Namespace) -> int:
    """Run the failed and missing cells of the spec stored in the folder."""
    from gradsweep.runner import load_stored_sweep, run

    # as runner.resume, but the executor is chosen for the (selected) stored sweep: a small one
    # runs in-process
    sweep, root = load_stored_sweep(args.folder)
    sweep = _selected(sweep, args)
    executor = _executor(args, sweep)
    return _finish(run(sweep, root, executor, stream=_progress_stream(), progress_interval=args.progress_every,
                       retries=args.retries))


def _cancel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="a job id printed by `gradsweep submit`")
    p.add_argument("--address", default=None, help="the head node's dashboard, http://HEAD:8265")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the job to stop (default: 60)")


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a submitted sweep: its in-flight cells are cancelled, the lock released, results kept."""
    return _jobs().cmd_cancel(args)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tracker", choices=["mlflow"], help="the experiment tracker to log to")
    p.add_argument("results", help="a sweep's results folder, RESULTS/NAME")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="the MLflow tracking URI (default: a local ./mlruns store, offline)")
    p.add_argument("--experiment", default=None, metavar="NAME", help="the experiment (default: the sweep's name)")


def cmd_export(args: argparse.Namespace) -> int:
    """Log each done cell of a results folder as a run of an experiment tracker (idempotent)."""
    from gradsweep.export.mlflow import ExportError, export_mlflow

    try:
        result = export_mlflow(args.results, tracking_uri=args.tracking_uri, experiment=args.experiment)
    except ExportError as exc:
        raise BadInput(str(exc)) from None
    print(result.format())
    return EXIT_OK


def _jobs() -> Any:
    """``gradsweep.submit`` (submit, logs, job status), imported when one of those runs."""
    from gradsweep import submit

    return submit


COMMANDS: dict[str, Command] = {
    "plan": Command("show the cells of a spec and what is done, failed and pending; runs nothing", _plan_arguments, cmd_plan),
    "run": Command("run every cell of a spec that is not done yet", _run_arguments, cmd_run),
    "status": Command("show done / failed / pending of a results folder (or a submitted job) and the errors", _status_arguments, cmd_status),
    "resume": Command("run the failed and missing cells of the spec stored in a results folder", _resume_arguments, cmd_resume),
    "report": Command("make figures and tables from a results folder", module="gradsweep.analysis.cli"),
    "kinds": Command("list every kind (built-in and from installed plugins) with its parameters and package",
                     module="gradsweep.spec.reference"),
    "submit": Command("submit a sweep to a Ray cluster as a Ray job; prints the job id and returns",
                      lambda p: _jobs().add_submit_arguments(p), lambda a: _jobs().cmd_submit(a)),
    "logs": Command("print the output of a submitted job (--follow: until it ends)",
                    lambda p: _jobs().add_logs_arguments(p), lambda a: _jobs().cmd_logs(a)),
    "cancel": Command("stop a submitted job: in-flight cells cancelled, lock released, results kept",
                      _cancel_arguments, cmd_cancel),
    "export": Command("log the cells of a results folder to an experiment tracker (mlflow)", _export_arguments, cmd_export),
}


# -- the parser and main -----------------------------------------------------------------------


def _first_command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _add_verbosity(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-q", "--quiet", action="count", default=default,
                   help="print only errors and the final summary")
    p.add_argument("-v", "--verbose", action="count", default=default,
                   help="also show Ray's own banners and warnings (hidden by default)")


def _build(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="gradsweep", description="Gradient-estimator sweeps for binary neural networks, on Ray, to Parquet.",
    )
    parser.add_argument("--version", action="version", version=f"gradsweep {__version__}")
    _add_verbosity(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _first_command(argv)
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        subparsers[name] = p
        _add_verbosity(p, argparse.SUPPRESS)  # given after the command; the top level's stays otherwise
        if cmd.module is not None:
            if name == chosen:
                try:
                    module = importlib.import_module(cmd.module)
                except ImportError as exc:
                    raise BadInput(f"`gradsweep {name}` is not available: cannot import {cmd.module} ({exc})") from exc
                module.add_arguments(p)
                if name == "report":
                    _add_selection(p)
                p.set_defaults(_run=_with_selection(module.run) if name == "report" else module.run)
        else:
            assert cmd.add_arguments is not None and cmd.run is not None
            cmd.add_arguments(p)
            p.set_defaults(_run=cmd.run)
    return parser, subparsers


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; a module-backed subcommand's own arguments are added only when it is chosen."""
    return _build(argv)[0]


def _with_selection(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``report``'s run with ``args.select``: the parsed ``--where``/``--cell`` (None without them)."""

    def wrapped(args: argparse.Namespace) -> int:
        selection = _selection(args)
        args.select = selection if selection else None
        return run(args)

    return wrapped


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a word argparse does not know is an override where the command takes them,
    else an error printed with the *subcommand's* usage (argparse would print the top level's)."""
    from gradsweep.spec.overrides import is_override

    parser, subparsers = _build(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        takes = hasattr(args, "overrides")
        if takes:
            args.overrides = list(args.overrides) + [w for w in extras if is_override(w)]
        unknown = [w for w in extras if not (takes and is_override(w))]
        if unknown:
            subparsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from gradsweep.executors.base import Unsatisfiable
    from gradsweep.select import SelectionError
    from gradsweep.store import StoreError

    types: list[type[BaseException]] = [
        BadInput, StoreError, SelectionError, Unsatisfiable, FileNotFoundError, NotADirectoryError, PermissionError,
    ]
    try:
        from gradsweep.spec import SpecError

        types.append(SpecError)
    except ImportError:
        pass
    return tuple(types)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradsweep`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bad = _bad_input_types()
    try:
        args = _parse(argv)
        errors.set_verbosity(int(args.verbose or 0) - int(args.quiet or 0))
        if errors.VERBOSITY <= 0:  # the autoscaler's "cannot be scheduled right now" lines (read when Ray loads)
            os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")
        return int(args._run(args))
    except bad as exc:
        print(f"gradsweep: error: {_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gradsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a full disk, a read-only folder, ... anywhere below: one line, no traceback
        print(f"gradsweep: error: {_os_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _os_message(exc: OSError) -> str:
    import errno

    reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or folder: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
