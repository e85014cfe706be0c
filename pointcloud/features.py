"""3D features on organized clouds: nearest resize, FPFH, pooling to the 2D grid, depth images.

FPFH follows BTF (reference-facts b.5): missing points dropped, normals from
``KDTreeSearchParamHybrid(radius=2*voxel, max_nn=30)``, FPFH from
``KDTreeSearchParamHybrid(radius=5*voxel, max_nn=100)`` with ``voxel=0.05`` (units of the
cloud; metres for MVTec 3D-AD, where the radii exceed the object so ``max_nn`` governs), no
down-sampling, 33-d features scattered back onto the pixel grid (zeros where missing), then
``AvgPool2d(3, stride=1)`` and adaptive average pooling to the feature grid (28x28 at 224).
Deviation: normals are oriented towards the camera (origin) before FPFH, because open3d
leaves their sign arbitrary and FPFH angles depend on it (``orient_normals=False`` = BTF).

Speed (``FPFHParams.max_points``, method option ``fpfh_max_points``): when a cloud has more
valid points than ``max_points``, FPFH runs on a voxel-grid downsampled copy (voxel centroids,
edge chosen from the grid's median point pitch so that about ``max_points`` voxels remain) and
every valid pixel takes the feature of the voxel that contains it. Open3d's FPFH cost grows
with the number of points (``max_nn`` neighbours each), so a 224x224 sample (~49k points)
drops from ~3 s to ~0.5 s at 8,000 voxels; the accuracy of the synthetic benchmark is kept
(``BENCHMARKS.md``). ``max_points=0`` is BTF's full resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from fsiad.pointcloud.io import PointCloudError, valid_mask

FPFH_DIM = 33


@dataclass(frozen=True)
class FPFHParams:
    """FPFH settings (defaults = BTF)."""

    voxel: float = 0.05
    normal_max_nn: int = 30
    feature_max_nn: int = 100
    orient_normals: bool = True
    max_points: int = 0  # 0 = full resolution (BTF); else voxel-downsample to about this many points

    def describe(self) -> dict:
        d = asdict(self)
        d.update(normal_radius=2 * self.voxel, feature_radius=5 * self.voxel)
        return d


def resize_organized(xyz: np.ndarray, size: int, resize: int | None = None) -> np.ndarray:
    """Nearest resize of ``[H, W, 3]`` to ``resize`` (default ``size``), centre crop to ``size``.

    Same geometry as ``fewshot.preprocess.Preprocess`` with nearest interpolation (BTF).
    """
    side = resize or size
    t = torch.from_numpy(np.ascontiguousarray(xyz, np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(side, side), mode="nearest")[0].permute(1, 2, 0)
    off = (side - size) // 2
    return t[off : off + size, off : off + size].contiguous().numpy()


def grid_pitch(xyz: np.ndarray, ok: np.ndarray | None = None) -> float:
    """Median 3D distance between horizontally or vertically adjacent valid pixels of ``[H, W, 3]``."""
    ok = valid_mask(xyz) if ok is None else ok
    d = [np.linalg.norm(xyz[:, 1:] - xyz[:, :-1], axis=-1)[ok[:, 1:] & ok[:, :-1]],
         np.linalg.norm(xyz[1:] - xyz[:-1], axis=-1)[ok[1:] & ok[:-1]]]
    d = np.concatenate(d)
    d = d[d > 0]
    return float(np.median(d)) if d.size else 0.0


def voxel_downsample(pts: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-grid centroids of ``pts [P, 3]`` -> ``(centroids [V, 3] float64, voxel index [P] of every point)``."""
    q = np.floor((pts - pts.min(0)) / voxel).astype(np.int64)
    dims = q.max(0) + 1
    key = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    _, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    cnt = np.bincount(inv).astype(np.float64)
    cent = np.stack([np.bincount(inv, weights=pts[:, k]) for k in range(3)], 1) / cnt[:, None]
    return cent, inv


def _voxels_for(pts: np.ndarray, pitch: float, max_points: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Downsample ``pts`` to at most about ``max_points`` voxels (a few refinements of the edge)."""
    if pitch <= 0:
        return None
    voxel = pitch * max(1.0, (len(pts) / max_points) ** 0.5)
    for _ in range(4):
        cent, inv = voxel_downsample(pts, voxel)
        if len(cent) <= 1.1 * max_points:
            return (cent, inv) if len(cent) >= 5 else None
        voxel *= (len(cent) / max_points) ** 0.5
    return cent, inv


def _fpfh_points(pts: np.ndarray, params: FPFHParams) -> np.ndarray:
    """Open3d normals + FPFH of ``pts [P, 3]`` (float64) -> float32 ``[P, 33]``."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * params.voxel, max_nn=params.normal_max_nn))
    if params.orient_normals:
        pcd.orient_normals_towards_camera_location(np.zeros(3))
    feat = o3d.pipelines.registration.compute_fpfh_feature(
        pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * params.voxel, max_nn=params.feature_max_nn))
    return np.nan_to_num(np.asarray(feat.data, dtype=np.float32).T)


def fpfh_organized(xyz: np.ndarray, params: FPFHParams = FPFHParams(), source: str = "<array>") -> np.ndarray:
    """Per-pixel FPFH of an organized cloud (voxel-downsampled when ``params.max_points`` is exceeded).

    Args:
        xyz: float32 ``[H, W, 3]``, zeros = missing.

    Returns:
        float32 ``[H, W, 33]`` (zeros at missing points).
    """
    ok = valid_mask(xyz)
    n = int(ok.sum())
    if n < 5:
        raise PointCloudError(f"{source}: only {n} valid points at this resolution; FPFH needs at least 5")
    pts = xyz[ok].astype(np.float64)
    out = np.zeros((*xyz.shape[:2], FPFH_DIM), np.float32)
    vox = _voxels_for(pts, grid_pitch(xyz, ok), params.max_points) if 0 < params.max_points < n else None
    if vox is None:
        out[ok] = _fpfh_points(pts, params)
    else:
        cent, inv = vox
        out[ok] = _fpfh_points(cent, params)[inv]
    return out


def pool_to_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """BTF patch pooling: ``[N, H, W, C]`` -> 3x3 average (stride 1, no padding) -> ``[N, grid, grid, C]``."""
    x = maps.permute(0, 3, 1, 2).float()
    if min(x.shape[-2:]) >= 3:
        x = F.avg_pool2d(x, 3, stride=1)
    return F.adaptive_avg_pool2d(x, grid).permute(0, 2, 3, 1).contiguous()


def depth_image(xyz: np.ndarray) -> np.ndarray:
    """Depth map as a 3-channel uint8 image: z min-max scaled over valid points, near = bright.

    BTF's "depth iNet" feeds the z channel repeated three times; missing points stay 0.
    """
    ok = valid_mask(xyz)
    z = xyz[..., 2]
    out = np.zeros(z.shape, np.float32)
    if ok.any():
        lo, hi = float(z[ok].min()), float(z[ok].max())
        out[ok] = (hi - z[ok]) / max(hi - lo, 1e-12)
    return np.repeat((out * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def organize_points(points: np.ndarray, size: int, colors: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Project an unorganized cloud onto an ``size x size`` grid along z (orthographic).

    The square x-y bounding box is binned; each cell keeps its point nearest to the camera
    (smallest z). Used to run grid-based methods on ``.ply`` / ``.pcd`` files.

    Args:
        points: float ``[P, 3]``.
        colors: optional float ``[P, 3]`` in ``[0, 1]``.

    Returns:
        ``(xyz [S, S, 3] float32 zeros = empty, rgb [S, S, 3] uint8 or None, cell [P] int64)``
        where ``cell`` is the flat grid index of every input point.
    """
    pts = np.asarray(points, np.float32)
    lo = pts[:, :2].min(0)
    extent = float((pts[:, :2].max(0) - lo).max()) or 1.0
    ij = np.clip(((pts[:, :2] - lo) / extent * size).astype(np.int64), 0, size - 1)
    cell = ij[:, 1] * size + ij[:, 0]  # row = y, column = x
    order = np.lexsort((pts[:, 2], cell))  # by cell, then nearest z first
    first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
    xyz = np.zeros((size * size, 3), np.float32)
    xyz[cell[first]] = pts[first]
    rgb = None
    if colors is not None:
        rgb = np.zeros((size * size, 3), np.uint8)
        rgb[cell[first]] = (np.clip(colors[first], 0, 1) * 255 + 0.5).astype(np.uint8)
        rgb = rgb.reshape(size, size, 3)
    return xyz.reshape(size, size, 3), rgb, cell
