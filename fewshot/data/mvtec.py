"""MVTec AD layout reader (also MPDD and BTAD).

Layout (``root`` holds category folders, or is itself one category)::

    <cat>/train/good/*.png                  normal pool (BTAD: train/ok)
    <cat>/test/good/*.png                   normal test images (BTAD: test/ok)
    <cat>/test/<defect>/*.png               anomalous test images (BTAD: test/ko)
    <cat>/ground_truth/<defect>/<stem>_mask.png   masks (BTAD: <stem>.png or .bmp)

A category without ``ground_truth/`` has no pixel labels; with it, every anomalous test
image must have a mask with the same stem (and every mask an image).
"""

from __future__ import annotations

from pathlib import Path

from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.common import NORMAL_NAMES, index_masks, list_images, match_masks
from fsiad.fewshot.data.registry import register_dataset, require_dir, select_categories


def _is_category(path: Path) -> bool:
    return (path / "test").is_dir()


def read_mvtec_category(cat_dir: Path) -> Category:
    """Read one MVTec-layout category folder."""
    train: list[Sample] = []
    train_dir = cat_dir / "train"
    if train_dir.is_dir():
        normal_dirs = [d for d in sorted(train_dir.iterdir()) if d.is_dir() and d.name in NORMAL_NAMES]
        if not normal_dirs:
            raise DatasetError(f"{train_dir}: no normal folder (expected train/good or train/ok)")
        for d in normal_dirs:
            train += [Sample(p, 0, "good") for p in list_images(d)]
    test_dir = require_dir(cat_dir / "test", "test folder")
    groups = [d for d in sorted(test_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not groups:
        raise DatasetError(f"{test_dir}: empty folder (no test sub-folders)")
    gt_dir = cat_dir / "ground_truth"
    has_masks = gt_dir.is_dir()
    test: list[Sample] = []
    for d in groups:
        images = list_images(d)
        normal = d.name in NORMAL_NAMES
        masks: list[Path | None] = [None] * len(images)
        if has_masks and (not normal or (gt_dir / d.name).is_dir()):
            mdir = gt_dir / d.name
            if not mdir.is_dir():
                raise DatasetError(f"{mdir}: mask folder not found for test/{d.name}")
            masks = list(match_masks(images, index_masks(mdir), mdir))
        label, defect = (0, "good") if normal else (1, d.name)
        test += [Sample(p, label, defect, m) for p, m in zip(images, masks, strict=True)]
    return Category(cat_dir.name, train, test, has_masks, cat_dir)


def load_mvtec(root: Path | None, categories: list[str] | None = None) -> list[Category]:
    """Load MVTec AD / MPDD / BTAD categories under ``root`` (or ``root`` itself)."""
    if root is None:
        raise DatasetError("mvtec: a dataset root is required")
    require_dir(root, "dataset root")
    if _is_category(root):
        names = select_categories(root.parent, [root.name], categories)
        return [read_mvtec_category(root) for _ in names]
    available = [d.name for d in root.iterdir() if d.is_dir() and _is_category(d)]
    if not available:
        raise DatasetError(f"{root}: no MVTec-layout categories found (folders with a test/ sub-folder)")
    return [read_mvtec_category(root / c) for c in select_categories(root, available, categories)]


register_dataset("mvtec", load_mvtec)
