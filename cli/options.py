"""Click options shared by several commands (one definition each)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from fsiad.fewshot.methods.base import MethodConfig


def method_options(f: Callable) -> Callable:
    """Options that build a ``MethodConfig`` (use ``method_config_from(kwargs)``)."""
    opts = [
        click.option("--encoder", default=None, help="Encoder name (default: the method's). See `fsiad models`."),
        click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="Explicit weight file for the encoder (first source of the resolver)."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:i]."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True),
        click.option("--image-size", type=int, default=None, help="Working side in pixels (default: the method's)."),
        click.option("--class-name", default=None, help="Object name for text prompts (default: category name)."),
        click.option("--prompts", "prompts_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Prompt ensemble file (YAML) for prompt-based methods."),
        click.option("--batch-size", type=int, default=8, show_default=True, help="Images per encoder forward."),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Method-specific option (value parsed as JSON when possible); repeatable."),
        click.option("--allow-random", is_flag=True, hidden=True,
                     help="Random-init encoder weights (tests and timing only)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--option")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def method_config_from(kwargs: dict[str, Any]) -> MethodConfig:
    """Pop the ``method_options`` entries from click kwargs into a ``MethodConfig``."""
    return MethodConfig(
        encoder=kwargs.pop("encoder"),
        weights=kwargs.pop("weights"),
        device=kwargs.pop("device"),
        precision=kwargs.pop("precision"),
        image_size=kwargs.pop("image_size"),
        class_name=kwargs.pop("class_name") or "object",
        prompts=kwargs.pop("prompts_file"),
        batch_size=kwargs.pop("batch_size"),
        allow_random=kwargs.pop("allow_random"),
        options=parse_options(kwargs.pop("options")),
    )


def int_list(value: str, name: str, allow_all: bool = False) -> list:
    """``"0,1,4"`` -> ``[0, 1, 4]`` (``"all"`` kept as a string when allowed)."""
    out: list = []
    for part in value.split(","):
        part = part.strip()
        if allow_all and part == "all":
            out.append("all")
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not an integer", param_hint=name) from None
        if out[-1] < 0:
            raise click.BadParameter(f"{part!r} must be >= 0", param_hint=name)
    return out
