"""The one class of error a user can cause: a bad value, a missing or corrupt file, an unwritable output.

Library code raises `DDIMError` (or one of its subclasses) with a one-line message that names the parameter,
flag, file or config key and says what is allowed. The command line prints exactly that line and exits 2;
anything else that escapes is a bug and keeps its traceback. The subclasses also derive from the built-in
exception a caller would expect (`ValueError`, `FileNotFoundError`, `FileExistsError`, `PermissionError`,
`ImportError`, `TypeError`), so `except ValueError` and `except FileNotFoundError` keep working.
"""

from __future__ import annotations

__all__ = ["DDIMError", "MissingFileError", "OutputExistsError", "UnwritableError", "MissingDependencyError",
           "WrongTypeError", "one_line"]


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line for a DDIMError's message: its type and the first line of its text."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


class DDIMError(ValueError):
    """A failure caused by the user's input; the message is one line that names the input."""


class MissingFileError(DDIMError, FileNotFoundError):
    """An input file or folder the user named does not exist."""


class OutputExistsError(DDIMError, FileExistsError):
    """An output exists and would be replaced; the message says how to allow it."""


class UnwritableError(DDIMError, PermissionError):
    """An output location cannot be written (read-only, not a folder, disk full)."""


class MissingDependencyError(DDIMError, ImportError):
    """An optional package needed by the requested feature is not installed; the message says what to install."""


class WrongTypeError(DDIMError, TypeError):
    """A Python argument of the wrong type (a dict where a model belongs, an object JSON cannot hold)."""
