"""The one error a bad spec raises, carrying every problem found.

A user fixing a spec should see all of its mistakes at once, each with the key path
(``estimator[1].sigma``), the file line where known, what was expected and what arrived, rather
than fixing them one run at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["Issue", "SpecError"]


@dataclass(frozen=True)
class Issue:
    """One problem in a spec: where (``path``, ``line``) and what (``message``)."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}"


class SpecError(ValueError):
    """A spec (or a cell config) that cannot be run; ``issues`` lists every problem found.

    ``str(error)`` names the source and lists one issue per line, so a CLI can print it as is.
    """

    def __init__(self, issues: Iterable[Issue], *, source: str | None = None) -> None:
        self.issues: list[Issue] = list(issues)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"{self.source}: " if self.source else ""
        n = len(self.issues)
        if n == 1:
            return f"{head}invalid spec: {self.issues[0]}"
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        return f"{head}invalid spec: {n} problems\n{lines}"
