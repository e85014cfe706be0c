"""Metrics vs scikit-learn and brute-force threshold sweeps (image and pixel level)."""

from __future__ import annotations

import math

import fsiad.fewshot.metrics.core as core
import numpy as np
import pytest
import torch
from fsiad.fewshot.metrics import average_precision, f1_max, image_metrics, operating_points, pixel_metrics
from sklearn.metrics import average_precision_score, roc_auc_score


def _scores(rng: np.random.Generator, n: int, ties: bool) -> np.ndarray:
    if ties:  # few distinct values -> many tied thresholds
        return rng.integers(0, 7, n).astype(np.float32)
    return rng.normal(size=n).astype(np.float32)


def _f1max_brute(s: np.ndarray, y: np.ndarray) -> float:
    """Reference: try every distinct score as threshold (predict score >= t)."""
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_equal_sklearn_and_bruteforce(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = _scores(rng, 300, ties) + (2.0 if ties else 0.8) * y  # informative but imperfect
    m = image_metrics(s, y)
    assert m["image_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["image_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["image_f1max"] == pytest.approx(_f1max_brute(s, y), abs=1e-12)
    assert 0.5 < m["image_auroc"] < 1.0


def test_image_metrics_accept_torch_and_int_labels() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(50) < 0.5).astype(np.int64)
    s = rng.normal(size=50)
    ref = image_metrics(s, y)
    got = image_metrics(torch.from_numpy(s).to(torch.bfloat16).float(), torch.from_numpy(y))
    assert got["image_auroc"] == pytest.approx(
        roc_auc_score(y, torch.from_numpy(s).to(torch.bfloat16).float())
    )
    assert ref["image_auroc"] == pytest.approx(roc_auc_score(y, s))
    assert image_metrics(np.array([0.1, 0.9]), np.array([0, 1]))["image_auroc"] == 1.0
    assert image_metrics(np.array([0.9, 0.1]), np.array([0, 1]))["image_auroc"] == 0.0


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_metrics_equal_sklearn(ties: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "CHUNK", 700)  # force several streamed chunks
    rng = np.random.default_rng(7)
    masks = np.zeros((6, 24, 20), bool)
    masks[1, 3:9, 4:12] = True
    masks[2, 10:20, 2:5] = True
    masks[4, 0:4, 0:20] = True
    maps = _scores(rng, masks.size, ties).reshape(masks.shape) + 1.5 * masks
    m = pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks))
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert m["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert m["pixel_f1max"] == pytest.approx(_f1max_brute(maps.ravel(), masks.ravel()), abs=1e-12)
    assert set(m) == {"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}


def test_f1max_and_ap_helpers() -> None:
    s = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    y = np.array([1, 0, 1, 0, 1])
    assert f1_max(s, y) == pytest.approx(_f1max_brute(s, y.astype(bool)))
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s))


def test_degenerate_inputs_give_nan_or_errors() -> None:
    m = image_metrics(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))
    assert all(math.isnan(v) for v in m.values())
    only_pos = image_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
    assert math.isnan(only_pos["image_auroc"]) and only_pos["image_ap"] == 1.0
    p = pixel_metrics(np.random.rand(2, 4, 4), np.zeros((2, 4, 4), bool))
    assert all(math.isnan(v) for v in p.values())
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(np.array([np.nan, 0.2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])
    with pytest.raises(ValueError, match="differ"):
        image_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="binary"):
        image_metrics(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))


def test_pixel_metrics_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming: extra memory stays well below the input size (a global argsort needs 8 B/pixel)."""
    import tracemalloc

    monkeypatch.setattr(core, "CHUNK", 1 << 16)
    rng = np.random.default_rng(0)
    maps = rng.random((100, 128, 128), dtype=np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[::2, 40:60, 50:70] = True  # 1.2 % anomalous pixels
    maps += masks
    tracemalloc.start()
    try:
        res = pixel_metrics(maps, masks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res["pixel_auroc"] == 1.0 and res["pixel_aupro"] == pytest.approx(1.0)
    assert peak < 0.75 * maps.nbytes, peak / maps.nbytes


def _brute_points(s: np.ndarray, y: np.ndarray, max_fpr: float) -> tuple[float | None, float]:
    """Over every candidate threshold (each distinct score, and one above all): the most recall with
    FPR <= max_fpr (None if it is 0) and the best F1, by counting flags one threshold at a time."""
    best_recall, best_f1 = 0.0, 0.0
    for t in [*np.unique(s), s.max() + 1]:
        flag = s >= t
        tp, fp = int((flag & (y == 1)).sum()), int((flag & (y == 0)).sum())
        if fp / (y == 0).sum() <= max_fpr + 1e-12:
            best_recall = max(best_recall, tp / (y == 1).sum())
        best_f1 = max(best_f1, 2 * tp / (tp + fp + (y == 1).sum()))
    return (best_recall or None), best_f1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_operating_points_equal_bruteforce(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n0, n1 = int(rng.integers(5, 80)), int(rng.integers(5, 80))
    s = np.r_[rng.normal(0, 1, n0), rng.normal(1.2, 1, n1)]
    if ties:
        s = np.round(s, 1)
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    for max_fpr in (0.0, 0.05, 0.2):
        pts = operating_points(s, y, max_fpr)
        recall, f1 = _brute_points(s, y, max_fpr)
        at, best = pts["at_fpr"], pts["f1_max"]
        assert (at is None) == (recall is None)
        for p in (at, best):
            if p is None:
                continue
            flag = s >= p["threshold"]  # the reported threshold makes exactly the decisions it reports
            assert int((flag & (y == 0)).sum()) == p["false_alarms"]
            assert int((~flag & (y == 1)).sum()) == p["misses"]
            assert p["recall"] == pytest.approx(1 - p["misses"] / n1)
            assert p["false_positive_rate"] == pytest.approx(p["false_alarms"] / n0)
            # rounded to the 6 significant digits the console prints, it still decides alike
            assert np.array_equal(s >= float(f"{p['threshold']:.6g}"), flag)
        if at is not None:
            assert at["recall"] == pytest.approx(recall) and at["false_positive_rate"] <= max_fpr + 1e-12
        assert best["f1"] == pytest.approx(f1) == pytest.approx(f1_max(s, y))


def test_operating_points_refuse_one_class_and_bad_rate() -> None:
    with pytest.raises(ValueError, match="normal and anomalous"):
        operating_points(np.array([0.1, 0.2]), np.array([1, 1]), 0.05)
    with pytest.raises(ValueError, match="max_fpr"):
        operating_points(np.array([0.1, 0.2]), np.array([0, 1]), 1.5)
    # every defect below every normal: no threshold at 0 false alarms flags one
    assert operating_points(np.array([0.5, 0.6, 0.1, 0.2]), np.array([0, 0, 1, 1]), 0.0)["at_fpr"] is None
