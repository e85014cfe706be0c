"""The one error translator of the ``fsiad`` command line.

Every command runs inside ``run_app``:

* click's own usage errors keep click's format (exit 2);
* a user error (``FsiadError`` and its subclasses, ``OSError`` such as a missing file or a
  read-only ``--out``, a ``ValueError`` with a one-line message, an unavailable device) prints
  ``Error: <one line>`` and exits 1;
* anything else is a bug: one line ``internal error: ...`` with the hint to rerun with
  ``--debug`` (exit 3). ``--debug`` (or ``FSIAD_DEBUG=1``) shows the full traceback instead.

Commands therefore never catch-and-translate errors themselves; library code raises
``FsiadError`` subclasses with actionable messages.
"""

from __future__ import annotations

import os
import sys

import click
from fsiad.fewshot.errors import one_line

EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("FSIAD_DEBUG", "") not in ("", "0")


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or one_line(exc)
    where = exc.filename if exc.filename is not None else None
    if where is None:
        return what
    hint = ""
    if isinstance(exc, PermissionError) or exc.errno in (13, 30):  # EACCES, EROFS
        hint = "; choose a writable folder or fix its permissions"
    elif isinstance(exc, FileNotFoundError):
        hint = "; check the path"
    return f"{where}: {what}{hint}"


def user_error_line(exc: BaseException) -> str | None:
    """One-line message for an error the user can fix, ``None`` for a bug."""
    from fsiad.fewshot.errors import FsiadError

    if isinstance(exc, FsiadError):
        return one_line(exc)
    if isinstance(exc, OSError):
        if isinstance(exc, FileNotFoundError) and exc.filename is None:
            return one_line(exc)
        return _os_error_line(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; lower --batch-size / --chunk-size or the image size"
    if isinstance(exc, (ValueError, KeyError)):
        return one_line(exc)
    if isinstance(exc, RuntimeError) and _is_device_error(exc):
        return f"{one_line(exc)} (choose --device cpu or an available device)"
    return None


def _is_device_error(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("cuda", "mps", "no nvidia driver", "invalid device", "out of memory"))


def run_app(app: click.Group, argv: list[str] | None = None) -> int:
    """Run the click ``app`` and translate every failure; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        rv = app.main(args=argv, prog_name="fsiad", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            click.echo("interrupted; finished outputs are kept (a rerun with the same --out resumes)", err=True)
            return 130
        click.echo("Aborted.", err=True)
        return EXIT_USER
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER)
    except KeyboardInterrupt:
        click.echo("interrupted; finished outputs are kept (a rerun with the same --out resumes)", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001  (the one place that translates every error)
        if debug:
            raise
        line = user_error_line(exc)
        if line is not None:
            click.echo(f"Error: {line}", err=True)
            return EXIT_USER
        click.echo(f"internal error: {type(exc).__name__}: {one_line(exc)} "
                   "(rerun with --debug for the traceback, and please report it)", err=True)
        return EXIT_INTERNAL
    return rv if isinstance(rv, int) else 0
