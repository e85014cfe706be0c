"""``fsiad fit``: fit a method on K normal references and save a model folder for ``fsiad predict``.

Parsing only: the work is ``fsiad.fewshot.workflow.session.InspectionSession.fit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from fsiad.cli.workflow_options import reference_options, session_from


@click.command("fit")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model folder to write.")
@reference_options
@click.option("--chunk-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Targets loaded at a time by `fsiad predict` with this model.")
def fit(out: Path, normal: Path | None, demo: str | None, chunk_size: int, **kwargs: Any) -> None:
    """Fit a method on K normal references and save a self-describing model folder OUT.

    `fsiad predict --model OUT` then reproduces `fsiad score`'s numbers exactly on new images.
    OUT may not lie inside --normal; it is locked while being written.
    """
    model = session_from(kwargs, quiet=True).fit(normal, demo=demo, save_to=out, chunk_size=chunk_size)
    enc = model.method.describe()
    click.echo(f"model saved to {out} ({model.method.name}, {len(model.references)} reference(s), encoder "
               f"{json.dumps(enc.get('encoder'), default=str)[:120]})")
    click.echo(model.calibration.description)
