"""Point-cloud IO and robustness: organized TIFFs, PLY/PCD, NaN / all-zero / empty clouds."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from fsiad.fewshot.data.base import DatasetError
from fsiad.pointcloud.data import rgbd_sample
from fsiad.pointcloud.features import organize_points
from fsiad.pointcloud.io import (
    PointCloudError,
    clean_organized,
    read_ply_vertices,
    read_point_file,
    read_xyz_tiff,
    write_ply,
    write_xyz_tiff,
)


def _cloud(h=8, w=9, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0.1, 1.0, (h, w, 3)).astype(np.float32)
    xyz[0, 0] = 0.0
    return xyz


def test_tiff_roundtrip_and_nan_masked(tmp_path):
    xyz = _cloud()
    xyz[1, 2] = [np.nan, 0.5, 0.5]
    xyz[2, 3, 2] = np.inf
    p = write_xyz_tiff(tmp_path / "a.tiff", xyz)
    out = read_xyz_tiff(p)
    assert out.shape == xyz.shape and out.dtype == np.float32
    assert (out[1, 2] == 0).all() and (out[2, 3] == 0).all() and (out[0, 0] == 0).all()
    ok = np.isfinite(xyz).all(-1)
    np.testing.assert_array_equal(out[ok], xyz[ok])


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_all_invalid_tiff_names_file(tmp_path, fill):
    p = write_xyz_tiff(tmp_path / "bad.tiff", np.full((6, 6, 3), fill, np.float32))
    with pytest.raises(PointCloudError, match=r"bad\.tiff: all points are zero/NaN"):
        read_xyz_tiff(p)


def test_bad_tiffs(tmp_path):
    tifffile.imwrite(tmp_path / "int.tiff", np.ones((4, 4, 3), np.uint8))
    with pytest.raises(PointCloudError, match=r"int\.tiff: expected float"):
        read_xyz_tiff(tmp_path / "int.tiff")
    tifffile.imwrite(tmp_path / "gray.tiff", np.ones((4, 4), np.float32))
    with pytest.raises(PointCloudError, match=r"gray\.tiff: expected an organized point cloud HxWx3"):
        read_xyz_tiff(tmp_path / "gray.tiff")
    (tmp_path / "junk.tiff").write_bytes(b"not a tiff at all")
    with pytest.raises(PointCloudError, match=r"junk\.tiff: cannot read TIFF"):
        read_xyz_tiff(tmp_path / "junk.tiff")
    with pytest.raises(PointCloudError, match=r"missing\.tiff: point-cloud file not found"):
        read_xyz_tiff(tmp_path / "missing.tiff")
    assert issubclass(PointCloudError, DatasetError)


def test_min_points_and_empty_shape():
    with pytest.raises(PointCloudError, match="x.tiff: only 1 valid points"):
        clean_organized(np.pad(np.ones((1, 1, 3), np.float32), ((0, 2), (0, 2), (0, 0))), "x.tiff", min_points=5)
    with pytest.raises(PointCloudError, match="empty point cloud"):
        clean_organized(np.zeros((0, 4, 3), np.float32), "e.tiff")


def test_ply_roundtrip_with_scores(tmp_path):
    pts = np.random.default_rng(1).uniform(-1, 1, (50, 3)).astype(np.float32)
    cols = np.random.default_rng(2).uniform(0, 1, (50, 3)).astype(np.float32)
    scores = np.linspace(0, 1, 50, dtype=np.float32)
    p = write_ply(tmp_path / "c.ply", pts, cols, scores)
    v = read_ply_vertices(p)
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), pts)
    np.testing.assert_array_equal(v["anomaly_score"], scores)
    back, bcols = read_point_file(p)  # open3d reads it and ignores the extra property
    np.testing.assert_allclose(back, pts, atol=1e-6)
    assert np.abs(bcols - cols).max() <= 1 / 255 + 1e-6


def test_empty_and_degenerate_point_files(tmp_path):
    (tmp_path / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                                        "property float y\nproperty float z\nend_header\n")
    with pytest.raises(PointCloudError, match=r"empty\.ply: empty point cloud"):
        read_point_file(tmp_path / "empty.ply")
    (tmp_path / "garbage.pcd").write_bytes(b"\x00\x01garbage")
    with pytest.raises(PointCloudError, match=r"garbage\.pcd: empty point cloud"):
        read_point_file(tmp_path / "garbage.pcd")
    write_ply(tmp_path / "zeros.ply", np.zeros((10, 3), np.float32))
    with pytest.raises(PointCloudError, match=r"zeros\.ply: only 0 valid"):
        read_point_file(tmp_path / "zeros.ply")
    with pytest.raises(PointCloudError, match=r"c\.xyz: unsupported point-cloud format"):
        read_point_file(tmp_path / "c.xyz")


def test_pcd_with_nan_points_dropped(tmp_path):
    pts = np.random.default_rng(3).uniform(0.1, 1, (20, 3))
    lines = [" ".join(f"{v:.6f}" for v in p) for p in pts]
    lines[4] = "nan nan nan"
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
              "WIDTH 20\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 20\nDATA ascii\n")
    (tmp_path / "n.pcd").write_text(header + "\n".join(lines) + "\n")
    out, cols = read_point_file(tmp_path / "n.pcd")
    assert out.shape == (19, 3) and np.isfinite(out).all() and cols is None
    np.testing.assert_allclose(out, np.delete(pts, 4, axis=0), atol=1e-5)


def test_organize_points_keeps_nearest_z_per_cell():
    pts = np.array([[0.0, 0.0, 2.0], [0.01, 0.01, 1.0], [1.0, 1.0, 3.0], [0.5, 0.0, 5.0]], np.float32)
    cols = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
    xyz, rgb, cell = organize_points(pts, 4, cols)
    assert xyz.shape == (4, 4, 3) and rgb.shape == (4, 4, 3)
    assert cell.tolist() == [0, 0, 15, 2]
    np.testing.assert_array_equal(xyz[0, 0], pts[1])  # nearer to the camera wins
    np.testing.assert_array_equal(rgb[0, 0], [0, 255, 0])
    np.testing.assert_array_equal(xyz[3, 3], pts[2])
    np.testing.assert_array_equal(xyz[0, 2], pts[3])
    assert int((np.abs(xyz).sum(-1) > 0).sum()) == 3


@pytest.mark.parametrize("kind", ["nan", "zeros", "empty_ply"])
def test_methods_reject_bad_clouds_with_one_line(tmp_path, kind):
    from fsiad.fewshot.methods import MethodConfig, create_method

    if kind == "empty_ply":
        p = tmp_path / "bad.ply"
        p.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                     "property float z\nend_header\n")
    else:
        p = write_xyz_tiff(tmp_path / "bad.tiff", np.full((16, 16, 3), np.nan if kind == "nan" else 0.0, np.float32))
    method = create_method("fpfh", MethodConfig(image_size=16))
    with pytest.raises(DatasetError) as err:
        method.prepare([rgbd_sample(None, p)])
    msg = str(err.value)
    assert msg.startswith(str(p)) and "\n" not in msg


def test_too_few_points_after_resize_is_clear(tmp_path):
    from fsiad.fewshot.methods import MethodConfig, create_method

    xyz = np.zeros((64, 64, 3), np.float32)
    xyz[10:13, 10:13] = [0.1, 0.1, 0.3]  # 9 points: valid at full size, ~0 at 8x8
    p = write_xyz_tiff(tmp_path / "tiny.tiff", xyz)
    method = create_method("fpfh", MethodConfig(image_size=8))
    with pytest.raises(DatasetError, match=r"tiny\.tiff: only \d valid points at this resolution"):
        method.prepare([rgbd_sample(None, p)])
    assert torch.is_tensor(method.preprocess.masks([None]))
