"""``fsiad export``: write a model folder from ``fsiad fit`` as an ONNX bundle for onnxruntime-only hosts.

Parsing only: the work is ``fsiad.fewshot.export.exporter.export_model``.
"""

from __future__ import annotations

from pathlib import Path

import click
from fsiad.cli.workflow_options import log


@click.command("export")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder written by `fsiad fit` (knn, patchcore or padim).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder to write (bundle.json, features.onnx, arrays).")
@click.option("--opset", type=click.IntRange(min=13, max=21), default=17, show_default=True,
              help="ONNX opset of the feature graph.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle folder.")
def export(model_dir: Path, out: Path, opset: int, overwrite: bool) -> None:
    """Export a fitted model to OUT: the encoder and feature extraction as ONNX (fixed input side),
    the memory bank / Gaussian statistics as .npy arrays, and bundle.json (opset, geometry,
    preprocessing, threshold, sha256 of every file).

    Score with it where only onnxruntime, numpy and Pillow are installed:

    \b
      fsiad export --model models/parts --out bundles/parts
      fsiad predict --model bundles/parts --out runs/line incoming/
    """
    from fsiad.fewshot.export.exporter import export_model

    bundle = export_model(model_dir, out, opset=opset, overwrite=overwrite, log=log)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    click.echo(f"exported {bundle['method']} to {out} ({size:.1f} MB; input "
               f"{bundle['preprocess']['size']} px, opset {bundle['graph']['opset']}, {bundle['export_s']:.1f} s)")
