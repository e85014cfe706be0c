"""MVTec 3D-AD reader (dataset kind ``mvtec3d``) and loose RGB-D / point-cloud inputs.

Layout: ``<root>/<cat>/{train,validation,test}/<label>/{rgb/*.png, xyz/*.tiff, gt/*.png}``.
Each ``Sample`` points at the RGB image, its mask (``gt``, test only) and carries
``extra={"xyz": Path}``. The normal pool is ``train/good`` (BTF fits on the training split
only; ``validation`` is left out, as in BTF).
"""

from __future__ import annotations

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


register_dataset("mvtec3d", load_mvtec3d)
