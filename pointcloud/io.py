"""Reading and writing point clouds: organized xyz TIFFs, ``.ply`` / ``.pcd`` files, RGB-D pairs.

Organized clouds are ``[H, W, 3]`` float32 arrays (MVTec 3D-AD convention): a point per pixel,
``(0, 0, 0)`` where the sensor returned nothing. Non-finite values are treated as missing.
Every error is a one-line ``PointCloudError`` naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fsiad.fewshot.data.base import DatasetError
from fsiad.fewshot.fileio import atomic_write

POINT_SUFFIXES = (".ply", ".pcd")


class PointCloudError(DatasetError):
    """Unreadable, empty or degenerate point cloud (message names the file)."""


def valid_mask(xyz: np.ndarray) -> np.ndarray:
    """``[..., 3]`` -> bool ``[...]``: finite and not the all-zero "missing" marker."""
    finite = np.isfinite(xyz).all(axis=-1)
    return finite & (np.abs(np.nan_to_num(xyz)).sum(axis=-1) > 0)


def clean_organized(xyz: np.ndarray, source: str | Path = "<array>", min_points: int = 1) -> np.ndarray:
    """Validate an organized cloud and set non-finite points to zero (= missing).

    Args:
        xyz: ``[H, W, 3]`` array.
        source: file name used in error messages.
        min_points: minimum number of valid points.

    Returns:
        float32 ``[H, W, 3]`` with zeros for missing points.
    """
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise PointCloudError(f"{source}: expected an organized point cloud HxWx3, got shape {xyz.shape}")
    if xyz.shape[0] == 0 or xyz.shape[1] == 0:
        raise PointCloudError(f"{source}: empty point cloud (shape {xyz.shape})")
    xyz = np.asarray(xyz, dtype=np.float32)
    ok = valid_mask(xyz)
    n = int(ok.sum())
    if n < min_points:
        kind = "all points are zero/NaN (no valid point)" if n == 0 else f"only {n} valid points"
        raise PointCloudError(f"{source}: {kind}; need at least {min_points}")
    out = np.where(ok[..., None], xyz, 0.0).astype(np.float32)
    return out


def read_xyz_tiff(path: str | Path, min_points: int = 1) -> np.ndarray:
    """Read an organized point cloud TIFF (``HxWx3`` float) -> float32 ``[H, W, 3]``, zeros = missing.

    The grid size declared in the header is checked against ``max_image_pixels()`` (default
    64 MP, ``FSIAD_MAX_IMAGE_PIXELS``) before anything is decoded.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise PointCloudError(f"{path}: point-cloud file not found")
    from fsiad.fewshot.data.io import check_tiff_size

    try:  # header size first: a TIFF declaring a huge grid is refused before decoding
        check_tiff_size(path, what="point-cloud TIFF")
    except DatasetError as exc:
        raise PointCloudError(str(exc)) from None
    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise PointCloudError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 0, -1)  # planar storage
    if not np.issubdtype(arr.dtype, np.floating):
        raise PointCloudError(f"{path}: expected float xyz values, got dtype {arr.dtype}")
    return clean_organized(arr, path, min_points)


def write_xyz_tiff(path: str | Path, xyz: np.ndarray) -> Path:
    """Write an organized ``[H, W, 3]`` float32 cloud as TIFF (MVTec 3D-AD format)."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(xyz, dtype=np.float32))
    return path


def read_point_file(path: str | Path, min_points: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a ``.ply`` / ``.pcd`` / xyz ``.tiff`` file as an unorganized cloud.

    Returns:
        ``(points [P, 3] float32, colors [P, 3] float32 in [0, 1] or None)``; missing and
        non-finite points are dropped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        xyz = read_xyz_tiff(path, min_points)
        ok = valid_mask(xyz)
        return xyz[ok], None
    if suffix not in POINT_SUFFIXES:
        raise PointCloudError(f"{path}: unsupported point-cloud format {suffix!r}; use .ply, .pcd or .tiff")
    if not path.is_file():
        raise PointCloudError(f"{path}: point-cloud file not found")
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(path))
    pts = np.asarray(pcd.points, dtype=np.float32)
    if pts.size == 0:
        raise PointCloudError(f"{path}: empty point cloud (no points read; corrupt or not a point cloud)")
    cols = np.asarray(pcd.colors, dtype=np.float32) if pcd.has_colors() else None
    ok = valid_mask(pts)
    if int(ok.sum()) < min_points:
        raise PointCloudError(f"{path}: only {int(ok.sum())} valid (finite, non-zero) points; need at least {min_points}")
    return pts[ok], (cols[ok] if cols is not None else None)


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None,
              scores: np.ndarray | None = None) -> Path:
    """Write a binary little-endian ``.ply``.

    Args:
        points: ``[P, 3]`` coordinates.
        colors: optional ``[P, 3]`` in ``[0, 1]`` (stored as uchar ``red green blue``).
        scores: optional ``[P]`` stored as a float property ``anomaly_score`` (a scalar field
            in CloudCompare / MeshLab; open3d ignores it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if scores is not None:
        fields.append(("anomaly_score", "<f4"))
    rec = np.empty(len(pts), dtype=fields)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if colors is not None:
        c = (np.clip(np.asarray(colors, np.float32).reshape(-1, 3), 0, 1) * 255 + 0.5).astype(np.uint8)
        rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    if scores is not None:
        rec["anomaly_score"] = np.asarray(scores, np.float32).reshape(-1)
    types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(pts)}"]
    header += [f"property {types[t]} {n}" for n, t in fields] + ["end_header", ""]
    with atomic_write(path, "wb") as fh:
        fh.write("\n".join(header).encode("ascii"))
        fh.write(rec.tobytes())
    return path


def read_ply_vertices(path: str | Path) -> np.ndarray:
    """Vertices of a binary little-endian ``.ply`` written by ``write_ply`` as a structured array."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise PointCloudError(f"{path}: not a PLY file")
    lines = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise PointCloudError(f"{path}: only binary little-endian PLY is supported here")
    types = {"float": "<f4", "uchar": "u1", "double": "<f8", "int": "<i4"}
    n = next(int(ln.split()[2]) for ln in lines if ln.startswith("element vertex"))
    fields = [(ln.split()[2], types[ln.split()[1]]) for ln in lines if ln.startswith("property ")]
    return np.frombuffer(data, dtype=fields, count=n, offset=end + len(b"end_header\n"))
