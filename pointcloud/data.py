"""MVTec 3D-AD reader (dataset kind ``mvtec3d``) and loose RGB-D / point-cloud inputs.

Layout: ``<root>/<cat>/{train,validation,test}/<label>/{rgb/*.png, xyz/*.tiff, gt/*.png}``.
Each ``Sample`` points at the RGB image, its mask (``gt``, test only) and carries
``extra={"xyz": Path}``. The normal pool is ``train/good`` (BTF fits on the training split
only; ``validation`` is left out, as in BTF).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.registry import register_dataset, require_dir, select_categories

XYZ_SUFFIXES = (".tiff", ".tif")


def _split_samples(split_dir: Path, with_gt: bool) -> list[Sample]:
    out: list[Sample] = []
    labels = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for label_dir in labels:
        rgb_dir, xyz_dir = label_dir / "rgb", label_dir / "xyz"
        if not rgb_dir.is_dir() or not xyz_dir.is_dir():
            raise DatasetError(f"{label_dir}: expected rgb/ and xyz/ sub-folders (MVTec 3D-AD layout)")
        rgbs = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
        if not rgbs:
            raise DatasetError(f"{rgb_dir}: no .png images")
        good = label_dir.name == "good"
        for rgb in rgbs:
            xyz = next((xyz_dir / (rgb.stem + s) for s in XYZ_SUFFIXES if (xyz_dir / (rgb.stem + s)).is_file()), None)
            if xyz is None:
                raise DatasetError(f"{rgb}: no matching point cloud {xyz_dir / (rgb.stem + '.tiff')}")
            gt = label_dir / "gt" / f"{rgb.stem}.png"
            mask = gt if with_gt and gt.is_file() else None
            if with_gt and not good and mask is None:
                raise DatasetError(f"{rgb}: anomalous sample without ground truth {gt}")
            out.append(Sample(rgb, 0 if good else 1, "good" if good else label_dir.name, mask, {"xyz": xyz}))
    return out


def load_mvtec3d(root: Path | None, categories: list[str] | None = None) -> list[Category]:
    """Load MVTec 3D-AD categories (``train/good`` pool, labelled ``test`` set with masks)."""
    if root is None:
        raise DatasetError("mvtec3d: a dataset root is required (--root)")
    require_dir(root, "MVTec 3D-AD root")
    available = [p.name for p in root.iterdir() if (p / "train").is_dir() and (p / "test").is_dir()]
    cats = []
    for name in select_categories(root, available, categories):
        d = root / name
        train = _split_samples(require_dir(d / "train"), with_gt=False)
        train = [s for s in train if s.label == 0]
        test = _split_samples(require_dir(d / "test"), with_gt=True)
        if not train:
            raise DatasetError(f"{d / 'train' / 'good'}: no normal training samples")
        cats.append(Category(name, train, test, has_masks=True, root=d))
    return cats


def rgbd_sample(rgb: str | Path | None, xyz: str | Path, mask: str | Path | None = None) -> Sample:
    """A loose RGB-D pair (or a point cloud alone: ``rgb=None``) as a ``Sample``."""
    xyz = Path(xyz)
    if not xyz.is_file():
        raise DatasetError(f"{xyz}: point-cloud file not found")
    path = Path(rgb) if rgb is not None else xyz
    if rgb is not None and not path.is_file():
        raise DatasetError(f"{path}: image not found")
    return Sample(path, None, "unknown", Path(mask) if mask else None, {"xyz": xyz, "has_rgb": rgb is not None})


def folder_samples(directory: str | Path) -> list[Sample]:
    """Normal references in a folder: MVTec 3D-style ``rgb/`` + ``xyz/`` (also under ``good/``),
    ``name.png`` + ``name.tiff`` pairs, or ``.ply`` / ``.pcd`` / xyz ``.tiff`` files alone."""
    d = require_dir(Path(directory), "normal-reference folder")
    for sub in (d, d / "good", d / "train" / "good"):
        if (sub / "rgb").is_dir() and (sub / "xyz").is_dir():
            return _pairs_from(sub / "rgb", sub / "xyz")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    out = []
    for p in files:
        suf = p.suffix.lower()
        if suf in (".ply", ".pcd"):
            out.append(rgbd_sample(None, p))
        elif suf in XYZ_SUFFIXES:
            png = p.with_suffix(".png")
            out.append(rgbd_sample(png if png.is_file() else None, p))
    if not out:
        raise DatasetError(f"{d}: no point clouds (.ply, .pcd, xyz .tiff or rgb/ + xyz/ folders)")
    return out


def _pairs_from(rgb_dir: Path, xyz_dir: Path) -> list[Sample]:
    out = []
    for rgb in sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")):
        xyz = next((xyz_dir / (rgb.stem + s) for s in XYZ_SUFFIXES if (xyz_dir / (rgb.stem + s)).is_file()), None)
        if xyz is None:
            raise DatasetError(f"{rgb}: no matching point cloud in {xyz_dir}")
        out.append(rgbd_sample(rgb, xyz))
    if not out:
        raise DatasetError(f"{rgb_dir}: no .png images")
    return out


POINT_SUFFIXES = (".ply", ".pcd")
_LAYOUT_DIRS = {"rgb", "xyz", "gt"}


def _rgbd_below(d: Path) -> list[Sample]:
    """RGB-D samples below folder ``d``: MVTec 3D-style ``rgb/`` + ``xyz/`` folders (with ``gt/``
    masks when present) at any depth, and loose point clouds (``.ply``, ``.pcd``, xyz ``.tiff``
    with an optional ``name.png``), in sorted order."""
    if (d / "rgb").is_dir() and (d / "xyz").is_dir():
        out = _pairs_from(d / "rgb", d / "xyz")
        return [replace(s, mask_path=(d / "gt" / f"{s.path.stem}.png") if (d / "gt" / f"{s.path.stem}.png").is_file()
                        else None) for s in out]
    out: list[Sample] = []
    entries = sorted(p for p in d.iterdir() if not p.name.startswith("."))
    for p in entries:
        if p.is_file() and p.suffix.lower() in POINT_SUFFIXES:
            out.append(rgbd_sample(None, p))
        elif p.is_file() and p.suffix.lower() in XYZ_SUFFIXES:
            png = p.with_suffix(".png")
            out.append(rgbd_sample(png if png.is_file() else None, p))
    for p in entries:
        if p.is_dir() and p.name not in _LAYOUT_DIRS:
            out.extend(_rgbd_below(p))
    return out


def _rgbd_file(p: Path) -> Sample:
    """One named file: a point cloud, an xyz ``.tiff`` (RGB ``name.png`` beside it, if any) or an
    RGB image whose point cloud is ``name.tiff`` beside it or ``../xyz/name.tiff`` (MVTec 3D)."""
    suf = p.suffix.lower()
    if suf in POINT_SUFFIXES:
        return rgbd_sample(None, p)
    if suf in XYZ_SUFFIXES and p.parent.name != "rgb":
        png = p.parent.parent / "rgb" / f"{p.stem}.png" if p.parent.name == "xyz" else p.with_suffix(".png")
        return rgbd_sample(png if png.is_file() else None, p)
    for folder in (p.parent, p.parent.parent / "xyz"):
        xyz = next((folder / (p.stem + s) for s in XYZ_SUFFIXES if (folder / (p.stem + s)).is_file()), None)
        if xyz is not None and xyz != p:
            gt = p.parent.parent / "gt" / f"{p.stem}.png"
            return rgbd_sample(p, xyz, gt if p.parent.name == "rgb" and gt.is_file() else None)
    raise DatasetError(f"{p}: no point cloud for this image (expected {p.with_suffix('.tiff').name} beside it "
                       f"or in ../xyz/)")


def collect_rgbd(paths: Sequence[str | Path], labels: dict[Path, int] | None = None) -> list[Sample]:
    """RGB-D samples from files and folders as a user names them (``--normal``, TARGETS).

    Folders are searched at any depth for MVTec 3D-AD ``rgb/`` + ``xyz/`` (+ ``gt/``) folders
    (``CAT/train/good``, ``CAT/test`` with its defect folders, a whole category) and for loose
    point clouds; files are taken one by one (``_rgbd_file``). Labels come from ``labels``
    (resolved RGB or point-cloud path -> 0/1, as ``read_labels_csv``), else ``None``.
    Order: the order of ``paths``, each folder sorted; duplicates keep their first place.

    Raises:
        DatasetError: a path does not exist, a folder holds no RGB-D sample, an image has no
            point cloud.
    """
    labels = labels or {}
    out: list[Sample] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = _rgbd_below(p)
            if not found:
                raise DatasetError(f"{p}: no RGB-D samples (rgb/ + xyz/ folders, .ply, .pcd or xyz .tiff files)")
        elif p.is_file():
            found = [_rgbd_file(p)]
        else:
            raise DatasetError(f"{p}: not found")
        for s in found:
            key = Path(s.path).resolve()
            if key in seen:
                continue
            seen.add(key)
            label = labels.get(key, labels.get(Path(s.extra["xyz"]).resolve()))
            defect = "good" if label == 0 else ("unknown" if label is None else "anomalous")
            out.append(replace(s, label=label, defect=defect))
    return out


register_dataset("mvtec3d", load_mvtec3d)
