"""``fsiad eval``: benchmark a method on a dataset over categories x shots x seeds."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from fsiad.cli.options import int_list, method_config_from, method_options
from fsiad.fewshot.data.base import DatasetError


@click.command("eval")
@click.option("--method", "-m", required=True, help="Method name (see `fsiad methods`).")
@click.option("--dataset", "-d", required=True, help="Dataset kind: mvtec, visa, folder, textile, mvtec3d, ...")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dataset root (not needed for the embedded textile set).")
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--shots", default="0", show_default=True,
              help="Comma-separated shot counts; 'all' = the whole normal training set (full-data).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds of the reference sampling.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (results.csv/.md/.json; a rerun resumes).")
@click.option("--chunk-size", type=int, default=32, show_default=True, help="Images loaded at a time.")
@method_options
def eval_command(method: str, dataset: str, root: Path | None, categories: str | None, shots: str, seeds: str,
                 out: Path, chunk_size: int, **kwargs) -> None:
    """Evaluate METHOD on DATASET and write results.csv, results.md and results.json to OUT."""
    from fsiad.fewshot.evaluation import EvalConfig, evaluate
    from fsiad.fewshot.methods import method_names

    import_plugins()
    if method not in method_names():
        raise click.BadParameter(f"unknown method {method!r}; available: {', '.join(method_names())}",
                                 param_hint="--method")
    cfg = EvalConfig(
        method=method,
        dataset=dataset,
        root=root,
        out=out,
        categories=[c.strip() for c in categories.split(",")] if categories else None,
        shots=int_list(shots, "--shots", allow_all=True),
        seeds=int_list(seeds, "--seeds"),
        method_config=method_config_from(kwargs),
        chunk_size=chunk_size,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = evaluate(cfg, progress=click.echo)
    except (DatasetError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo((out / "results.md").read_text())
    click.echo(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.json'}")
    if not summary["categories"]:
        raise click.ClickException("no run finished")


def import_plugins() -> None:
    """Register the optional branches (the point-cloud methods and the mvtec3d dataset)."""
    import fsiad.pointcloud  # noqa: F401  (registers methods and datasets on import)


commands = [eval_command]
