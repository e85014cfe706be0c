"""Helpers shared by the folder-based readers (image listing, mask matching by stem)."""

from __future__ import annotations

from pathlib import Path

from fsiad.fewshot.data.base import DatasetError
from fsiad.fewshot.data.io import is_image_file

#: Folder names that mean "normal" in the supported layouts (MVTec/MPDD, BTAD, generic).
NORMAL_NAMES = ("good", "ok", "normal")


def list_images(folder: Path, required: bool = True) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Raises:
        DatasetError: ``required`` and the folder is missing or holds no image.
    """
    if not folder.is_dir():
        if required:
            raise DatasetError(f"{folder}: folder not found")
        return []
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if required and not files:
        raise DatasetError(f"{folder}: empty folder (no image files)")
    return files


def mask_key(path: Path) -> str:
    """Stem an image and its mask share: ``000_mask.png`` and ``000.bmp`` both give ``000``."""
    stem = path.stem
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def index_masks(folder: Path) -> dict[str, Path]:
    """Map image stem -> mask file for the masks in ``folder`` (raises on ambiguous stems)."""
    index: dict[str, Path] = {}
    for p in list_images(folder, required=False):
        key = mask_key(p)
        if key in index:
            raise DatasetError(f"{p}: two masks for image stem {key!r} (also {index[key].name})")
        index[key] = p
    return index


def match_masks(
    images: list[Path], masks: dict[str, Path], folder: Path, strict_orphans: bool = True
) -> list[Path]:
    """Return the mask of every image (by stem); missing masks and (optionally) orphan masks raise."""
    out = []
    for img in images:
        m = masks.get(img.stem)
        if m is None:
            raise DatasetError(
                f"{img}: no mask in {folder} (expected {img.stem}_mask.png or {img.stem}.<ext>)"
            )
        out.append(m)
    if strict_orphans:
        stems = {img.stem for img in images}
        orphans = sorted(k for k in masks if k not in stems)
        if orphans:
            raise DatasetError(f"{masks[orphans[0]]}: mask without a matching image in the test folder")
    return out
