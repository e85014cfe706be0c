"""Generic folder dataset.

Layout of one category (``root`` is a category, or holds several category folders)::

    <cat>/normal/*                 normal reference pool (``train/`` also accepted)
    <cat>/test/good/*              normal test images (``ok`` and ``normal`` also accepted)
    <cat>/test/<defect>/*          anomalous test images of type <defect>
    <cat>/test/*                   unlabeled test images (label None, defect "unknown")
    <cat>/masks/<defect>/<stem>[_mask].<ext>   optional masks (or masks/<stem>[_mask].<ext>)

With a ``masks/`` folder the category has pixel labels: every anomalous test image needs a
mask of the same stem; normal images may have none (all-normal). Masks use ``auto`` mode
(0/1 masks ``!= 0``, otherwise ``> 127``).
"""

from __future__ import annotations

from pathlib import Path

from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.common import NORMAL_NAMES, index_masks, list_images
from fsiad.fewshot.data.registry import register_dataset, require_dir, select_categories

_POOL_NAMES = ("normal", "train")


def _pool_dir(cat: Path) -> Path | None:
    return next((cat / n for n in _POOL_NAMES if (cat / n).is_dir()), None)


def read_folder_category(cat: Path) -> Category:
    """Read one generic folder category."""
    pool = _pool_dir(cat)
    if pool is None:
        raise DatasetError(
            f"{cat}: no normal/ folder (folder dataset layout: normal/, test/, optional masks/)"
        )
    train_files = list_images(pool, required=False)
    if pool.name == "train" and not train_files:  # train/good style
        train_files = [p for n in NORMAL_NAMES for p in list_images(pool / n, required=False)]
    if not train_files:
        where = f"{pool} (nor in {pool}/good)" if pool.name == "train" else str(pool)
        raise DatasetError(f"{where}: no image files for the normal reference pool")
    train = [Sample(p, 0, "good") for p in train_files]
    test_dir = require_dir(cat / "test", "test folder")
    mask_dir = cat / "masks"
    has_masks = mask_dir.is_dir()
    flat = index_masks(mask_dir) if has_masks else {}
    groups: list[tuple[Path, int | None, str]] = [
        (p, None, "unknown") for p in list_images(test_dir, required=False)
    ]
    for d in sorted(x for x in test_dir.iterdir() if x.is_dir() and not x.name.startswith(".")):
        normal = d.name in NORMAL_NAMES
        groups += [(p, 0 if normal else 1, "good" if normal else d.name) for p in list_images(d)]
    if not groups:
        raise DatasetError(f"{test_dir}: empty folder (no test images)")
    test = []
    sub_index: dict[str, dict[str, Path]] = {}
    for p, label, defect in groups:
        mask = None
        if has_masks:
            folder = p.parent.name if p.parent != test_dir else None
            if folder is not None and folder not in sub_index:
                sub_index[folder] = index_masks(mask_dir / folder)
            mask = (sub_index.get(folder) or {}).get(p.stem) or flat.get(p.stem)
            if mask is None and label == 1:
                raise DatasetError(f"{p}: no mask in {mask_dir} (expected masks/{defect}/{p.stem}.png)")
        test.append(Sample(p, label, defect, mask))
    return Category(cat.name, train, test, has_masks, cat)


def load_folder(root: Path | None, categories: list[str] | None = None) -> list[Category]:
    """Load a generic folder dataset (``root`` is one category or holds several)."""
    if root is None:
        raise DatasetError("folder: a dataset root is required")
    require_dir(root, "dataset root")
    if _pool_dir(root) is not None or (root / "test").is_dir():
        names = select_categories(root.parent, [root.name], categories)
        return [read_folder_category(root) for _ in names]
    available = [d.name for d in root.iterdir() if d.is_dir() and (d / "test").is_dir()]
    if not available:
        raise DatasetError(f"{root}: no folder-dataset categories found (expected normal/ and test/ folders)")
    return [read_folder_category(root / c) for c in select_categories(root, available, categories)]


register_dataset("folder", load_folder)
