"""The ``scores.csv`` format shared by every writer (the torch workflow, the torch-free bundle
runner and the Ray engine) and the one decision rule. Imports nothing heavy.

Columns (``SCORE_FIELDS``): ``path, name, score, decision, label, defect_type, width, height,
defect_area_px, defect_area_pct, defect_boxes, image_term``; writers that compute no pixel
decisions (the bundle runner) leave the last seven empty. ``image_term`` is the part of the
score that comes from an image-level term rather than the map (``knn``'s global term), empty
for methods without one; ``evidence`` says what carried a flag.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

SCORE_FIELDS = ("path", "name", "score", "decision", "label", "defect_type", "width", "height", "defect_area_px",
                "defect_area_pct", "defect_boxes", "image_term")


def decision(score: float, threshold: float | None) -> str | None:
    """``anomalous`` when ``score >= threshold``, ``normal`` below, ``None`` without threshold."""
    if threshold is None:
        return None
    return "anomalous" if score >= threshold else "normal"


def evidence(score: float, image_term: float | None, threshold: float | None) -> str | None:
    """What carried a flag: ``image-wide`` when the score is at or above ``threshold`` only with
    its image-level term (a texture-wide change: the map need not show a region), ``region``
    for any other flagged image, ``None`` when not flagged."""
    if decision(score, threshold) != "anomalous":
        return None
    if image_term is not None and image_term > 0 and score - image_term < threshold:  # type: ignore[operator]
        return "image-wide"
    return "region"


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
