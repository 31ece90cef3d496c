"""The error every command turns into one line and exit code 2 (no traceback).

Its own module so that the CLI and the modules it runs (``gradsweep.submit``) share it without
importing each other.
"""

from __future__ import annotations

__all__ = ["BadInput"]


class BadInput(Exception):
    """Input the command cannot use; printed as one line, exit code 2."""
