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


def operating_points(scores: ArrayLike, labels: ArrayLike, max_fpr: float) -> dict[str, dict[str, float] | None]:
    """Thresholds chosen on labelled image scores (``score >= threshold`` flags an image).

    Args:
        scores: ``[N]`` image scores.
        labels: ``[N]`` 0 normal / 1 anomalous; both classes needed.
        max_fpr: the false-alarm rate a line accepts.

    Returns:
        ``{"at_fpr": ..., "f1_max": ...}``, each ``{"threshold", "recall", "false_positive_rate",
        "f1", "false_alarms", "misses"}`` or ``None``. ``at_fpr``: the lowest threshold whose
        false-alarm rate on the normals is <= ``max_fpr`` (the most recall that rate allows;
        ``None`` when none flags a defect). ``f1_max``: the threshold of the best F1 (the
        highest such on ties). Each threshold lies midway between the lowest flagged score and
        the next lower score, so that a value rounded to a few digits decides alike.

    Raises:
        ValueError: a class is missing, or ``max_fpr`` is not in ``[0, 1]``.
    """
    s, y = _scores_labels(scores, labels)
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    st = sweep(s, y)
    if st.n_pos == 0 or st.n_neg == 0:
        raise ValueError("operating_points needs normal and anomalous labelled scores")
    tp, fp = st.tp_at().astype(np.float64), st.fp_at().astype(np.float64)
    f1 = 2 * tp / (tp + fp + st.n_pos)

    def point(j: int) -> dict[str, float]:
        u = float(st.u[j])
        below = s[s < u]
        t = (u + float(below.max())) / 2 if below.size else u
        return {"threshold": t, "recall": float(tp[j] / st.n_pos), "false_positive_rate": float(fp[j] / st.n_neg),
                "f1": float(f1[j]), "false_alarms": int(fp[j]), "misses": int(st.n_pos - tp[j])}

    ok = np.nonzero(fp <= np.floor(max_fpr * st.n_neg + 1e-9))[0]
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    return {"at_fpr": point(int(ok[0])) if ok.size else None, "f1_max": point(best)}


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
    "operating_points",
    "pixel_metrics",
]
