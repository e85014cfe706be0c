"""AUPRO vs brute-force references of the official MVTec definition and of cflow's variant."""

from __future__ import annotations

import math
from bisect import bisect_right

import fsiad.fewshot.metrics.core as core
import numpy as np
import pytest
import torch
from fsiad.fewshot.metrics import aupro, aupro_cflow, pixel_metrics
from scipy import ndimage
from sklearn.metrics import auc


def _regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    out = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))  # 8-connectivity
        out += [(i, lab == k) for k in range(1, n + 1)]
    return out


def _official_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[list[float], list[float]]:
    """One (FPR, PRO) point per distinct threshold (score >= t), plus (0, 0) and (1, 1)."""
    regions = _regions(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(float((pred & normal).sum() / normal.sum()))
        pros.append(float(np.mean([pred[i][r].mean() for i, r in regions])))
    return fprs + [1.0], pros + [1.0]


def _trapezoid_to(x: list[float], y: list[float], x_max: float) -> float:
    """Trapezoid rule up to ``x_max`` with linear interpolation of the crossing segment."""
    area = 0.0
    for k in range(1, len(x)):
        if x[k] <= x_max:
            area += (x[k] - x[k - 1]) * (y[k] + y[k - 1]) / 2
    if x_max not in x:
        ins = bisect_right(x, x_max)
        y_i = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        area += (x_max - x[ins - 1]) * (y_i + y[ins - 1]) / 2
    return area


def _aupro_brute(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    x, y = _official_curve(maps, masks)
    return _trapezoid_to(x, y, limit) / limit


def _cflow_brute(maps: np.ndarray, masks: np.ndarray, max_step: int = 200, expect_fpr: float = 0.3) -> float:
    regions = _regions(masks)
    normal = ~masks
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / max_step):
        pred = maps > th
        pros.append(np.mean([pred[i][r].mean() for i, r in regions]))
        fprs.append((pred & normal).sum() / normal.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    f = fprs[keep]
    return auc((f - f.min()) / (f.max() - f.min()), pros[keep])


def _dataset(seed: int, ties: bool, n: int = 5, side: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Maps with several GT regions per anomalous image (one diagonal-touching pair), normals included."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, side, side), bool)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(rng.integers(2, 4)):
            h, w = rng.integers(2, 7, 2)
            y, x = rng.integers(0, side - 7, 2)
            masks[i, y : y + h, x : x + w] = True
    masks[1, 18:20, 18:20] = True  # touches the next square only at a corner: one 8-connected region
    masks[1, 20:22, 20:22] = True
    if ties:
        maps = rng.integers(0, 9, masks.shape).astype(np.float32) + 3 * masks * rng.random(masks.shape).round(
            1
        )
    else:
        maps = rng.random(masks.shape).astype(np.float32) + masks * rng.uniform(0, 0.8, masks.shape).astype(
            np.float32
        )
    return maps, masks


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_equals_official_bruteforce(seed: int, ties: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "CHUNK", 1000)
    maps, masks = _dataset(seed, ties)
    ref = _aupro_brute(maps, masks)
    got = aupro(maps, masks)
    assert got == pytest.approx(ref, abs=1e-9)  # the spec asks 1e-3; the sweep is exact
    assert 0.05 < got < 0.999
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks))["pixel_aupro"] == pytest.approx(got)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_other_limits(limit: float) -> None:
    maps, masks = _dataset(5, ties=False, n=4, side=20)
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(_aupro_brute(maps, masks, limit), abs=1e-9)


def test_aupro_uses_8_connectivity_and_region_average() -> None:
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = masks[0, 4:6, 4:6] = True  # corner-touching: one region of 8 px
    masks[1, 0:6, 0:6] = True  # one big region of 36 px
    maps = np.zeros(masks.shape, np.float32)
    maps[0, 2:4, 2:4] = 1.0  # half of region A detected at the top threshold
    maps[1][masks[1]] = 1.0  # all of region B detected
    # Curve (0,0) (0,.75) (1,1): PRO at t=1 is (0.5 + 1) / 2 (4-connectivity would give 2/3,
    # pixel averaging 40/44); interpolated PRO at FPR 0.3 is 0.825.
    assert aupro(maps, masks) == pytest.approx(0.3 * (0.75 + 0.825) / 2 / 0.3, abs=1e-12)
    assert aupro(maps, masks) == pytest.approx(_aupro_brute(maps, masks), abs=1e-12)
    assert aupro(np.where(masks, 1.0, 0.0), masks) == pytest.approx(1.0)
    assert aupro(np.where(masks, 0.0, 1.0), masks) == pytest.approx(0.0)


def test_aupro_degenerate() -> None:
    assert math.isnan(aupro(np.random.rand(2, 5, 5), np.zeros((2, 5, 5), bool)))
    assert math.isnan(aupro(np.random.rand(1, 5, 5), np.ones((1, 5, 5), bool)))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        aupro(np.zeros((5, 5)), np.zeros((5, 5), bool))


@pytest.mark.parametrize("seed", [0, 3])
def test_aupro_cflow_equals_bruteforce(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "CHUNK", 1000)
    maps, masks = _dataset(seed, ties=False)
    maps = maps.astype(np.float64)
    assert aupro_cflow(maps, masks) == pytest.approx(_cflow_brute(maps, masks), abs=1e-9)
    assert aupro_cflow(maps, masks) != pytest.approx(aupro(maps, masks), abs=1e-3)  # different metric
