"""Run the ``fsiad`` command line in-process, through the same error translator as the console
script (``fsiad.cli.errors.run_app``), and capture what a user would see."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: object) -> CliResult:
    """``fsiad ARGS...`` in this process; returns exit code, stdout and stderr."""
    from fsiad.cli.errors import run_app
    from fsiad.cli.main import app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_app(app, [str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    """Non-zero exit, no traceback, an ``Error:`` line naming each needle; returns that line."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:") or ln.startswith("internal error")]
    assert lines, result.output
    assert not lines[-1].startswith("internal error"), result.output
    for n in needles:
        assert n in lines[-1], (n, result.output)
    return lines[-1]
