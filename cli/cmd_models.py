"""``fsiad models``: every registered encoder, whether its weights are here, from where, checksum."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the status rows as JSON.")
@click.option("--paths", is_flag=True, help="Also print the weight file of each available encoder.")
def models(names: tuple[str, ...], as_json: bool, paths: bool) -> None:
    """List encoders (or only NAMES): available?, source, short checksum, how to get missing weights.

    Looks only at local files and caches (never downloads).
    """
    import fsiad.fewshot.encoders as enc

    try:
        rows = [enc.encoder_status(n) for n in (names or enc.encoder_names())]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"encoders": rows, "import_errors": enc.IMPORT_ERRORS}, indent=2))
        return
    width = max([len(r["name"]) for r in rows] + [7])
    click.echo(f"{'encoder':<{width}}  {'available':<9}  {'source':<7}  {'sha256':<12}  description")
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {'yes' if r['available'] else 'no':<9}  {r['source'] or '-':<7}  "
                   f"{(r['checksum'] or '-')[:12]:<12}  {r['description']}")
        if paths and r["available"]:
            click.echo(f"{'':<{width}}  path: {r['path']}")
    missing = [r for r in rows if not r["available"]]
    if missing:
        click.echo("\nHow to provide missing weights:")
        for r in missing:
            ways = r["howto"].split("provide them by one of: ", 1)[-1]
            click.echo(f"- {r['name']}: " + "\n    ".join(ways.split("; ")))
    for mod, err in enc.IMPORT_ERRORS.items():
        click.echo(f"\nwarning: encoder module {mod} not loaded ({err})", err=True)


commands = [models]
