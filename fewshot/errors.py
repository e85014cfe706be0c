"""The user-error hierarchy: every problem a user can fix derives from ``FsiadError``.

The CLI's one error translator (``fsiad.cli.errors``) prints these as one line naming the
file, option or value and what to do (exit 1); anything else is a bug and prints a short
internal-error line (the traceback with ``--debug``). Library callers catch ``FsiadError``.
This module imports nothing heavy.
"""

from __future__ import annotations


class FsiadError(Exception):
    """A problem with the user's input, files or environment (message: one line, actionable)."""


class OptionError(FsiadError, ValueError):
    """A bad option or setting value (names the option and the allowed values)."""


class UnsafeFileError(FsiadError, ValueError):
    """A file fsiad refuses to load because loading it could run code or it fails its checksum."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (a ``KeyError``'s key text), else its type."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
