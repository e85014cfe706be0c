"""The ``scores.csv`` format shared by every writer (the torch workflow, the torch-free bundle
runner and the Ray engine) and the one decision rule. Imports nothing heavy.

Columns (``SCORE_FIELDS``): ``path, name, score, decision, label, defect_type, width, height,
defect_area_px, defect_area_pct, defect_boxes``; writers that compute no pixel decisions (the
bundle runner) leave the last six empty.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

SCORE_FIELDS = ("path", "name", "score", "decision", "label", "defect_type", "width", "height", "defect_area_px",
                "defect_area_pct", "defect_boxes")


def decision(score: float, threshold: float | None) -> str | None:
    """``anomalous`` when ``score >= threshold``, ``normal`` below, ``None`` without threshold."""
    if threshold is None:
        return None
    return "anomalous" if score >= threshold else "normal"


def read_score_rows(path: str | Path) -> list[dict[str, str]]:
    """The complete rows of an existing ``scores.csv`` (``[]`` when absent or unreadable)."""
    try:
        with Path(path).open(newline="") as fh:
            return [r for r in csv.DictReader(fh) if r.get("path") and r.get("name") and r.get("score")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def pad_row(values: Sequence[str]) -> list[str]:
    """A row of the first columns, padded with empty values to ``SCORE_FIELDS``."""
    return [*values, *[""] * (len(SCORE_FIELDS) - len(values))]
