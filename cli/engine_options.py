"""``--engine`` options of ``fsiad predict``, and the dispatch to the bundle runner / Ray engine.

``fsiad predict --model BUNDLE`` (a folder holding ``bundle.json``, from ``fsiad export``) runs
with onnxruntime only (``fsiad.fewshot.export.runner``); ``--engine ray`` scores on Ray Data
(``fsiad.fewshot.export.ray_engine``) with a bundle or a model folder. Both write the per-image
outputs of ``fsiad predict`` (no report.html). Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

ENGINES = ("local", "ray")


def engine_options(f: Callable) -> Callable:
    for opt in reversed([
        click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                     help="local: this process; ray: Ray Data actor pool (pip install 'fsiad[ray]')."),
        click.option("--address", default=None,
                     help="Ray cluster to join (ray://HOST:10001, HOST:6379 or auto); default: a local Ray."),
        click.option("--num-actors", type=click.IntRange(min=1), default=None,
                     help="Ray actors, each loading the model once [default: the cluster's CPUs, or GPUs]."),
    ]):
        f = opt(f)
    return f


def dispatch(model_dir: Path, targets: tuple[Path, ...], out: Path, *, engine: str, address: str | None,
             num_actors: int | None, labels: Path | None, demo: str | None, chunk_size: int | None,
             overwrite: bool, quiet: bool, device: str | None, batch_size: int | None, threshold: float | None,
             log: Callable[[str], None]) -> bool:
    """Run the bundle runner or the Ray engine when asked; ``False`` = the torch workflow's turn."""
    from fsiad.fewshot.errors import OptionError
    from fsiad.fewshot.export.bundle import is_bundle

    bundle = is_bundle(model_dir)
    if engine == "local" and not bundle:
        if address or num_actors:
            raise OptionError("--address / --num-actors need --engine ray")
        return False
    if demo:
        raise OptionError(f"--demo is not available with {'--engine ray' if engine == 'ray' else 'a bundle'}")
    if threshold is not None:
        raise OptionError(f"--threshold is not available with {'--engine ray' if engine == 'ray' else 'a bundle'}; "
                          "it uses the model's threshold")
    if engine == "ray":
        from fsiad.fewshot.export.ray_engine import predict_ray

        record = predict_ray(model_dir, targets, out, labels=labels, address=address, num_actors=num_actors,
                             batch_size=batch_size, device=device, overwrite=overwrite, progress=not quiet, log=log)
    else:
        if address or num_actors:
            raise OptionError("--address / --num-actors need --engine ray")
        from fsiad.fewshot.export.runner import BundleModel, default_threads

        model = BundleModel.load(model_dir, device=device, batch_size=batch_size, threads=default_threads())
        record = model.predict(targets, out, labels=labels, chunk_size=chunk_size, overwrite=overwrite,
                               progress=not quiet, log=log)
    _summary(record, out)
    return True


def _summary(record: dict[str, Any], out: Path) -> None:
    s = record["settings"]
    rate = record.get("images_per_s")
    click.echo(f"scored {record['n_scored']} image(s) with {s['engine']}; {record['n_errors']} not scored"
               + (f" (see {out / 'errors.csv'})" if record["n_errors"] else "")
               + (f"; {record['resumed']} resumed from an earlier run" if record["resumed"] else "")
               + (f"; {rate:.2f} images/s" if rate else ""))
    click.echo(f"scores: {out / 'scores.csv'}  (maps: {out / 'maps'}; {record['wall_s']:.0f} s)")
    if record["n_scored"] == 0 and record["n_errors"]:
        from fsiad.fewshot.data.base import DatasetError

        raise DatasetError(f"none of the {record['n_errors']} target(s) could be read; see {out / 'errors.csv'}")
