"""Synthetic datasets: deterministic, exact masks, defects visible to a patch-feature method."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fsiad.fewshot.data import load_dataset, load_sample, sample_shots
from fsiad.fewshot.data.synthetic import _SAMPLERS, DEFECTS, make_mvtec_dataset, render_category
from fsiad.fewshot.metrics import image_metrics, pixel_metrics


@pytest.mark.parametrize(("kind", "side", "area"), [("texture", 64, (0.005, 0.15)), ("object", 64, (0.005, 0.15)),
                                                    ("elongated", 64, (0.001, 0.005)), ("screw", 160, (1e-4, 2e-3)),
                                                    ("board", 128, (0.003, 0.006))])
def test_masks_are_exactly_the_changed_pixels(kind: str, side: int, area: tuple[float, float]) -> None:
    for defect in DEFECTS[kind]:
        for seed in range(3):
            normal, empty = _SAMPLERS[kind](np.random.default_rng(seed), side, None)
            bad, mask = _SAMPLERS[kind](np.random.default_rng(seed), side, defect)
            assert not empty.any()
            assert area[0] < mask.mean() < area[1], (defect, mask.mean())
            np.testing.assert_array_equal(bad[~mask], normal[~mask])
            changed = np.abs(bad - normal).max(axis=-1)[mask]
            assert (changed > 20).mean() > 0.9  # visibly different inside the mask


def test_render_is_deterministic_and_varied() -> None:
    a = render_category("texture", 48, 3, 2, 4, seed=1)
    b = render_category("texture", 48, 3, 2, 4, seed=1)
    c = render_category("texture", 48, 3, 2, 4, seed=2)
    assert list(a) == ["train", "good", "scratch", "color"]
    for k in a:
        for (ia, ma), (ib, mb) in zip(a[k], b[k], strict=True):
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a["train"][0][0], c["train"][0][0])
    t0, t1 = a["train"][0][0].astype(int), a["train"][1][0].astype(int)
    assert 2 < np.abs(t0 - t1).mean() < 60  # normals vary a little, not wildly
    with pytest.raises(ValueError, match="must start with"):
        render_category("bottle", 32, 1, 1, 1, 0)


def test_make_mvtec_dataset_is_fast(tmp_path: Path) -> None:
    t = time.perf_counter()
    root = make_mvtec_dataset(tmp_path)
    elapsed = time.perf_counter() - t
    cats = load_dataset("mvtec", root)
    assert [(c.name, len(c.train), len(c.test)) for c in cats] == [("object", 8, 12), ("texture", 8, 12)]
    assert elapsed < 3.0  # ~0.3 s on an idle core; generous for a loaded CI machine


def _patch_features(img: np.ndarray, p: int = 8) -> np.ndarray:
    """Mean and std of RGB over p x p patches (stride p/2) plus patch position: [h, w, 8]."""
    x = img.astype(np.float32) / 255
    win = np.lib.stride_tricks.sliding_window_view(x, (p, p), axis=(0, 1))[:: p // 2, :: p // 2]
    h, w = win.shape[:2]
    pos = np.stack(np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij"), -1)
    return np.concatenate([win.mean(axis=(-1, -2)), win.std(axis=(-1, -2)), 2.0 * pos], axis=-1)


def test_defects_are_detectable_by_patch_knn(tmp_path: Path) -> None:
    root = make_mvtec_dataset(tmp_path, image_size=64, n_train=6, n_test_good=4, n_test_defect=6, seed=3)
    for cat in load_dataset("mvtec", root):
        bank = np.concatenate(
            [_patch_features(load_sample(s)[0]).reshape(-1, 8) for s in sample_shots(cat.train, 4, 0)]
        )
        scores, maps, masks = [], [], []
        for s in cat.test:
            img, mask = load_sample(s)
            f = _patch_features(img)
            d = np.sqrt(((f[..., None, :] - bank) ** 2).sum(-1)).min(-1)  # [h, w] kNN distance
            up = np.kron(d, np.ones((4, 4)))  # back to pixels (stride 4), borders padded
            up = np.pad(up, ((2, 64 - up.shape[0] - 2), (2, 64 - up.shape[1] - 2)), mode="edge")
            scores.append(d.max())
            maps.append(up)
            masks.append(mask if mask is not None else np.zeros((64, 64), bool))
        labels = [s.label for s in cat.test]
        assert image_metrics(np.array(scores), np.array(labels))["image_auroc"] >= 0.95, cat.name
        assert pixel_metrics(np.stack(maps), np.stack(masks))["pixel_auroc"] > 0.85, cat.name
