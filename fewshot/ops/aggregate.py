"""Local neighbourhood aggregation of patch features (PatchCore 3x3, MuSc LNAMD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_aggregate(features: torch.Tensor, r: int) -> torch.Tensor:
    """Average each patch feature with its ``r x r`` neighbourhood (stride 1, same size).

    Border patches average over the neighbours that exist (zero padding is not counted,
    ``count_include_pad=False``), so a constant feature map stays constant.

    Args:
        features: ``[N, h, w, C]``.
        r: odd window side; ``1`` returns the input unchanged.

    Returns:
        ``[N, h, w, C]`` float tensor.
    """
    if features.ndim != 4:
        raise ValueError(f"local_aggregate: features must be [N, h, w, C], got {tuple(features.shape)}")
    if r < 1 or r % 2 == 0:
        raise ValueError(f"local_aggregate: r must be a positive odd integer, got {r}")
    if r == 1:
        return features
    x = features.permute(0, 3, 1, 2)
    y = F.avg_pool2d(x, kernel_size=r, stride=1, padding=r // 2, count_include_pad=False)
    return y.permute(0, 2, 3, 1).contiguous()
