"""Shared helpers for the visual-memory method tests (engineer C): synthetic data, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fsiad.fewshot.data.synthetic import render_category
from fsiad.fewshot.methods import AnomalyMethod
from sklearn.metrics import roc_auc_score


def require_weights(name: str) -> None:
    """Skip (with the reason) when the real offline weights of encoder ``name`` are absent."""
    from fsiad.fewshot.encoders import encoder_status

    status = encoder_status(name)
    if not status["available"]:
        pytest.skip(f"{name} weights not installed here (scripts/setup.sh installs them)")


def synthetic(method: AnomalyMethod, kind: str = "texture", size: int = 128, n_train: int = 4,
              n_good: int = 4, n_defect: int = 4, seed: int = 0):
    """Synthetic category through ``method.preprocess``.

    Returns:
        ``(train [K,3,S,S], test [N,3,S,S], labels [N] int, masks [N,S,S] bool)``.
    """
    parts = render_category(kind, size, n_train, n_good, n_defect, seed)
    train = method.preprocess.images([img for img, _ in parts.pop("train")])
    items = [(img, m, int(g != "good")) for g, lst in parts.items() for img, m in lst]
    test = method.preprocess.images([i for i, _, _ in items])
    masks = method.preprocess.masks([m for _, m, _ in items])
    labels = np.array([lab for _, _, lab in items])
    return train, test, labels, masks


def aurocs(result, labels: np.ndarray, masks: torch.Tensor) -> tuple[float, float]:
    """(image AUROC, pixel AUROC) of an ``AnomalyResult``."""
    img = roc_auc_score(labels, result.image_scores.numpy())
    pix = roc_auc_score(masks.numpy().ravel(), result.anomaly_maps.numpy().ravel())
    return float(img), float(pix)
