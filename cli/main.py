"""Entry point of the ``fsiad`` console script.

Sub-commands live in ``cli/cmd_*.py`` modules and are imported only when invoked: the table
below gives each command's module and one-line help, so ``fsiad --help`` imports no torch,
open_clip or transformers. Errors are translated in one place (``cli/errors.py``).
"""

from __future__ import annotations

import importlib
import sys

import click
from fsiad.cli.errors import run_app
from fsiad.cli.options import add_config_options

#: command name -> (module under fsiad.cli, attribute, one-line help shown by ``fsiad --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "score": ("cmd_score", "score", "Score images against K normal references (fit + predict)."),
    "fit": ("cmd_fit", "fit", "Fit a method on K normal references; save a model folder."),
    "predict": ("cmd_predict", "predict", "Score images with a saved model folder."),
    "export": ("cmd_export", "export", "Export a model folder to an ONNX bundle (onnxruntime only)."),
    "eval": ("cmd_eval", "eval_command", "Benchmark a method on a dataset (categories x shots x seeds)."),
    "methods": ("cmd_methods", "methods_command", "List methods, or one method's options."),
    "models": ("cmd_models", "models", "List encoders and whether their weights are here."),
    "inspect": ("cmd_inspect", "inspect_command", "Score one RGB-D sample or point cloud (3D branch)."),
    "prompts": ("cmd_prompts", "prompts_group", "Prompt files of the CLIP methods: show, validate, init, compare, explain."),
    "train": ("cmd_train", "train_group", "Meta-train a method's learned parts (RegAD) with the target held out."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return add_config_options(getattr(importlib.import_module(f"fsiad.cli.{module}"), attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, _, text) in COMMANDS.items()])


def _version() -> str:
    import fsiad

    return fsiad.__version__


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="fsiad")
@click.option("--debug", is_flag=True, help="Show full tracebacks (also FSIAD_DEBUG=1).")
def app(debug: bool) -> None:
    """fsiad: zero-shot and few-shot industrial anomaly detection (2D and RGB-D).

    \b
    Quick start:
      fsiad score --shots 4 --normal parts/good --out runs/a parts/incoming
    """


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
