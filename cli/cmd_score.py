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
          demo_size: int, chunk_size: int | None, overwrite: bool, quiet: bool, **kwargs: Any) -> None:
    """Score TARGET images (files or folders) against K normal references; write OUT/report.html.

    OUT gets scores.csv (path, name, score, decision, label), maps/<name>.npy, overlays/<name>.png,
    report.html (self-contained), run.json, and errors.csv listing unreadable targets. Without
    --threshold, the threshold is the --threshold-rule (default max) of the leave-one-out scores
    of the K references (each scored by the method fitted on the other K-1); decision: anomalous
    when score >= threshold.

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
                            chunk_size=chunk_size, overwrite=overwrite, run_info=run_info())
    print_results(results)
