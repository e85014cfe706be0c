"""Exact threshold-sweep statistics in one memory-bounded pass.

Every ranking metric here (AUROC, AP, F1-max, official AUPRO) only needs, for each distinct
*positive* score ``u_j`` (ascending), how many negatives lie strictly between ``u_{j-1}``
and ``u_j`` and how many equal ``u_j``. The positives (anomalous pixels, usually a few %)
are sorted once; the negatives are streamed in chunks, each chunk sorted and the positive
values located in it with ``searchsorted``. Memory is O(#positives + chunk) instead of a sort of all pixels, and ties
are handled exactly as thresholds do (a threshold ``t`` predicts ``score >= t``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 1 << 22  # elements per streamed chunk (~16 MB of float32)


def to_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """numpy view of a tensor/array; float16/bfloat16 become float32, ints/bools float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    elif not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def to_bool(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Boolean numpy array of labels/masks (values must be 0/1)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.bool_:
        if x.size and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must be binary (0/1 or bool)")
        x = x.astype(bool)
    return x


@dataclass
class SweepStats:
    """Counts at every distinct positive score ``u`` (ascending, length U).

    Attributes:
        u: distinct positive scores ``[U]``.
        pos_count: positives equal to ``u_j`` ``[U]``.
        pos_weight: summed per-positive weights at ``u_j`` ``[U]`` (PRO weights) or None.
        neg_between: negatives in ``(u_{j-1}, u_j)`` ``[U+1]`` (last: above ``u_{U-1}``).
        neg_equal: negatives equal to ``u_j`` ``[U]``.
        n_pos, n_neg: totals.
    """

    u: np.ndarray
    pos_count: np.ndarray
    pos_weight: np.ndarray | None
    neg_between: np.ndarray
    neg_equal: np.ndarray
    n_pos: int
    n_neg: int

    def tp_at(self) -> np.ndarray:
        """Positives ``>= u_j`` ``[U]``."""
        return np.cumsum(self.pos_count[::-1])[::-1]

    def fp_at(self) -> np.ndarray:
        """Negatives ``>= u_j`` ``[U]``."""
        eq_ge = np.cumsum(self.neg_equal[::-1])[::-1]
        btw_gt = np.cumsum(self.neg_between[::-1])[::-1][1:]
        return eq_ge + btw_gt


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def sweep(
    scores: np.ndarray, positive: np.ndarray, pos_weight: np.ndarray | None = None, name: str = "scores"
) -> SweepStats:
    """Build :class:`SweepStats` from scores and a same-shape boolean positive mask.

    Args:
        scores: float array, any shape (first axis is chunked).
        positive: bool array of the same shape.
        pos_weight: optional float64 weight per positive element (in ``scores[positive]``
            order), e.g. PRO weights ``1 / (R * |region|)``.
    """
    if scores.shape != positive.shape:
        raise ValueError(f"{name} shape {scores.shape} differs from labels/masks shape {positive.shape}")
    flat_s = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(-1, 1)
    flat_p = positive.reshape(flat_s.shape)
    pos = flat_s[flat_p]
    _check_finite(pos, name)
    u, inv, cnt = np.unique(pos, return_inverse=True, return_counts=True)
    w = None if pos_weight is None else np.bincount(inv.ravel(), weights=pos_weight, minlength=len(u))
    n_u = len(u)
    between = np.zeros(n_u + 1, dtype=np.int64)
    equal = np.zeros(n_u, dtype=np.int64)
    rows = max(1, CHUNK // max(1, flat_s.shape[1]))
    n_neg = 0
    for i in range(0, flat_s.shape[0], rows):
        neg = np.sort(flat_s[i : i + rows][~flat_p[i : i + rows]])  # NaN sorts last, -inf first
        if neg.size and not (np.isfinite(neg[0]) and np.isfinite(neg[-1])):
            raise ValueError(f"{name} contain NaN or infinite values")
        n_neg += neg.size
        left = np.searchsorted(neg, u, side="left")  # negatives < u_j
        right = left.copy()  # negatives <= u_j: differs only where some negative equals u_j
        tied = np.flatnonzero(neg[np.minimum(left, max(neg.size - 1, 0))] == u) if neg.size else left[:0]
        right[tied] = np.searchsorted(neg, u[tied], side="right")
        equal += right - left
        prev = np.concatenate(([0], right))
        between[:n_u] += left - prev[:-1]
        between[n_u] += neg.size - prev[-1]
    return SweepStats(u, cnt.astype(np.int64), w, between, equal, int(pos.size), n_neg)


def auroc_from(st: SweepStats) -> float:
    """Mann-Whitney AUROC (ties count 1/2), identical to the ROC trapezoid."""
    if st.n_pos == 0 or st.n_neg == 0:
        return float("nan")
    tp = np.append(st.tp_at(), 0).astype(np.float64)  # positives >= u_j; tp[U] = 0
    # negatives in (u_{j-1}, u_j): positives above = tp[j]; negatives == u_j: above tp[j+1], tied count[j]
    above = np.dot(st.neg_between, tp) + np.dot(st.neg_equal, tp[1:] + 0.5 * st.pos_count)
    return float(above / (float(st.n_pos) * float(st.n_neg)))


def ap_from(st: SweepStats) -> float:
    """Average precision ``sum_j (R_j - R_{j+1}) P_j`` (scikit-learn's definition)."""
    if st.n_pos == 0:
        return float("nan")
    tp, fp = st.tp_at().astype(np.float64), st.fp_at().astype(np.float64)
    return float(np.sum(st.pos_count / st.n_pos * tp / (tp + fp)))


def f1max_from(st: SweepStats) -> float:
    """Max over thresholds of ``2 TP / (2 TP + FP + FN)``."""
    if st.n_pos == 0:
        return float("nan")
    tp, fp = st.tp_at().astype(np.float64), st.fp_at().astype(np.float64)
    return float(np.max(2 * tp / (tp + fp + st.n_pos)))
