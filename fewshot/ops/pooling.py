"""Image scores from anomaly maps."""

from __future__ import annotations

import math

import torch


def topk_mean(maps: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the top ``ceil(fraction * n)`` values of each map (at least one; ``0`` = max).

    Args:
        maps: ``[N, ...]`` per-image maps or patch scores.
        fraction: share of the highest elements averaged, in ``[0, 1]``.

    Returns:
        ``[N]`` float32 image scores.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"topk_mean: fraction must be in [0, 1], got {fraction}")
    flat = maps.reshape(maps.shape[0], -1).float()
    if flat.shape[1] == 0:
        raise ValueError("topk_mean: maps have no elements")
    k = min(flat.shape[1], max(1, math.ceil(fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)
