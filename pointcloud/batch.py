"""RGB-D batches: what the point-cloud methods' ``prepare`` returns and ``fit``/``predict`` take."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.preprocess import Preprocess
from fsiad.pointcloud.cleaning import CleaningParams, cleaned_cloud
from fsiad.pointcloud.features import organize_points, resize_organized
from fsiad.pointcloud.io import POINT_SUFFIXES, read_point_file, read_xyz_tiff, valid_mask


@dataclass
class RGBDBatch:
    """Aligned RGB images and organized clouds at the method's working side ``S``.

    Attributes:
        rgb: ``[N, 3, S, S]`` float in ``[0, 1]`` (zeros when a sample has no colour).
        xyz: ``[N, S, S, 3]`` float32 organized points, zeros = missing.
        sources: file of each sample (for messages).
        has_rgb: ``[N]`` bool, whether the sample came with colour.
        features: per-modality precomputed patch features ``[N, g, g, C]`` (e.g. ``fpfh``).
    """

    rgb: torch.Tensor
    xyz: torch.Tensor
    sources: list[str]
    has_rgb: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def __getitem__(self, idx: slice) -> RGBDBatch:
        return RGBDBatch(self.rgb[idx], self.xyz[idx], self.sources[idx], self.has_rgb[idx],
                         {k: v[idx] for k, v in self.features.items()})

    @staticmethod
    def concat(parts: list[RGBDBatch]) -> RGBDBatch:
        keys = set(parts[0].features).intersection(*(p.features for p in parts)) if parts else set()
        return RGBDBatch(torch.cat([p.rgb for p in parts]), torch.cat([p.xyz for p in parts]),
                         [s for p in parts for s in p.sources], torch.cat([p.has_rgb for p in parts]),
                         {k: torch.cat([p.features[k] for p in parts]) for k in keys})


def iter_rgbd(batches: RGBDBatch | Iterable[RGBDBatch] | None) -> Iterator[RGBDBatch]:
    """Yield the batches of a single batch, an iterable of batches or ``None`` (nothing)."""
    if batches is None:
        return
    if isinstance(batches, RGBDBatch):
        yield batches
        return
    if isinstance(batches, torch.Tensor):
        raise TypeError("point-cloud methods take RGBDBatch objects (use method.prepare(samples)), not image tensors")
    for b in batches:
        yield from iter_rgbd(b)


def load_rgbd(sample: Sample, grid_side: int, cleaning: CleaningParams | None = None,
              zero_rgb_background: bool = True) -> tuple[np.ndarray | None, np.ndarray, str]:
    """Read one sample at full resolution.

    ``.ply`` / ``.pcd`` clouds are projected onto a ``grid_side`` grid (``organize_points``).

    Returns:
        ``(rgb uint8 [H, W, 3] or None, xyz float32 [H, W, 3], source name)``.
    """
    from fsiad.fewshot.data.io import read_image

    xyz_path = (sample.extra or {}).get("xyz")
    if xyz_path is None:
        if Path(sample.path).suffix.lower() in POINT_SUFFIXES + (".tiff", ".tif"):
            xyz_path = sample.path
        else:
            raise DatasetError(f"{sample.path}: no point cloud for this sample (Sample.extra['xyz'] missing)")
    xyz_path = Path(xyz_path)
    rgb = None
    if xyz_path.suffix.lower() in POINT_SUFFIXES:
        pts, cols = read_point_file(xyz_path, min_points=5)
        xyz, rgb, _ = organize_points(pts, grid_side, cols)
    else:
        xyz = read_xyz_tiff(xyz_path, min_points=5)
    if Path(sample.path) != xyz_path and (sample.extra or {}).get("has_rgb", True):
        rgb = read_image(sample.path)
        if rgb.shape[:2] != xyz.shape[:2]:
            raise DatasetError(f"{sample.path}: image size {rgb.shape[1]}x{rgb.shape[0]} differs from point cloud "
                               f"{xyz_path} ({xyz.shape[1]}x{xyz.shape[0]})")
    if cleaning is not None:
        before = valid_mask(xyz)
        xyz = cleaned_cloud(xyz, cleaning, xyz_path)
        if rgb is not None and zero_rgb_background:
            rgb = rgb.copy()
            rgb[before & ~valid_mask(xyz)] = 0
    return rgb, xyz, str(xyz_path)


def build_batch(samples: list[Sample], pre: Preprocess, cleaning: CleaningParams | None = None,
                zero_rgb_background: bool = True) -> RGBDBatch:
    """Load samples and bring RGB (``pre``) and xyz (nearest, same geometry) to ``pre.size``."""
    rgbs, xyzs, srcs, has = [], [], [], []
    for s in samples:
        rgb, xyz, src = load_rgbd(s, pre.size, cleaning, zero_rgb_background)
        has.append(rgb is not None)
        rgbs.append(rgb if rgb is not None else np.zeros((*xyz.shape[:2], 3), np.uint8))
        xyzs.append(torch.from_numpy(resize_organized(xyz, pre.size, pre.resize)))
        srcs.append(src)
    s = pre.size
    return RGBDBatch(
        pre.images(rgbs) if rgbs else torch.empty(0, 3, s, s),
        torch.stack(xyzs) if xyzs else torch.empty(0, s, s, 3),
        srcs,
        torch.tensor(has, dtype=torch.bool),
    )
