"""Per-region overlap (PRO) metrics.

``aupro`` is the OFFICIAL MVTec AD definition (MVTec evaluation code, anomalib ``AUPRO``,
BTF ``calculate_au_pro``): ground-truth regions are 8-connected components of each mask;
at every threshold the PRO is the overlap ``|{score >= t} ∩ region| / |region|`` averaged
over all regions of all images, the FPR is taken over all normal pixels of all images; the
PRO-vs-FPR curve (from (0, 0), one point per distinct score) is integrated with the
trapezoid rule up to ``fpr_limit`` (linear interpolation at the limit) and divided by it.

``aupro_cflow`` is the different number printed by APRIL-GAN / AnomalyCLIP / MuSc tables
(cflow ``cal_pro_score``): 200 equally spaced thresholds, points with FPR < 0.3 kept,
those FPRs min-max rescaled to [0, 1], area by ``sklearn.metrics.auc``. Use only to compare
with those tables.
"""

from __future__ import annotations

import numpy as np
import torch
from fsiad.fewshot.metrics import core
from fsiad.fewshot.metrics.core import SweepStats, sweep, to_bool, to_numpy
from scipy import ndimage

# 8-connectivity inside each image, no connection across images of a stack.
_STRUCT = np.zeros((3, 3, 3), dtype=bool)
_STRUCT[1] = True


def region_labels(masks: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Label the GT regions of a mask stack chunk by chunk.

    Args:
        masks: bool ``[N, H, W]``.

    Returns:
        ``(ids, sizes, R)``: per chunk, the global region id of every positive pixel (in
        ``masks[chunk][masks[chunk]]`` order) and the sizes of that chunk's regions (index
        = id - first id of the chunk); ``R`` = total number of regions.
    """
    # ndimage.label needs several bytes per pixel: label a quarter chunk at a time.
    rows = max(1, core.CHUNK // 4 // max(1, masks[0].size if len(masks) else 1))
    ids, sizes, total = [], [], 0
    for i in range(0, masks.shape[0], rows):
        lab, n = ndimage.label(masks[i : i + rows], structure=_STRUCT)
        ids.append(lab[masks[i : i + rows]].astype(np.int64) - 1 + total)
        sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        total += n
    return ids, sizes, total


def pro_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Weight ``1 / (R * |region|)`` of every positive pixel (``masks[masks]`` order), and R."""
    ids, sizes, total = region_labels(masks)
    if total == 0:
        return np.zeros(0), 0
    all_sizes = np.concatenate(sizes).astype(np.float64)
    return 1.0 / (total * all_sizes[np.concatenate(ids)]), total


def aupro_from(st: SweepStats, fpr_limit: float = 0.3) -> float:
    """Official AUPRO from sweep statistics carrying PRO weights (see module docstring)."""
    if st.pos_weight is None:
        raise ValueError("sweep statistics carry no PRO weights")
    if st.n_pos == 0 or st.n_neg == 0:
        return float("nan")
    n_u = len(st.u)
    c = np.append(np.cumsum(st.pos_weight[::-1])[::-1], 0.0)  # c[j] = PRO at threshold u_j; c[U] = 0
    # Segments in descending-threshold order: between[U], equal[U-1], between[U-1], ..., equal[0], between[0].
    d_n = np.empty(2 * n_u + 1, dtype=np.float64)
    y0 = np.empty_like(d_n)
    y1 = np.empty_like(d_n)
    d_n[0::2] = st.neg_between[::-1]
    d_n[1::2] = st.neg_equal[::-1]
    y0[0::2] = y1[0::2] = c[::-1]  # flat at c[j]
    y0[1::2] = c[:0:-1]  # equal[j]: from c[j+1] ...
    y1[1::2] = c[-2::-1]  # ... to c[j]
    dx = d_n / st.n_neg
    x1 = np.cumsum(dx)
    x0 = x1 - dx
    full = x1 <= fpr_limit
    area = float(np.sum(dx[full] * (y0[full] + y1[full]) / 2))
    cross = np.flatnonzero((x0 < fpr_limit) & (x1 > fpr_limit))
    if len(cross):
        k = cross[0]
        y_lim = y0[k] + (y1[k] - y0[k]) * (fpr_limit - x0[k]) / dx[k]
        area += (fpr_limit - x0[k]) * (y0[k] + y_lim) / 2
    return float(area / fpr_limit)


def _check_maps(
    maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    a, m = to_numpy(maps, "anomaly maps"), to_bool(masks, "masks")
    if a.ndim != 3 or a.shape != m.shape:
        raise ValueError(f"maps and masks must both be [N, H, W], got {a.shape} and {m.shape}")
    return a, m


def aupro(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Official MVTec AUPRO (normalised to [0, 1]).

    Args:
        maps: anomaly maps ``[N, H, W]`` (higher = more anomalous), numpy or torch.
        masks: ground truth ``[N, H, W]`` bool/0-1 (normal images included).
        fpr_limit: integration limit on the FPR axis.

    Returns:
        Area under the PRO curve up to ``fpr_limit`` divided by ``fpr_limit``; NaN if there
        is no anomalous or no normal pixel.
    """
    a, m = _check_maps(maps, masks)
    w, _ = pro_weights(m)
    return aupro_from(sweep(a, m, w, "anomaly maps"), fpr_limit)


def aupro_cflow(
    maps: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    max_step: int = 200,
    expect_fpr: float = 0.3,
) -> float:
    """cflow-style PRO score (APRIL-GAN/AnomalyCLIP/MuSc tables), NOT the official AUPRO.

    Thresholds ``arange(min, max, (max - min) / max_step)``; a pixel is positive when its
    score is ``> th``; regions are 8-connected; points with FPR < ``expect_fpr`` are kept and
    their FPRs min-max rescaled before ``sklearn.metrics.auc``. NaN when undefined.
    """
    from sklearn.metrics import auc

    a, m = _check_maps(maps, masks)
    lo, hi = float(a.min()), float(a.max())
    if not m.any() or m.all() or hi <= lo:
        return float("nan")
    ths = np.arange(lo, hi, (hi - lo) / max_step)
    n_b = len(ths) + 1
    ids, sizes, total = region_labels(m)
    on_region = np.zeros(total * n_b, dtype=np.int64)
    neg_hist = np.zeros(n_b, dtype=np.int64)
    rows = max(1, core.CHUNK // max(1, a[0].size))
    for c, i in enumerate(range(0, a.shape[0], rows)):
        s, mm = a[i : i + rows], m[i : i + rows]
        on_region += np.bincount(ids[c] * n_b + np.searchsorted(ths, s[mm], "left"), minlength=total * n_b)
        neg_hist += np.bincount(np.searchsorted(ths, s[~mm], "left"), minlength=n_b)
    # a pixel in bin b (b thresholds below its score) is "on" for thresholds k < b
    on = np.cumsum(on_region.reshape(total, n_b)[:, ::-1], axis=1)[:, ::-1][:, 1:]
    pros = (on / np.concatenate(sizes)[:, None]).mean(axis=0)
    fprs = np.cumsum(neg_hist[::-1])[::-1][1:] / neg_hist.sum()
    keep = fprs < expect_fpr
    f = fprs[keep]
    if len(f) < 2 or f.max() == f.min():
        return float("nan")
    return float(auc((f - f.min()) / (f.max() - f.min()), pros[keep]))
