"""``fsiad predict``: score targets with a model folder from ``fsiad fit`` (same outputs as ``score``).

Parsing only: the work is ``fsiad.fewshot.workflow.session.FittedModel.predict``.
"""

from __future__ import annotations

from pathlib import Path

import click
from fsiad.cli.engine_options import dispatch, engine_options
from fsiad.cli.options import run_info
from fsiad.cli.workflow_options import log, print_results, target_options
from fsiad.fewshot.workflow.demo import DEMOS


@click.command("predict")
@target_options
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder written by `fsiad fit`.")
@click.option("--threshold", type=float, default=None, help="Override the model's threshold.")
@click.option("--demo", type=click.Choice(DEMOS), default=None, help="Score the embedded demo's target mix.")
@click.option("--device", default=None, help="Override the model's device (cpu, cuda[:i]).")
@click.option("--batch-size", type=int, default=None, help="Override the model's batch size.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Encoder weight file, if it moved (its checksum must match the model's).")
@engine_options
def predict(targets: tuple[Path, ...], out: Path, labels: Path | None, demo_size: int, chunk_size: int | None,
            overwrite: bool, quiet: bool, as_json: bool, fail_on_anomaly: bool, no_folder_labels: bool,
            model_dir: Path, threshold: float | None, demo: str | None,
            device: str | None, batch_size: int | None, weights: str | None, engine: str = "local",
            address: str | None = None, num_actors: int | None = None) -> None:
    """Score TARGET images with a model folder from `fsiad fit` (same outputs and OUT rules as `fsiad score`).

    --model may also be a bundle from `fsiad export` (runs with onnxruntime only), and
    --engine ray scores on a Ray cluster (TARGETs may then also be globs, .txt lists, or
    CSV / Parquet files with a `path` column).
    """
    if dispatch(model_dir, targets, out, engine=engine, address=address, num_actors=num_actors, labels=labels,
                demo=demo, chunk_size=chunk_size, overwrite=overwrite, quiet=quiet, device=device,
                batch_size=batch_size, threshold=threshold, log=log):
        return
    from fsiad.fewshot.workflow.session import FittedModel

    model = FittedModel.load(model_dir, threshold=threshold, device=device, batch_size=batch_size, weights=weights)
    results = model.predict(targets, out=out, labels=labels, demo=demo, demo_size=demo_size, chunk_size=chunk_size,
                            overwrite=overwrite, progress=not quiet, log=log, run_info=run_info(),
                            folder_labels=not no_folder_labels)
    print_results(results, as_json, fail_on_anomaly)
