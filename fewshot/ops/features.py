"""Feature plumbing shared by the visual-memory methods (layer fusion, layer options).

Like all of ``ops``, it imports no encoder: methods build theirs with
``fsiad.fewshot.encoders.encoder_from_config``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from fsiad.fewshot.ops.aggregate import local_aggregate


def fuse_layers(
    feats: list[torch.Tensor], r: int = 1, normalize: bool = False, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Aggregate, resize to a common grid and concatenate per-layer patch features.

    Args:
        feats: per-layer ``[N, h_l, w_l, C_l]``.
        r: local aggregation window (``local_aggregate``) applied to each layer first.
        normalize: L2-normalise each layer's features before concatenation (then the cosine
            similarity of the concatenation is the mean of the per-layer cosines).
        grid: output ``(h, w)``; default the finest (largest) layer grid.

    Returns:
        ``[N, h, w, sum C_l]`` float32; coarser layers are upsampled bilinearly.
    """
    if not feats:
        raise ValueError("fuse_layers: no layers")
    if grid is None:
        grid = max((f.shape[1], f.shape[2]) for f in feats)
    out = []
    for f in feats:
        f = local_aggregate(f.float(), r)
        if (f.shape[1], f.shape[2]) != tuple(grid):
            f = F.interpolate(f.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
            f = f.permute(0, 2, 3, 1)
        if normalize:
            f = F.normalize(f, dim=-1)
        out.append(f)
    x = torch.cat(out, dim=-1) if len(out) > 1 else out[0]
    if normalize and len(out) > 1:
        x = x / len(out) ** 0.5
    return x.contiguous()


def block_depth(encoder: Any) -> int | None:
    """Number of blocks of a ViT-like encoder whose layers are block indices, else ``None``."""
    ints = [x for x in encoder.layers if isinstance(x, int)]
    return max(ints) + 1 if ints else None


def parse_layers(value: Any) -> list[int | str] | None:
    """Layers option from JSON/CLI (``[8, 11]``, ``"8,11"``, ``"blocks.2,blocks.4"``) -> list."""
    if value is None:
        return None
    if isinstance(value, (int, str)) and not (isinstance(value, str) and "," in value):
        value = [value]
    elif isinstance(value, str):
        value = value.split(",")
    out: list[int | str] = []
    for v in value:
        v = v.strip() if isinstance(v, str) else v
        out.append(int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v)
    return out
