"""The ``gradsweep`` command: plan, run, status, resume, report.

One function per subcommand, listed in :data:`COMMANDS`; a subcommand that lives in another
package (``report`` in ``analysis.cli``) is named by its module, which must define
``add_arguments(parser)`` and ``run(args) -> int``, and is imported only when that subcommand
runs. Exit codes: 0 every cell done, 1 cells failed (or, for ``status``, not all done), 2 bad
input (bad spec, missing folder, lock held, unwritable results) with one message on stderr and no
traceback, 130 interrupted.

``plan`` and ``status`` import neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gradsweep import __version__

__all__ = ["main", "build_parser", "COMMANDS", "Command", "BadInput"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """Input the command cannot use; printed as one line, exit code 2."""


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _load_spec(path: str) -> Any:
    from gradsweep.spec import load_spec

    return load_spec(path)


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
        address=args.address, num_cpus=args.num_cpus,
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


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the sweep spec (YAML)")
    p.add_argument("--results", default="results", metavar="DIR", help="results root (default: ./results); a path or a URI")


def cmd_plan(args: argparse.Namespace) -> int:
    """Print what ``run`` would do: cells per kind, done / failed / pending, cost. Runs nothing."""
    from gradsweep.runner import plan

    print(plan(_load_spec(args.spec), args.results).format())
    return EXIT_OK


def _run_arguments(p: argparse.ArgumentParser) -> None:
    _plan_arguments(p)
    _execution_and_progress(p)


def _execution_and_progress(p: argparse.ArgumentParser) -> None:
    _add_execution_arguments(p)
    p.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal (default: 10)")


def cmd_run(args: argparse.Namespace) -> int:
    """Run every cell of the spec that is not done in RESULTS/<name>."""
    from gradsweep.runner import run

    sweep = _load_spec(args.spec)
    executor = _executor(args, sweep)
    return _finish(run(sweep, args.results, executor, progress_interval=args.progress_every, retries=args.retries))


def _folder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a sweep's results folder, RESULTS/NAME")


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a sweep's results folder, RESULTS/NAME, or a job id printed by `gradsweep submit`")
    p.add_argument("--address", default=None, help="with a job id: the cluster's dashboard, http://HEAD:8265")


def cmd_status(args: argparse.Namespace) -> int:
    """Print done / failed / pending and the failed cells' errors; exit 0 only when all are done."""
    from gradsweep.runner import status
    from gradsweep.submit import cmd_job_status, is_job_id

    if is_job_id(args.folder):
        return cmd_job_status(args.folder, args.address)

    st = status(args.folder)
    print(st.format())
    return EXIT_OK if len(st.plan.done) == st.plan.total else EXIT_FAILED


def _resume_arguments(p: argparse.ArgumentParser) -> None:
    _folder_arguments(p)
    _execution_and_progress(p)


def cmd_resume(args: argparse.Namespace) -> int:
    """Run the failed and missing cells of the spec stored in the folder."""
    from gradsweep.runner import load_stored_sweep, run

    sweep, root = load_stored_sweep(args.folder)
    executor = _executor(args, sweep)
    return _finish(run(sweep, root, executor, progress_interval=args.progress_every, retries=args.retries))


def _jobs() -> Any:
    """``gradsweep.submit`` (submit, logs, job status), imported when one of those runs."""
    from gradsweep import submit

    return submit


COMMANDS: dict[str, Command] = {
    "plan": Command("show the cells of a spec and what is done, failed and pending; runs nothing", _plan_arguments, cmd_plan),
    "run": Command("run every cell of a spec that is not done yet", _run_arguments, cmd_run),
    "status": Command("show done / failed / pending of a results folder (or a submitted job) and the errors", _status_arguments, cmd_status),
    "resume": Command("run the failed and missing cells of the spec stored in a results folder", _resume_arguments, cmd_resume),
    "report": Command("make figures and tables from a results folder", module="analysis.cli"),
    "submit": Command("submit a sweep to a Ray cluster as a Ray job; prints the job id and returns",
                      lambda p: _jobs().add_submit_arguments(p), lambda a: _jobs().cmd_submit(a)),
    "logs": Command("print the output of a submitted job (--follow: until it ends)",
                    lambda p: _jobs().add_logs_arguments(p), lambda a: _jobs().cmd_logs(a)),
}


# -- the parser and main -----------------------------------------------------------------------


def _first_command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; a module-backed subcommand's own arguments are added only when it is chosen."""
    parser = argparse.ArgumentParser(
        prog="gradsweep", description="Gradient-estimator sweeps for binary neural networks, on Ray, to Parquet.",
    )
    parser.add_argument("--version", action="version", version=f"gradsweep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _first_command(argv)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if cmd.module is not None:
            if name == chosen:
                try:
                    module = importlib.import_module(cmd.module)
                except ImportError as exc:
                    raise BadInput(f"`gradsweep {name}` is not available: cannot import {cmd.module} ({exc})") from exc
                module.add_arguments(p)
                p.set_defaults(_run=module.run)
        else:
            assert cmd.add_arguments is not None and cmd.run is not None
            cmd.add_arguments(p)
            p.set_defaults(_run=cmd.run)
    return parser


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from gradsweep.executors.base import Unsatisfiable
    from gradsweep.store import StoreError

    types: list[type[BaseException]] = [
        BadInput, StoreError, Unsatisfiable, FileNotFoundError, NotADirectoryError, PermissionError,
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
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        return int(args._run(args))
    except bad as exc:
        print(f"gradsweep: error: {_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gradsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or folder: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
