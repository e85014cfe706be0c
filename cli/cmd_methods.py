"""``fsiad methods``: the registered methods (2D and 3D) and their options."""

from __future__ import annotations

import click
from fsiad.cli.cmd_eval import import_plugins


@click.command("methods")
def methods_command() -> None:
    """List the registered methods with their regime and summary."""
    from fsiad.fewshot.methods import method_class, method_names

    import_plugins()
    for name in method_names():
        cls = method_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        kind = "zero-shot-transductive" if cls.transductive else cls.regime
        click.echo(f"{name:16s} {kind:24s} {doc[0] if doc else ''}")


commands = [methods_command]
