"""``fsiad methods``: the methods of the catalogue (2D and 3D), or one method's options.

The list reads only the catalogue (``fsiad.fewshot.registry``): it imports no torch and no
method module. ``--weights`` and ``fsiad methods NAME`` also look up the encoder weights
available here (local files only), which loads the encoder modules.
"""

from __future__ import annotations

from typing import Any

import click
from fsiad.fewshot import registry


def weights_line(entry: registry.Entry) -> str:
    """``ready (ENCODER)``, ``needs weights: ENCODER`` or ``no encoder weights needed``."""
    if not entry.encoders:
        return "no encoder weights needed"
    from fsiad.fewshot.encoders import encoder_status

    for name in entry.encoders:
        try:
            if encoder_status(name)["available"]:
                return f"ready ({name})"
        except ValueError:  # unknown encoder (a plugin's): report it as missing
            continue
    if len(entry.encoders) == 1:
        return f"needs weights: {entry.encoders[0]} (see `fsiad models {entry.encoders[0]}`)"
    return f"needs weights: one of {', '.join(entry.encoders)} (see `fsiad models`)"


def _runtime_entries() -> dict[str, registry.Entry]:
    """Catalogue entries plus methods registered at import time by code already loaded (tests)."""
    import sys

    out = registry.entries("method")
    base = sys.modules.get("fsiad.fewshot.methods.base")
    for name, cls in sorted(getattr(base, "_REGISTRY", {}).items()):
        if name not in out:
            doc = (cls.__doc__ or "").strip().splitlines()
            out[name] = registry.Entry("method", name, f"{cls.__module__}:{cls.__qualname__}",
                                       "zero-shot-transductive" if cls.transductive else cls.regime,
                                       doc[0] if doc else "", source="registered")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _describe(name: str) -> None:
    from fsiad.fewshot.methods.base import method_class

    cls = method_class(name)
    entry = _runtime_entries().get(name) or registry.Entry("method", name, f"{cls.__module__}:{cls.__qualname__}")
    doc = (cls.__doc__ or "").strip().splitlines()
    summary = entry.summary or (doc[0] if doc else "")
    regime = "zero-shot-transductive" if cls.transductive else (entry.regime or cls.regime)
    default = " (default method)" if name == registry.DEFAULT_METHOD else ""
    click.echo(f"{name}{default}: {summary}")
    click.echo(f"  regime:   {regime}")
    enc = " | ".join(entry.encoders) if entry.encoders else "none"
    if len(entry.encoders) > 1:
        enc += " (first with weights here)"
    click.echo(f"  encoder:  {enc}")
    click.echo(f"  weights:  {weights_line(entry)}")
    click.echo(f"  defined:  {entry.target}" + (f" ({entry.source})" if entry.source != "builtin" else ""))
    options = cls.options
    if options is None:
        click.echo("\nOptions: not declared (the method checks its -o options itself).")
        return
    if not options:
        click.echo("\nOptions: none (the method takes no -o options).")
        return
    click.echo("\nOptions (-o KEY=VALUE):")
    rows = [(o.name, o.type_text(), _show(o.default), o.constraint_text(), o.help) for o in options]
    widths = [max(len(r[i]) for r in [("option", "type", "default", "allowed", ""), *rows]) for i in range(4)]
    head = ("option", "type", "default", "allowed")
    click.echo("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  help")
    for r in rows:
        click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


@click.command("methods")
@click.argument("name", required=False)
@click.option("--weights", "check_weights", is_flag=True,
              help="Also say whether each method's encoder weights are here (loads the encoder modules).")
def methods_command(name: str | None, check_weights: bool) -> None:
    """List the methods (2D and 3D) with regime and summary, or NAME's options, types and defaults."""
    if name:
        _describe(name)
        return
    rows = sorted(_runtime_entries().values(), key=lambda e: e.name)
    width = max(len(e.name) for e in rows) + 2
    for e in rows:
        mark = "*" if e.name == registry.DEFAULT_METHOD else " "
        line = f"{mark} {e.name:<{width}}{e.regime or '-':<24}{e.summary}"
        if check_weights:
            line += f"  [{weights_line(e)}]"
        click.echo(line.rstrip())
    click.echo(f"\nMarked *: the default method (`fsiad score` without --method: {registry.DEFAULT_METHOD}).")
    if not check_weights:
        click.echo("Weights available here: `fsiad methods --weights`; options: `fsiad methods NAME`.")
    for ep, err in registry.PLUGIN_ERRORS.items():
        click.echo(f"warning: plugin entry point {ep} not loaded ({err})", err=True)


commands = [methods_command]
