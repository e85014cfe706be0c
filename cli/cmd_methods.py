"""``fsiad methods``: the methods of the catalogue (2D and 3D), or one method's options.

Parsing and printing only: the content comes from ``fsiad.fewshot.methods.describe``. The list
imports no torch; ``--weights`` and ``fsiad methods NAME`` also look up the encoder weights
available here (local files only), which loads the encoder modules.
"""

from __future__ import annotations

import click


@click.command("methods")
@click.argument("name", required=False)
@click.option("--weights", "check_weights", is_flag=True,
              help="Also say whether each method's encoder weights are here (loads the encoder modules).")
def methods_command(name: str | None, check_weights: bool) -> None:
    """List the methods (2D and 3D) with regime and summary, or NAME's options, types and defaults."""
    from fsiad.fewshot import registry
    from fsiad.fewshot.methods.describe import method_card, method_rows

    if name:
        click.echo(method_card(name))
        return
    for line in method_rows(check_weights):
        click.echo(line)
    click.echo(f"\nMarked *: the default method (`fsiad score` without --method: {registry.DEFAULT_METHOD}).")
    if not check_weights:
        click.echo("Weights available here: `fsiad methods --weights`; options: `fsiad methods NAME`.")
    for ep, err in registry.PLUGIN_ERRORS.items():
        click.echo(f"warning: plugin entry point {ep} not loaded ({err})", err=True)


commands = [methods_command]
