"""``fsiad eval``: benchmark a method on a dataset over categories x shots x seeds."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from fsiad.cli.options import int_list, method_config_from, method_options

SHOTS_HELP = (
    "Comma-separated shot counts; 'all' = the whole normal training pool of each category. "
    "Default: the method's regime (see `fsiad methods`): 'all' for full-data methods (padim, patchcore), "
    "'1,2,4,8' for few-shot methods, '0' for zero-shot ones. A count larger than a category's pool is refused; "
    "the results record the references actually used ('used' column)."
)


@click.command("eval")
@click.option("--method", "-m", required=True, help="Method name (see `fsiad methods`).")
@click.option("--dataset", "-d", required=True, help="Dataset kind: mvtec, visa, folder, textile, mvtec3d, ...")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dataset root (not needed for the embedded textile set).")
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--shots", default=None, metavar="K[,K...]|all", help=SHOTS_HELP)
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated seeds of the reference sampling (zero-shot runs use the first).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (results.csv/.md/.json), outside --root. A rerun resumes; runs with other "
                   "categories, shots or seeds add rows. One eval at a time per folder (locked).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images loaded at a time.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Also one log line per finished run (metrics and timings).")
@method_options
def eval_command(method: str, dataset: str, root: Path | None, categories: str | None, shots: str | None,
                 seeds: str, out: Path, chunk_size: int, quiet: bool, verbose: bool, **kwargs) -> None:
    """Evaluate METHOD on DATASET and write results.csv, results.md and results.json to OUT.

    Shows a progress bar per run (category x shots x seed, with ETA) and per phase (fit,
    predict, metrics) on stderr; the phase timings are kept in the results files.
    """
    from fsiad.fewshot.evaluation import EvalConfig, evaluate
    from fsiad.fewshot.evaluation.results import render_markdown
    from fsiad.fewshot.methods import method_names

    if method not in method_names():
        raise click.BadParameter(f"unknown method {method!r}; available: {', '.join(method_names())}",
                                 param_hint="--method")
    cfg = EvalConfig(
        method=method,
        dataset=dataset,
        root=root,
        out=out,
        categories=[c.strip() for c in categories.split(",")] if categories else None,
        shots=int_list(shots, "--shots", allow_all=True) if shots is not None else None,
        seeds=int_list(seeds, "--seeds"),
        method_config=method_config_from(kwargs),
        chunk_size=chunk_size,
    )
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    summary = evaluate(cfg, progress=_run_lines(verbose), show_bars=not quiet)
    click.echo(render_markdown(summary))
    click.echo(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.json'}")


def _run_lines(verbose: bool):
    """Per-run log lines on stderr (written around the progress bars) with -v, else none."""
    if not verbose:
        return lambda line: None
    from tqdm import tqdm

    return lambda line: tqdm.write(line, file=sys.stderr)


commands = [eval_command]
