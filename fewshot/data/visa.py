"""VisA reader: raw layout plus the official ``split_csv/1cls.csv`` split.

Layout::

    <root>/split_csv/1cls.csv               columns object,split,label,image,mask
    <root>/<cat>/Data/Images/Normal/*.JPG
    <root>/<cat>/Data/Images/Anomaly/*.JPG
    <root>/<cat>/Data/Masks/Anomaly/*.png   class-index masks, binarised ``!= 0``

Paths in the CSV are relative to the root; ``split`` is ``train``/``test`` and ``label``
is ``normal``/``anomaly``. Anomalous samples get defect type ``anomaly`` (the 1-class
split has no defect names) and ``extra={"mask_mode": "nonzero"}``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.registry import register_dataset, require_dir, select_categories

SPLIT_FILE = Path("split_csv") / "1cls.csv"
_COLUMNS = ("object", "split", "label", "image", "mask")


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path}: VisA split file not found (expected split_csv/1cls.csv under the root)"
        )
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(_COLUMNS)}"
            )
        rows = [{k: (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    return rows


def _existing(root: Path, rel: str, csv_path: Path, line: int) -> Path:
    p = root / rel
    if not p.is_file():
        raise DatasetError(f"{p}: file listed in {csv_path} line {line} not found")
    return p


def load_visa(root: Path | None, categories: list[str] | None = None) -> list[Category]:
    """Load VisA categories using ``split_csv/1cls.csv``."""
    if root is None:
        raise DatasetError("visa: a dataset root is required")
    require_dir(root, "dataset root")
    csv_path = root / SPLIT_FILE
    rows = _read_rows(csv_path)
    available = sorted({r["object"] for r in rows})
    names = select_categories(root, available, categories)
    wanted = set(names)
    cats = {n: Category(n, [], [], True, root / n) for n in names}
    for line, r in enumerate(rows, start=2):
        if r["object"] not in wanted:
            continue
        split, label = r["split"].lower(), r["label"].lower()
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            raise DatasetError(f"{csv_path} line {line}: bad split/label {r['split']!r}/{r['label']!r}")
        img = _existing(root, r["image"], csv_path, line)
        cat = cats[r["object"]]
        if split == "train":
            if label != "normal":
                raise DatasetError(f"{csv_path} line {line}: anomalous image in the train split")
            cat.train.append(Sample(img, 0, "good"))
        elif label == "normal":
            cat.test.append(Sample(img, 0, "good"))
        else:
            if not r["mask"]:
                raise DatasetError(f"{csv_path} line {line}: anomalous image {img} has no mask")
            mask = _existing(root, r["mask"], csv_path, line)
            if mask.stem != img.stem:
                raise DatasetError(f"{mask}: mask stem differs from its image {img.name}")
            cat.test.append(Sample(img, 1, "anomaly", mask, {"mask_mode": "nonzero"}))
    for cat in cats.values():
        if not cat.test:
            raise DatasetError(f"{csv_path}: no test images for category {cat.name!r}")
        cat.train.sort(key=lambda s: str(s.path))
        cat.test.sort(key=lambda s: (s.label, str(s.path)))
    return [cats[n] for n in names]


register_dataset("visa", load_visa)
