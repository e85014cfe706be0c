"""Entry point of the ``fsiad`` console script.

Sub-commands live in ``cli/cmd_*.py`` modules; each exposes ``commands``: a list of
click commands added to the ``fsiad`` group.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from fsiad import cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fsiad")
def app() -> None:
    """fsiad: zero-shot and few-shot industrial anomaly detection (2D and RGB-D)."""


for _mod in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
    if _mod.name.startswith("cmd_"):
        for _cmd in importlib.import_module(f"fsiad.cli.{_mod.name}").commands:
            app.add_command(_cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
