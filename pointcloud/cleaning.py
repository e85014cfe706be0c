"""BTF point-cloud preprocessing: background-plane removal and largest-cluster selection.

Follows BTF (``utils/preprocessing.py``, reference-facts b.5): RANSAC plane fit
(``distance_threshold=0.004``, ``ransac_n=50``, ``num_iterations=1000``) on the valid points of
a 10-pixel image border, removal of every point within ``0.005`` of that plane, then DBSCAN
(``eps=0.006``, ``min_points=30``) keeping the largest cluster. Distances are in the cloud's
units (metres for MVTec 3D-AD). Deviations: BTF runs in place over the dataset and pads the
image to a multiple of 100; here the result is a keep-mask cached under
``$FSIAD_HOME/cache/pointcloud`` (default ``~/.cache/fsiad``), keyed by file content and
parameters, never written over the data, and no padding is needed. RANSAC is seeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fsiad.fewshot.fileio import atomic_path
from fsiad.pointcloud.io import PointCloudError, valid_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleaningParams:
    """Parameters of the BTF cleaning (defaults = BTF, metres)."""

    border: int = 10
    plane_threshold: float = 0.004
    ransac_n: int = 50
    ransac_iterations: int = 1000
    plane_margin: float = 0.005
    dbscan_eps: float = 0.006
    dbscan_min_points: int = 30
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where cleaned-cloud masks are cached (``$FSIAD_HOME/cache/pointcloud``)."""
    home = Path(os.environ.get("FSIAD_HOME", Path.home() / ".cache" / "fsiad"))
    return home / "cache" / "pointcloud"


def clean_mask(xyz: np.ndarray, params: CleaningParams = CleaningParams(), source: str | Path = "<array>") -> np.ndarray:
    """Keep-mask of BTF cleaning for an organized cloud.

    Args:
        xyz: float32 ``[H, W, 3]``, zeros = missing.
        params: cleaning parameters.
        source: name for messages.

    Returns:
        bool ``[H, W]``: valid points that are off the plane and in the largest cluster.
        The plane step is skipped (with a log message) when the border holds fewer than
        ``ransac_n`` valid points.
    """
    import open3d as o3d

    keep = valid_mask(xyz)
    b = params.border
    border = np.zeros(keep.shape, bool)
    border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
    border &= keep
    if border.sum() >= max(params.ransac_n, 3):
        o3d.utility.random.seed(params.seed)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[border].astype(np.float64)))
        plane, _ = pcd.segment_plane(params.plane_threshold, params.ransac_n, params.ransac_iterations)
        n, d = np.asarray(plane[:3], np.float64), float(plane[3])
        dist = np.abs(xyz.astype(np.float64) @ n + d) / max(np.linalg.norm(n), 1e-12)
        keep &= dist > params.plane_margin
    else:
        log.info("%s: only %d valid border points; plane removal skipped", source, int(border.sum()))
    if keep.sum() < params.dbscan_min_points:
        raise PointCloudError(f"{source}: only {int(keep.sum())} points left after plane removal; "
                              "check the cloud units or the cleaning parameters")
    idx = np.flatnonzero(keep)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.reshape(-1, 3)[idx].astype(np.float64)))
    labels = np.asarray(pcd.cluster_dbscan(params.dbscan_eps, params.dbscan_min_points))
    if (labels >= 0).sum() == 0:
        raise PointCloudError(f"{source}: DBSCAN found no cluster (eps={params.dbscan_eps}, "
                              f"min_points={params.dbscan_min_points}); check the cloud units")
    largest = np.bincount(labels[labels >= 0]).argmax()
    out = np.zeros(keep.size, bool)
    out[idx[labels == largest]] = True
    return out.reshape(keep.shape)


def cleaned_cloud(xyz: np.ndarray, params: CleaningParams = CleaningParams(), source: str | Path | None = None,
                  use_cache: bool = True) -> np.ndarray:
    """BTF-cleaned copy of ``xyz`` (removed points set to zero), cached by content + params."""
    name = str(source) if source is not None else "<array>"
    path = None
    if use_cache:
        digest = hashlib.sha1(np.ascontiguousarray(xyz, np.float32).tobytes()).hexdigest()[:20]
        path = cache_dir() / f"{digest}-{xyz.shape[0]}x{xyz.shape[1]}-{params.key()}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:  # never unpickle a cache entry
                    keep = np.unpackbits(z["keep"])[: xyz.shape[0] * xyz.shape[1]].astype(bool)
                return np.where(keep.reshape(xyz.shape[:2])[..., None], xyz, 0).astype(np.float32)
            except (OSError, ValueError, KeyError):
                log.warning("%s: unreadable cache entry %s, recomputing", name, path)
    keep = clean_mask(xyz, params, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npz") as tmp:  # np.savez appends .npz to other names
            np.savez_compressed(tmp, keep=np.packbits(keep.ravel()))
    return np.where(keep[..., None], xyz, 0).astype(np.float32)
