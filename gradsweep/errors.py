"""What the CLI and the modules it runs (``gradsweep.submit``) share without importing each
other: the error every command turns into one line and exit code 2 (no traceback), and how
talkative the command is (``-q`` / ``-v``).
"""

from __future__ import annotations

__all__ = ["BadInput", "VERBOSITY", "set_verbosity", "quiet_ray"]

#: -v minus -q of the running command: 0 default, < 0 quiet, > 0 verbose
VERBOSITY = 0


def set_verbosity(level: int) -> None:
    global VERBOSITY
    VERBOSITY = level


def quiet_ray() -> None:
    """Hide Ray's own banners (token authentication, "Started a local Ray instance") unless -v.

    Call after ``ray`` is imported: importing it sets its logger to INFO.
    """
    if VERBOSITY > 0:
        return
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)


class BadInput(Exception):
    """Input the command cannot use; printed as one line, exit code 2."""
