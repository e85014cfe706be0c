"""``fsiad prompts``: show, validate and copy WinCLIP prompt ensembles."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
from fsiad.prompts.loader import PromptError, default_prompts_path, load_prompts, validate


@click.group("prompts")
def prompts_group() -> None:
    """Prompt ensembles of the CLIP-based methods (normal/anomalous states x templates)."""


@prompts_group.command("show")
@click.option("--category", "-c", default="object", show_default=True,
              help="Category / class name (per-category aliases and extra states apply).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompt file (YAML); default: the packaged ensemble.")
def show(category: str, prompts_file: str | None) -> None:
    """Print the expanded prompts of CATEGORY with counts."""
    try:
        ps = load_prompts(prompts_file)
    except PromptError as exc:
        for err in exc.errors:
            click.echo(err, err=True)
        raise SystemExit(1) from None
    cp = ps.expand(category)
    click.echo(f"# file: {ps.source}")
    click.echo(f"# category: {category} -> class name {cp.class_name!r}")
    for label, items in (("normal", cp.normal), ("anomalous", cp.anomalous)):
        click.echo(f"## {label}: {len(items)} prompts")
        for text in items:
            click.echo(f"  {text}")
    click.echo(f"# total: {len(cp.normal)} normal + {len(cp.anomalous)} anomalous = "
               f"{len(cp.normal) + len(cp.anomalous)} prompts")


@prompts_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def validate_cmd(file: str) -> None:
    """Check FILE; print one ``file:line: message`` per problem (exit 1 if any)."""
    errors = validate(file)
    for err in errors:
        click.echo(err, err=True)
    if errors:
        raise SystemExit(1)
    click.echo(f"{file}: OK")


@prompts_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing prompts.yaml.")
def init(directory: str, force: bool) -> None:
    """Write an editable copy of the default ensemble to DIRECTORY/prompts.yaml."""
    dst = Path(directory) / "prompts.yaml"
    if dst.exists() and not force:
        click.echo(f"{dst}: already exists (use --force to overwrite)", err=True)
        raise SystemExit(1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default_prompts_path(), dst)
    click.echo(f"wrote {dst}; edit it and pass --prompts {dst} to score / eval")


commands = [prompts_group]
