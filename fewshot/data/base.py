"""Dataset records shared by every reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fsiad.fewshot.errors import FsiadError


class DatasetError(FsiadError, ValueError):
    """Bad dataset input (missing/empty folder, unknown category, unreadable file, bad mask)."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: image file.
        label: 0 normal, 1 anomalous (``None`` for unlabeled targets).
        defect: defect type (``"good"`` for normal images).
        mask_path: ground-truth mask file (``None`` = no pixel labels; a normal image
            with ``category.has_masks`` counts as an all-zero mask).
        extra: reader-specific files (e.g. ``{"xyz": Path}`` for MVTec 3D-AD).
    """

    path: Path
    label: int | None = 0
    defect: str = "good"
    mask_path: Path | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Category:
    """One category: a pool of normal training images and a labelled test set.

    Attributes:
        name: category name (e.g. ``bottle``).
        train: normal images from which K-shot references are sampled.
        test: test images (normal and anomalous).
        has_masks: whether pixel ground truth exists (pixel metrics computed).
        root: folder of the category.
    """

    name: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool
    root: Path | None = None
