"""MVTec 3D-AD reader, synthetic generator, BTF cleaning (cached, never in place), 3D features."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from fsiad.fewshot.data import load_dataset
from fsiad.fewshot.data.base import DatasetError
from fsiad.pointcloud.cleaning import CleaningParams, clean_mask, cleaned_cloud
from fsiad.pointcloud.data import folder_samples
from fsiad.pointcloud.features import FPFH_DIM, depth_image, fpfh_organized, pool_to_grid, resize_organized
from fsiad.pointcloud.io import read_xyz_tiff, valid_mask
from fsiad.pointcloud.synthetic import DEFECTS, generate_mvtec3d, render_sample

from tests.pointcloud_helpers import mixed_root  # noqa: F401  (fixture)


def test_reader_layout(mixed_root):  # noqa: F811
    (cat,) = load_dataset("mvtec3d", mixed_root)
    assert cat.name == "dome" and cat.has_masks
    assert len(cat.train) == 4 and all(s.label == 0 and s.mask_path is None for s in cat.train)
    assert [s.defect for s in cat.test].count("good") == 6
    assert sorted({s.defect for s in cat.test}) == ["color", "crack", "dent", "good"]
    for s in cat.test:
        assert s.extra["xyz"].suffix == ".tiff" and s.extra["xyz"].parent.name == "xyz"
        assert s.extra["xyz"].stem == s.path.stem and s.mask_path.parent.name == "gt"
        assert s.label == int(s.defect != "good")


def test_reader_errors(tmp_path):
    generate_mvtec3d(tmp_path, n_train=1, n_validation=0, n_test_good=1, n_test_defect=1, defects=("dent",), size=32)
    with pytest.raises(DatasetError, match="unknown category 'bagel'"):
        load_dataset("mvtec3d", tmp_path, ["bagel"])
    (tmp_path / "dome" / "test" / "dent" / "xyz" / "000.tiff").unlink()
    with pytest.raises(DatasetError, match=r"000\.png: no matching point cloud"):
        load_dataset("mvtec3d", tmp_path)
    with pytest.raises(DatasetError, match="root is required"):
        load_dataset("mvtec3d", None)


def test_folder_samples_forms(tmp_path, mixed_root):  # noqa: F811
    good = mixed_root / "dome" / "train" / "good"
    assert [s.path.name for s in folder_samples(good)] == ["000.png", "001.png", "002.png", "003.png"]
    assert len(folder_samples(mixed_root / "dome" / "train")) == 4  # <dir>/good/{rgb,xyz}
    with pytest.raises(DatasetError, match="no point clouds"):
        folder_samples(tmp_path)


def test_generator_defects_are_single_modality():
    good = render_sample(64, "good", "dome", seed=3)
    for d in DEFECTS:
        s = render_sample(64, d, "dome", seed=3)
        assert s.mask.sum() > 5, d
        if d == "color":  # colour-only: identical geometry, different colours inside the mask only
            np.testing.assert_array_equal(s.xyz, good.xyz)
            diff = np.abs(s.rgb.astype(int) - good.rgb.astype(int)).sum(-1) > 30
            assert diff[s.mask].mean() > 0.9 and diff[~s.mask].mean() < 0.02
        else:  # geometric-only: identical RGB, depth changed inside the mask
            np.testing.assert_array_equal(s.rgb, good.rgb)
            ok = valid_mask(s.xyz) & valid_mask(good.xyz)
            dz = np.abs(s.xyz[..., 2] - good.xyz[..., 2]) > 1e-3
            assert dz[ok & s.mask].mean() > 0.5 and dz[ok & ~s.mask].mean() < 0.01
    z = good.xyz[..., 2]
    assert 0.001 < (z == 0).mean() < 0.2 and z[z > 0].min() > 0.25  # missing points, metres


def test_cleaning_removes_plane_keeps_object_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FSIAD_HOME", str(tmp_path / "home"))
    root = generate_mvtec3d(tmp_path / "d", n_train=1, n_validation=0, n_test_good=0, n_test_defect=0, size=96)
    path = root / "dome" / "train" / "good" / "xyz" / "000.tiff"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    xyz = read_xyz_tiff(path)
    out = cleaned_cloud(xyz, CleaningParams(), path)
    kept = valid_mask(out)
    height = xyz[..., 2].max() - xyz[..., 2]  # distance above the (far) plane, roughly
    obj = valid_mask(xyz) & (height > 0.007)
    plane = valid_mask(xyz) & (height < 0.002)
    assert kept[obj].mean() > 0.95 and kept[plane].mean() < 0.01
    np.testing.assert_array_equal(out[kept], xyz[kept])
    files = list((tmp_path / "home" / "cache" / "pointcloud").glob("*.npz"))
    assert len(files) == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # dataset untouched
    np.testing.assert_array_equal(cleaned_cloud(xyz, CleaningParams(), path), out)  # from the cache
    cleaned_cloud(xyz, CleaningParams(plane_margin=0.003), path)
    assert len(list(files[0].parent.glob("*.npz"))) == 2  # parameters are part of the key


def test_cleaning_unit_errors():
    xyz = np.zeros((40, 40, 3), np.float32)
    xyz[..., 0], xyz[..., 1] = np.meshgrid(np.arange(40) * 1e-3, np.arange(40) * 1e-3)
    xyz[..., 2] = 0.3  # only a plane: nothing left after plane removal
    with pytest.raises(Exception, match=r"flat\.tiff: only 0 points left after plane removal"):
        clean_mask(xyz, CleaningParams(), "flat.tiff")


def test_fpfh_resize_pool_depth():
    s = render_sample(64, "good", "dome", seed=0)
    x = resize_organized(s.xyz, 48)
    assert x.shape == (48, 48, 3)
    src = {tuple(p) for p in s.xyz.reshape(-1, 3)}
    assert all(tuple(p) in src for p in x.reshape(-1, 3)[::97])  # nearest: existing points only
    f = fpfh_organized(x)
    ok = valid_mask(x)
    assert f.shape == (48, 48, FPFH_DIM) and np.isfinite(f).all()
    assert (f[~ok] == 0).all() and (f[ok].sum(-1) > 0).all()
    g = pool_to_grid(torch.from_numpy(f)[None], 12)
    assert g.shape == (1, 12, 12, FPFH_DIM)
    const = pool_to_grid(torch.full((2, 30, 30, 4), 3.0), 7)
    torch.testing.assert_close(const, torch.full((2, 7, 7, 4), 3.0))
    d = depth_image(x)
    assert d.dtype == np.uint8 and d.shape == (48, 48, 3) and (d[~ok] == 0).all()
    z = x[..., 2]
    assert d[ok][np.argmin(z[ok]), 0] == 255  # nearest point is brightest
