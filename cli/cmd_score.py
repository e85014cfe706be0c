"""``fsiad score``: fit on K normal references and score targets in one go (``fit`` + ``predict``).

Parsing only: the work is ``fsiad.fewshot.workflow.session.InspectionSession.score``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from fsiad.cli.options import run_info
from fsiad.cli.workflow_options import print_results, reference_options, session_from, target_options


@click.command("score")
@target_options
@reference_options
def score(targets: tuple[Path, ...], out: Path, normal: Path | None, demo: str | None, labels: Path | None,
          demo_size: int, chunk_size: int | None, overwrite: bool, quiet: bool, as_json: bool, fail_on_anomaly: bool,
          no_folder_labels: bool, **kwargs: Any) -> None:
    """Score TARGET images (files or folders) against K normal references; write OUT/report.html.

    OUT gets scores.csv (score, decision, label, defect area and boxes), maps/<name>.npy,
    masks/<name>.png (flagged images), overlays/<name>.png and thumbs/ at each image's own size,
    report.html, run.json, and errors.csv listing unreadable targets. Without --threshold, the
    threshold comes from leave-one-out scores of the K references (each scored by the method
    fitted on the other K-1) and of lighting/noise views of them: --threshold-rule tail (default)
    fits a robust log-normal tail at --target-fpr (default 5 %), leaving out (and naming) a
    reference unlike the others, and places the threshold between the normals and synthetic
    defects, not lower than the fit's point at 2 x the target; decision: anomalous when
    score >= threshold. Targets under good/ ok/ normal/ nominal/ and sibling defect folders are
    labelled from the folder names.

    OUT may not overlap --normal, TARGETs or --labels, and is locked while a run uses it.
    scores.csv grows as targets are scored, so an interrupted run keeps its scores; rerunning
    with the same OUT and settings resumes (only unscored targets are scored). OUT holding a run
    with other settings is refused unless --overwrite.

    \b
    Examples:
      fsiad score --shots 4 --demo textile --out runs/demo
      fsiad score --shots 4 --normal good/ --out runs/a new_images/
    """
    session = session_from(kwargs, quiet)
    results = session.score(targets, normal=normal, demo=demo, out=out, labels=labels, demo_size=demo_size,
                            chunk_size=chunk_size, overwrite=overwrite, run_info=run_info(),
                            folder_labels=not no_folder_labels)
    print_results(results, as_json, fail_on_anomaly)
