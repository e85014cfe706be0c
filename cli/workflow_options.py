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
from fsiad.fewshot.workflow.report import labels_advice
from fsiad.fewshot.workflow.rule_defaults import DEFAULT_RULE, DEFAULT_TARGET_FPR


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
        click.option("--threshold-rule", default=DEFAULT_RULE, show_default=True,
                     help="Rule over the leave-one-out scores of the references: 'tail' (robust tail fit at "
                          "--target-fpr, clearly odd references left out, placed between normals and synthetic defects: "
                          "favours recall), 'fpr' (the tail fit at --target-fpr alone: favours few false alarms), "
                          "'max' or 'mean+<k>std'."),
        click.option("--target-fpr", type=click.FloatRange(min=0, max=0.5, min_open=True, max_open=True),
                     default=DEFAULT_TARGET_FPR, show_default=True,
                     help="False-alarm rate on normal parts that the 'tail' rule aims at (its threshold "
                          "expects at most 2x this; 'fpr': this rate)."),
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
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON summary to stdout (counts, threshold, flagged images with areas and "
                          "boxes, metrics); everything else goes to stderr."),
        click.option("--fail-on-anomaly", is_flag=True,
                     help=f"Exit with status {EXIT_ANOMALY} when any target is flagged (for scripts)."),
        click.option("--no-folder-labels", is_flag=True,
                     help="Do not label targets from folder names (good/ ok/ normal/ nominal/ = normal, other "
                          "sub-folders = defect types)."),
    ])


EXIT_ANOMALY = 4


def log(line: str) -> None:
    click.echo(line, err=True)


def session_from(kw: dict[str, Any], quiet: bool = False):
    """Pop the ``reference_options`` entries from click kwargs into an ``InspectionSession``."""
    from fsiad.fewshot.workflow.session import InspectionSession

    return InspectionSession(kw.pop("method"), method_config_from(kw), shots=kw.pop("shots"), seed=kw.pop("seed"),
                             threshold=kw.pop("threshold"), threshold_rule=kw.pop("threshold_rule"),
                             target_fpr=kw.pop("target_fpr"),
                             progress=not quiet, log=log)


def print_results(results: Any, as_json: bool = False, fail_on_anomaly: bool = False) -> None:
    """Console summary of a ``Results`` with an output folder; exit 1 when nothing was readable.

    ``as_json``: the summary lines go to stderr and ``Results.summary()`` is the only stdout.
    ``fail_on_anomaly``: exit ``EXIT_ANOMALY`` when any target is flagged.
    """
    import json

    rec, out = results.record, results.out

    def echo(line: str) -> None:
        click.echo(line, err=as_json)

    echo(f"scored {rec['n_scored']} image(s) with {rec['method']['method']}, {len(rec['references'])} "
         f"reference(s); {rec['n_errors']} not scored" + (f" (see {out / 'errors.csv'})" if rec["n_errors"] else "")
         + (f"; {results.resumed} resumed from an earlier run" if results.resumed else ""))
    for line in results.calibration.warnings():
        echo(line)
    echo(results.calibration.description)
    if results.threshold is not None:
        flagged = results.flagged
        echo(f"{len(flagged)} of {len(results)} flagged as anomalous" + (":" if flagged else ""))
        for p in flagged[:20]:
            area = ""
            if p.evidence == "image-wide":
                area = f"  image-wide change (the image-level term adds {p.image_term:.4g})"
            elif p.region is not None:
                area = f"  defect {p.region.area_px} px ({p.region.area_pct:g} %)" if p.region.area_px else \
                    "  (no pixel above the pixel threshold)"
            echo(f"  {p.score:.6g}  {p.name}{area}")
        if len(flagged) > 20:
            echo(f"  ... and {len(flagged) - 20} more (see {out / 'scores.csv'})")
    src = (rec.get("settings") or {}).get("labels_source")
    m = results.metrics or {}
    if src and m:
        echo(f"labels from {src}")
    if "image_auroc" in m:
        echo(f"image AUROC over the {m['n_labelled']} scored labelled images: "
             f"{m['image_auroc']:.4f} (AP {m['image_ap']:.4f})")
    if "true_positives" in m:
        echo(f"at the threshold: TP {m['true_positives']}, FP {m['false_positives']}, "
             f"TN {m['true_negatives']}, FN {m['false_negatives']}")
    for line in labels_advice(m.get("from_labels")):
        echo(line)
    echo(f"report: {out / 'report.html'}  (scores: {out / 'scores.csv'}; {results.wall_s:.0f} s)")
    if as_json:
        click.echo(json.dumps(results.summary(), default=str))
    results.check_any_scored()
    if fail_on_anomaly and results.flagged:
        raise SystemExit(EXIT_ANOMALY)
