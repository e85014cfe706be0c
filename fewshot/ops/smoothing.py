"""Map upsampling and Gaussian smoothing shared by every method."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, radius_factor: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(radius_factor * sigma)`` -> ``[2R+1]``."""
    radius = max(1, math.ceil(radius_factor * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, chunk: int = 16) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius 4 sigma, reflect padding) of ``[N, H, W]``.

    Runs ``chunk`` maps at a time: CPU convolution unfolds its input (``H * W * (2R + 1)``
    floats per map, 6.6 MB at 224 px and sigma 4), which must not grow with ``N``.
    """
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device)
    r = (k.numel() - 1) // 2
    h, w = maps.shape[-2:]
    mode = "reflect" if min(h, w) > r else "replicate"
    out = torch.empty(maps.shape, dtype=torch.float32, device=maps.device)
    for s in range(0, maps.shape[0], chunk):
        x = maps[s : s + chunk].float().unsqueeze(1)
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        out[s : s + chunk] = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1)).squeeze(1)
    return out


def upsample_blur(maps: torch.Tensor, size: int, sigma: float = 4.0) -> torch.Tensor:
    """Bilinear upsampling to ``size x size`` then Gaussian blur.

    Args:
        maps: ``[N, h, w]`` patch-level anomaly maps.
        size: output side.
        sigma: Gaussian sigma in output pixels (``0`` disables the blur).

    Returns:
        ``[N, size, size]`` float32.
    """
    if maps.ndim != 3:
        raise ValueError(f"upsample_blur: maps must be [N, h, w], got {tuple(maps.shape)}")
    x = F.interpolate(maps.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    return gaussian_blur(x.squeeze(1), sigma)
