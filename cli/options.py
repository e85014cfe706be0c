"""Click options shared by several commands (one definition each)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import click
from fsiad.fewshot.device import DEVICE_HELP, PRECISIONS


def method_options(f: Callable | None = None, *, exclude: tuple[str, ...] = ()) -> Callable:
    """Options that build a ``MethodConfig`` (use ``method_config_from(kwargs)``).

    ``@method_options`` or ``@method_options(exclude=("prompts_file",))`` for a command whose
    own arguments replace one of them."""
    if f is None:
        return lambda g: method_options(g, exclude=exclude)
    opts = [
        click.option("--encoder", default=None, help="Encoder name (default: the method's). See `fsiad models`."),
        click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="Explicit weight file for the encoder (first source of the resolver)."),
        click.option("--device", default="auto", show_default=True, help=DEVICE_HELP),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help="Encoder autocast precision (auto: bf16 on CUDA, fp32 elsewhere)."),
        click.option("--image-size", type=click.IntRange(min=1), default=None,
                     help="Working side in pixels (default: the method's)."),
        click.option("--class-name", default=None, help="Object name for text prompts (default: category name)."),
        click.option("--prompts", "prompts_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Prompt ensemble file (YAML) for prompt-based methods."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Images per encoder forward."),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Method-specific option (value parsed as JSON when possible); repeatable."),
        click.option("--allow-random", is_flag=True, hidden=True,
                     help="Random-init encoder weights (tests and timing only)."),
    ]
    for opt in reversed(opts):
        dest = _dest(opt)
        if dest not in exclude:
            f = opt(f)
    return f


def _dest(decorator: Callable) -> str:
    """The parameter name a ``click.option(...)`` decorator declares."""
    def probe() -> None:
        pass

    return decorator(probe).__click_params__[-1].name


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


def method_config_from(kwargs: dict[str, Any]):
    """Pop the ``method_options`` entries from click kwargs into a ``MethodConfig``."""
    from fsiad.fewshot.methods.base import MethodConfig

    return MethodConfig(
        encoder=kwargs.pop("encoder"),
        weights=kwargs.pop("weights"),
        device=kwargs.pop("device"),
        precision=kwargs.pop("precision"),
        image_size=kwargs.pop("image_size"),
        class_name=kwargs.pop("class_name", None) or "object",
        prompts=kwargs.pop("prompts_file", None),
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


# -- configuration files --------------------------------------------------------------------
CONFIG_KEY = "cli_config"  # where run.json keeps the effective command-line configuration


def _plain(value: Any) -> Any:
    """Click values -> YAML/JSON-friendly values (paths as strings, tuples as lists)."""
    from pathlib import PurePath

    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def read_config_file(path: str, command: click.Command) -> dict[str, Any]:
    """A YAML/JSON mapping of this command's options (``--config``) -> click ``default_map``.

    Keys are option names with ``-`` or ``_`` (``threshold-rule`` or ``threshold_rule``); a
    ``run.json`` written by an earlier run is accepted (its ``cli_config``). ``options`` may
    be a mapping (``{layers: [11]}``) or a list of ``KEY=VALUE`` strings.
    """
    import yaml
    from fsiad.fewshot.errors import OptionError

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as e:
        raise OptionError(f"--config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise OptionError(f"--config {path}: not valid YAML/JSON{where}") from None
    if isinstance(data, dict) and isinstance(data.get("settings"), dict) and CONFIG_KEY in data["settings"]:
        data = data["settings"]  # a run.json: its settings hold the command's configuration
    if isinstance(data, dict) and CONFIG_KEY in data:
        if not isinstance(data[CONFIG_KEY], dict):
            raise OptionError(f"--config {path}: this run.json records no command-line configuration")
        data = data[CONFIG_KEY]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptionError(f"--config {path}: expected a mapping of option names to values")
    names = {p.name for p in command.params if p.name not in ("config_file", "print_config", "help")}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_").lstrip("_")
        if name not in names:
            raise OptionError(f"--config {path}: unknown option {key!r} for `fsiad {command.name}`; "
                              f"known: {', '.join(sorted(names))}")
        if name == "options" and isinstance(value, dict):
            import json

            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        out[name] = value
    return out


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        ctx.default_map = {**(ctx.default_map or {}), **read_config_file(value, ctx.command)}
    return value


@contextlib.contextmanager
def verbosity(quiet: bool, verbose: bool) -> Iterator[None]:
    """``-q``: no progress bars (tqdm's ``TQDM_DISABLE``) and warnings only; ``-v``: fsiad's INFO
    log lines as well. The same in every command; restored when the command returns."""
    import logging
    import os

    logger = logging.getLogger("fsiad")
    old_level, old_env = logger.level, os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(format="%(message)s")
    logger.setLevel(logging.WARNING if quiet or not verbose else logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        if quiet:
            if old_env is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = old_env


def add_config_options(cmd: click.Command) -> click.Command:
    """Give ``cmd`` (and the sub-commands of a group) the options every command has:
    ``--config FILE``, ``--print-config``, ``-q/--quiet`` and ``-v/--verbose``.

    ``--config`` loads option values from a YAML/JSON file (flags on the command line win);
    ``--print-config`` prints the effective configuration as YAML and exits without running.
    The effective configuration of a run is in ``click.get_current_context().meta[CONFIG_KEY]``
    (commands store it in ``run.json`` so that ``--config run.json`` repeats the run).
    ``-q`` / ``-v`` behave the same everywhere (``verbosity``); a command that declares
    its own ``--quiet`` / ``--verbose`` also receives them.
    """
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            add_config_options(sub)
        return cmd
    if getattr(cmd, "_fsiad_config", False) or cmd.callback is None:
        return cmd
    own = {p.name for p in cmd.params}
    cmd.params.extend([
        click.Option(["--config", "config_file"], type=click.Path(dir_okay=False), is_eager=True,
                     expose_value=True, callback=_load_config,
                     help="YAML/JSON file of option values (or a run.json); flags override it."),
        click.Option(["--print-config"], is_flag=True,
                     help="Print the effective configuration as YAML and exit."),
    ])
    if "quiet" not in own:
        cmd.params.append(click.Option(["--quiet", "-q"], is_flag=True, help="No progress bars, warnings only."))
    if "verbose" not in own:
        cmd.params.append(click.Option(["--verbose", "-v"], is_flag=True, help="Also fsiad's log lines."))
    inner = cmd.callback

    def callback(*args: Any, config_file: str | None = None, print_config: bool = False, **kwargs: Any) -> Any:
        plain = _plain(kwargs)
        if print_config:
            import yaml

            click.echo(yaml.safe_dump(plain, sort_keys=False, default_flow_style=False), nl=False)
            return None
        quiet, verbose = bool(kwargs.get("quiet")), bool(kwargs.get("verbose"))
        for name in ("quiet", "verbose"):
            if name not in own:
                kwargs.pop(name, None)
        click.get_current_context().meta[CONFIG_KEY] = plain
        with verbosity(quiet, verbose):
            return inner(*args, **kwargs)

    cmd.callback = callback
    cmd._fsiad_config = True  # type: ignore[attr-defined]
    return cmd


def run_info() -> dict[str, Any]:
    """What a command records about its own invocation in ``run.json``: the argument list and
    the effective configuration (``--config run.json`` repeats the run)."""
    import sys

    ctx = click.get_current_context(silent=True)
    return {"argv": sys.argv[1:], CONFIG_KEY: (ctx.meta.get(CONFIG_KEY) if ctx is not None else None)}
