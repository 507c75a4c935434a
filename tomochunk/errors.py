"""Exception types raised for user-facing failures.

Every message is one line that names the file (where there is one) and what
is wrong with it; the CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import os


class TomochunkError(Exception):
    """Base class of every error tomochunk raises on bad input."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{os.fspath(path)}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + " ".join(str(message).split()))
        self.path = None if path is None else os.fspath(path)
        self.line = line


class FormatError(TomochunkError):
    """The file exists but its content is not in the expected format."""


class ShapeError(TomochunkError):
    """An array has the wrong number of dimensions, size or dtype."""


class MissingError(TomochunkError, FileNotFoundError):
    """A path that must exist does not."""


class ExistsError(TomochunkError, FileExistsError):
    """An output exists and ``overwrite`` was not given."""


class IncompleteError(TomochunkError):
    """A store was never finished (no completion marker)."""


class ValueProblem(TomochunkError, ValueError):
    """An argument has a value that cannot be used."""
