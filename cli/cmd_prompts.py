"""``fsiad prompts``: show, validate, create, compare and explain WinCLIP prompt ensembles.

The commands parse, call the library (``fsiad.prompts``, ``fsiad.fewshot.evaluation.prompts``,
``fsiad.fewshot.methods.winclip_prompts``) and print; errors go through the one translator.
"""

from __future__ import annotations

import click
from fsiad.prompts.loader import check, load_prompts


@click.group("prompts")
def prompts_group() -> None:
    """Prompt ensembles of the CLIP-based methods (normal/anomalous states x templates).

    \b
    The tuning loop:
      fsiad prompts init my/ --category metal_nut --extra-anomalous "bent {}"
      (edit my/prompts.yaml)
      fsiad prompts compare default my/prompts.yaml --targets data/mvtec/metal_nut --out runs/cmp
      fsiad prompts explain my/prompts.yaml --class-name metal_nut img1.png img2.png
    """


def _echo_warnings(warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


@prompts_group.command("show")
@click.option("--category", "-c", default="object", show_default=True,
              help="Category / class name (per-category aliases and extra states apply).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompt file (YAML); default: the packaged ensemble.")
def show(category: str, prompts_file: str | None) -> None:
    """Print the expanded prompts of CATEGORY with counts (repeated entries reported)."""
    from fsiad.prompts.loader import format_expanded

    click.echo(format_expanded(load_prompts(prompts_file), category))


@prompts_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def validate_cmd(file: str) -> None:
    """Check FILE; print one ``file:line: message`` per problem (exit 1 if any error).

    Repeated entries are warnings: they are kept (published ensembles repeat templates) and
    do not fail the check.
    """
    errors, warnings = check(file)
    for err in errors:
        click.echo(err, err=True)
    _echo_warnings(warnings)
    if errors:
        raise SystemExit(1)
    click.echo(f"{file}: OK" + (f" ({len(warnings)} repeated entr{'y' if len(warnings) == 1 else 'ies'} kept)"
                                if warnings else ""))


@prompts_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing prompts.yaml with the default ensemble.")
@click.option("--category", default=None,
              help="Add / update this category's override (in the existing prompts.yaml if there is one).")
@click.option("--name", default=None, help="With --category: the words used for the object (e.g. 'metal nut').")
@click.option("--extra-normal", multiple=True, metavar="STATE",
              help="With --category: a normal state to add, with one {} (e.g. '{} without scratches'); repeatable.")
@click.option("--extra-anomalous", multiple=True, metavar="STATE",
              help="With --category: an anomalous state to add, with one {} (e.g. 'bent {}'); repeatable.")
def init(directory: str, force: bool, category: str | None, name: str | None, extra_normal: tuple[str, ...],
         extra_anomalous: tuple[str, ...]) -> None:
    """Write an editable copy of the default ensemble to DIRECTORY/prompts.yaml.

    With --category, the category's override (--name, --extra-normal, --extra-anomalous) is
    written into DIRECTORY/prompts.yaml (created from the default if absent, edited in place
    otherwise, the rest of the file untouched); the result is validated before it is written.
    """
    from fsiad.prompts.edit import init_prompts

    dst, verb, changes = init_prompts(directory, force=force, category=category, name=name,
                                      extra_normal=extra_normal, extra_anomalous=extra_anomalous)
    if verb == "unchanged":
        click.echo(f"{dst}: nothing to change for category {category!r}")
        return
    click.echo(f"{verb} {dst}" + (f" (category {category}: {'; '.join(changes)})" if changes else ""))
    if category is not None:
        cp = load_prompts(dst).expand(category)
        click.echo(f"{category}: class name {cp.class_name!r}, {len(cp.normal)} normal + {len(cp.anomalous)} "
                   f"anomalous prompts")
    click.echo(f"next: fsiad prompts compare default {dst} --targets <labelled images> --out DIR")


def _attach_tools() -> None:
    from fsiad.cli.cmd_prompts_tools import compare, explain_cmd

    prompts_group.add_command(compare)
    prompts_group.add_command(explain_cmd)


_attach_tools()
commands = [prompts_group]
