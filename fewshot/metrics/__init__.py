"""Image- and pixel-level anomaly detection metrics (numpy or torch inputs).

All metrics are exact threshold sweeps (ties handled as thresholds do) computed in one
memory-bounded pass, see :mod:`fewshot.metrics.core`. Degenerate inputs (no positive or no
negative) give NaN for the metrics that are undefined there (AUROC, AUPRO; AP and F1-max
are NaN only without positives).
"""

from __future__ import annotations

import numpy as np
import torch
from fsiad.fewshot.metrics.core import ap_from, auroc_from, f1max_from, sweep, to_bool, to_numpy
from fsiad.fewshot.metrics.pro import aupro, aupro_cflow, aupro_from, pro_weights

ArrayLike = np.ndarray | torch.Tensor
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")


def _scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, y = to_numpy(scores, "scores").reshape(-1), to_bool(labels, "labels").reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    return s, y


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (== ``sklearn.metrics.roc_auc_score``)."""
    return auroc_from(sweep(*_scores_labels(scores, labels)))


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision (== ``sklearn.metrics.average_precision_score``)."""
    return ap_from(sweep(*_scores_labels(scores, labels)))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> float:
    """Best F1 over all thresholds."""
    return f1max_from(sweep(*_scores_labels(scores, labels)))


def image_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Image-level metrics.

    Args:
        scores: ``[N]`` image anomaly scores.
        labels: ``[N]`` 0 normal / 1 anomalous.

    Returns:
        ``{"image_auroc", "image_ap", "image_f1max"}`` as floats in [0, 1] (NaN if undefined).
    """
    st = sweep(*_scores_labels(scores, labels))
    return {"image_auroc": auroc_from(st), "image_ap": ap_from(st), "image_f1max": f1max_from(st)}


def pixel_metrics(maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel-level metrics over all pixels of all images (normal images included).

    Args:
        maps: ``[N, H, W]`` anomaly maps.
        masks: ``[N, H, W]`` bool ground truth (all False for normal images).
        fpr_limit: AUPRO integration limit (official definition, see :func:`aupro`).

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}`` (NaN if undefined).
    """
    a, m = to_numpy(maps, "anomaly maps"), to_bool(masks, "masks")
    if a.ndim != 3 or a.shape != m.shape:
        raise ValueError(f"maps and masks must both be [N, H, W], got {a.shape} and {m.shape}")
    w, _ = pro_weights(m)
    st = sweep(a, m, w, "anomaly maps")
    return {
        "pixel_auroc": auroc_from(st),
        "pixel_ap": ap_from(st),
        "pixel_f1max": f1max_from(st),
        "pixel_aupro": aupro_from(st, fpr_limit),
    }


__all__ = [
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "aupro",
    "aupro_cflow",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
]
