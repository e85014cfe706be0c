"""Fast FPFH paths: voxel-downsampled FPFH against full resolution, and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("open3d")

from fsiad.pointcloud.batch import RGBDBatch  # noqa: E402
from fsiad.pointcloud.features import (  # noqa: E402
    FPFHParams,
    fpfh_organized,
    grid_pitch,
    resize_organized,
    voxel_downsample,
)
from fsiad.pointcloud.io import valid_mask  # noqa: E402
from fsiad.pointcloud.synthetic import render_sample  # noqa: E402


def test_voxel_downsample_centroids_and_inverse():
    pts = np.array([[0.0, 0, 0], [0.4, 0, 0], [1.2, 0, 0], [1.6, 0.2, 0], [0.1, 0.1, 2.5]])
    cent, inv = voxel_downsample(pts, 1.0)
    assert len(cent) == 3 and inv.shape == (5,)
    assert inv[0] == inv[1] and inv[2] == inv[3] and len({inv[0], inv[2], inv[4]}) == 3
    np.testing.assert_allclose(cent[inv[0]], [0.2, 0, 0])
    np.testing.assert_allclose(cent[inv[2]], [1.4, 0.1, 0])
    np.testing.assert_allclose(cent[inv[4]], pts[4])


def test_grid_pitch_of_a_regular_grid():
    yy, xx = np.mgrid[0:10, 0:12].astype(np.float32) * 0.002
    xyz = np.stack([xx, yy, np.full_like(xx, 0.3)], -1)
    xyz[3, 4] = 0  # a hole does not change the pitch
    assert grid_pitch(xyz) == pytest.approx(0.002, rel=1e-5)


def test_voxel_fpfh_is_piecewise_constant_and_full_when_under_budget():
    x = resize_organized(render_sample(64, "dent", "dome", seed=0).xyz, 64)
    ok = valid_mask(x)
    n = int(ok.sum())
    full = fpfh_organized(x)
    # a budget above the point count is exactly BTF's full resolution
    np.testing.assert_array_equal(fpfh_organized(x, FPFHParams(max_points=n + 1)), full)
    fast = fpfh_organized(x, FPFHParams(max_points=n // 4))
    assert fast.shape == full.shape and (fast[~ok] == 0).all() and (fast[ok].sum(-1) > 0).all()
    distinct = np.unique(fast[ok], axis=0)
    assert len(distinct) <= 1.1 * (n // 4) + 1  # one feature per voxel, shared by its pixels
    assert not np.array_equal(fast, full)
    # histograms of the same surface stay close: mean per-pixel cosine to full resolution
    a, b = fast[ok], full[ok]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.mean() > 0.9, cos.mean()


def test_fpfh_method_voxel_keeps_accuracy_on_synthetic_data(tmp_path):
    """Small version of ``bench.bench_pointcloud voxel``: image AUROC within 0.01 of full resolution."""
    from fsiad.fewshot.data import load_dataset
    from fsiad.fewshot.methods import MethodConfig, create_method
    from fsiad.fewshot.metrics import image_metrics
    from fsiad.pointcloud.synthetic import generate_mvtec3d

    generate_mvtec3d(tmp_path, categories=("dome",), n_train=3, n_validation=0, n_test_good=4, n_test_defect=2,
                     size=96, seed=3)
    cat = load_dataset("mvtec3d", tmp_path)[0]
    labels = np.array([s.label for s in cat.test])
    auc = {}
    for mp in (0, 1500):
        m = create_method("fpfh", MethodConfig(image_size=80, options={"fpfh_max_points": mp}))
        m.fit(m.prepare(cat.train))
        auc[mp] = image_metrics(m.predict(m.prepare(cat.test)).image_scores.numpy(), labels)["image_auroc"]
    assert auc[0] > 0.8 and abs(auc[1500] - auc[0]) <= 0.01 + 1e-9, auc


def test_fpfh_disk_cache_round_trip_is_exact(tmp_path, monkeypatch):
    from fsiad.pointcloud import modalities

    monkeypatch.setenv("FSIAD_HOME", str(tmp_path))
    x = resize_organized(render_sample(48, "good", "torus", seed=1).xyz, 40)
    batch = RGBDBatch.__new__(RGBDBatch)
    batch.xyz, batch.sources = torch.from_numpy(x)[None], ["a.tiff"]
    params = FPFHParams(max_points=500)
    modalities._FPFH_MEMO.clear()
    first = modalities.fpfh_features(batch, params, 5, disk_cache=True)
    files = list((tmp_path / "cache" / "pointcloud" / "fpfh").glob("*.npy"))
    assert len(files) == 1
    modalities._FPFH_MEMO.clear()

    def boom(*a, **k):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(modalities, "fpfh_organized", boom)
    again = modalities.fpfh_features(batch, params, 5, disk_cache=True)
    assert torch.equal(first, again) and again.dtype == torch.float32
    # another parameter set is another key: not served from this entry
    modalities._FPFH_MEMO.clear()
    with pytest.raises(AssertionError, match="recomputed"):
        modalities.fpfh_features(batch, FPFHParams(max_points=400), 5, disk_cache=True)
    # a damaged entry is recomputed, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("FSIAD_HOME", str(tmp_path))
    files[0].write_bytes(b"not an npy file")
    modalities._FPFH_MEMO.clear()
    assert torch.equal(modalities.fpfh_features(batch, params, 5, disk_cache=True), first)
    modalities._FPFH_MEMO.clear()
