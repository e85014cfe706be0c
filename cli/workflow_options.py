"""Click option groups and the summary printer shared by ``fsiad score`` / ``fit`` / ``predict``.

The commands only parse; everything else is ``fsiad.fewshot.workflow.session``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from fsiad.cli.options import method_config_from, method_options
from fsiad.fewshot.workflow.demo import DEFAULT_DEMO_SIZE, DEMOS


def _apply(f: Callable, opts: list[Callable]) -> Callable:
    for opt in reversed(opts):
        f = opt(f)
    return f


def reference_options(f: Callable) -> Callable:
    """Method, references and threshold (builds an ``InspectionSession`` with ``session_from``)."""
    return _apply(method_options(f), [
        click.option("--shots", "-k", type=click.IntRange(min=0), required=True,
                     help="Number K of normal reference images (0 = zero-shot methods only)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference draw."),
        click.option("--method", "-m", default="knn", show_default=True, help="Method name."),
        click.option("--normal", type=click.Path(path_type=Path), default=None,
                     help="Folder of normal images (searched recursively) to draw the K references from."),
        click.option("--demo", type=click.Choice(DEMOS), default=None,
                     help="Use the embedded demo set (references from its nominal pool, targets a seeded mix)."),
        click.option("--threshold", type=float, default=None,
                     help="Decision threshold on the image score (default: calibrated on the references)."),
        click.option("--threshold-rule", default="max", show_default=True,
                     help="Rule over the leave-one-out scores of the references: 'max' or 'mean+<k>std'."),
    ])


def target_options(f: Callable) -> Callable:
    """TARGETS, --out, labels, demo size, chunking, --overwrite, --quiet."""
    return _apply(f, [
        click.argument("targets", nargs=-1, type=click.Path(path_type=Path)),
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Output folder (locked while in use; a rerun with the same settings resumes)."),
        click.option("--labels", type=click.Path(path_type=Path), default=None,
                     help="CSV with columns path,label (0/1 or normal/anomalous) for AUROC / AP / confusion."),
        click.option("--demo-size", type=click.IntRange(min=2), default=DEFAULT_DEMO_SIZE, show_default=True,
                     help="Number of demo targets (half nominal, half local/global defects)."),
        click.option("--chunk-size", type=click.IntRange(min=1), default=None,
                     help="Targets loaded at a time [score: 32; predict: the model's]."),
        click.option("--overwrite", is_flag=True,
                     help="Replace the outputs of a run with different settings in --out (default: refuse)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ])


def log(line: str) -> None:
    click.echo(line, err=True)


def session_from(kw: dict[str, Any], quiet: bool = False):
    """Pop the ``reference_options`` entries from click kwargs into an ``InspectionSession``."""
    from fsiad.fewshot.workflow.session import InspectionSession

    return InspectionSession(kw.pop("method"), method_config_from(kw), shots=kw.pop("shots"), seed=kw.pop("seed"),
                             threshold=kw.pop("threshold"), threshold_rule=kw.pop("threshold_rule"),
                             progress=not quiet, log=log)


def print_results(results: Any) -> None:
    """Console summary of a ``Results`` with an output folder; exit 1 when nothing was readable."""
    rec, out = results.record, results.out
    click.echo(f"scored {rec['n_scored']} image(s) with {rec['method']['method']}, {len(rec['references'])} "
               f"reference(s); {rec['n_errors']} not scored" + (f" (see {out / 'errors.csv'})" if rec["n_errors"] else "")
               + (f"; {results.resumed} resumed from an earlier run" if results.resumed else ""))
    click.echo(results.calibration.description)
    m = results.metrics or {}
    if "image_auroc" in m:
        click.echo(f"image AUROC over the {m['n_labelled']} scored labelled images: "
                   f"{m['image_auroc']:.4f} (AP {m['image_ap']:.4f})")
    if "true_positives" in m:
        click.echo(f"at the threshold: TP {m['true_positives']}, FP {m['false_positives']}, "
                   f"TN {m['true_negatives']}, FN {m['false_negatives']}")
    click.echo(f"report: {out / 'report.html'}  (scores: {out / 'scores.csv'}; {results.wall_s:.0f} s)")
    results.check_any_scored()
