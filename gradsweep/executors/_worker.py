"""The child process of :class:`~gradsweep.executors.process.ProcessExecutor`.

``python -m gradsweep.executors._worker CELL_FN``: reads length-prefixed pickles on stdin
(``("init", hooks, device)``, then ``("cell", sweep, cell_id, config)`` or ``("exit",)``) and writes
``("ready",)`` once the cell function is imported, then one :class:`Outcome` per cell, on what was
its stdout. A cell's own prints go to stderr, so they cannot corrupt the protocol.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the cell's prints go to stderr
    from gradsweep.executors.base import FaultHooks, execute_cell, resolve_function
    from gradsweep.executors.process import receive, send

    cell_fn = sys.argv[1]
    hooks, device = FaultHooks(), None
    stdin = sys.stdin.fileno()
    while True:
        message = receive(stdin)
        if message is None or message[0] == "exit":
            return
        if message[0] == "init":
            _, hooks, device = message
            try:  # import the cell's code (torch) before the clock of the first cell starts
                resolve_function(cell_fn)
            except ValueError:
                pass  # execute_cell reports it as the cell's error
            send(out, ("ready",))
            continue
        _, sweep, cell_id, config = message
        send(out, execute_cell(sweep, cell_id, config, cell_fn=cell_fn, device=device, hooks=hooks))


if __name__ == "__main__":
    main()
