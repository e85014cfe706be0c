"""The one renderer of anomaly maps: jet colour map, overlays, PNG files and base64 thumbnails.

Used by the 2D workflow (``fsiad score``/``predict`` overlays and report) and by the 3D branch
(``fsiad.pointcloud.inspect``: coloured ``.ply`` points and overlays). Imports no encoder.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] -> ``HxWx3`` uint8."""
    return (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 1]`` (clipped); a flat range maps to 0."""
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values.astype(np.float32) - lo) / span, 0.0, 1.0)


def jet(x: np.ndarray) -> np.ndarray:
    """Jet colour map: ``[...]`` in [0, 1] (clipped) -> float RGB ``[..., 3]`` in [0, 1] (blue = low, red = high)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)[..., None] * 4.0
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # R, G, B peaks
    return np.clip(1.5 - np.abs(x - centres), 0.0, 1.0)


def colormap(x: np.ndarray) -> np.ndarray:
    """``jet`` as ``[..., 3]`` uint8."""
    return (jet(x) * 255.0 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float, alpha: float = 0.5) -> np.ndarray:
    """Blend a coloured anomaly map over an image.

    Args:
        image: ``HxWx3`` uint8.
        amap: ``[h, w]`` float anomaly map (resized to the image bilinearly if needed).
        lo, hi: score range mapped to the ends of the colour map.
        alpha: weight of the heatmap.

    Returns:
        ``HxWx3`` uint8.
    """
    h, w = image.shape[:2]
    if amap.shape != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
        amap = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = colormap(normalise(amap, lo, hi)).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """``HxWx3`` uint8 -> PNG file content."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(array: np.ndarray, path) -> None:
    """Write an ``HxWx3`` uint8 array as PNG (atomically: readers never see half a file)."""
    from fsiad.fewshot.fileio import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(array))


def png_base64(array: np.ndarray, max_side: int | None = None) -> str:
    """``HxWx3`` uint8 -> base64 PNG text, downscaled so the longer side is <= ``max_side``."""
    im = Image.fromarray(array)
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")
