"""The one renderer of anomaly maps: a perceptually uniform colour map, overlays, PNG/JPEG files.

Used by the 2D workflow (``fsiad score``/``predict`` overlays, masks, thumbnails and report) and
by the 3D branch (``fsiad.pointcloud.inspect``: coloured ``.ply`` points and overlays). Imports
no encoder.

Colour map: viridis (dark blue -> green -> yellow), perceptually uniform and readable in grey
and by colour-blind viewers; ``VIRIDIS`` below is its table at 11 evenly spaced stops,
interpolated linearly.

Colour scale of a run (``ColourScale``): the same for every image of the run, anchored to the
pixel threshold: ``lo`` (the normal background level of the references' maps) sits at 0,
the pixel threshold at ``THRESHOLD_POSITION`` (0.75), and the top colour is reached only at
``hi = lo + (threshold - lo) / 0.75``, above the threshold. The heat is drawn only where the
map is notable: opacity 0 below half-way to the threshold, rising to ``MAX_ALPHA`` at it; the
rest of the part shows through unchanged.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch only for the tensor helper; the renderer itself is numpy (the torch-free runner uses it)
    import torch

#: viridis at 0, 1/8, ..., 1 (RGB in [0, 1]).
VIRIDIS = np.array([
    [0.267004, 0.004874, 0.329415], [0.282623, 0.140926, 0.457517], [0.253935, 0.265254, 0.529983],
    [0.206756, 0.371758, 0.553117], [0.163625, 0.471133, 0.558148], [0.127568, 0.566949, 0.550556],
    [0.134692, 0.658636, 0.517649], [0.266941, 0.748751, 0.440573], [0.477504, 0.821444, 0.318195],
    [0.741388, 0.873449, 0.149561], [0.993248, 0.906157, 0.143936],
], dtype=np.float32)
_STOPS = np.linspace(0.0, 1.0, len(VIRIDIS), dtype=np.float32)
THRESHOLD_POSITION = 0.75
MAX_ALPHA = 0.65
CONTOUR_RGB = (255, 0, 255)


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] -> ``HxWx3`` uint8."""
    return (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 1]`` (clipped); a flat range maps to 0."""
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values.astype(np.float32) - lo) / span, 0.0, 1.0)


def colors(x: np.ndarray) -> np.ndarray:
    """Viridis: ``[...]`` in [0, 1] (clipped) -> float RGB ``[..., 3]`` in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.stack([np.interp(x, _STOPS, VIRIDIS[:, c]) for c in range(3)], axis=-1).astype(np.float32)




def colormap(x: np.ndarray) -> np.ndarray:
    """``colors`` as ``[..., 3]`` uint8."""
    return (colors(x) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class ColourScale:
    """Map values -> [0, 1] for the whole run (see the module docstring)."""

    lo: float
    hi: float
    threshold: float | None = None

    @staticmethod
    def anchored(floor: float, threshold: float) -> ColourScale:
        """``floor`` at 0, ``threshold`` at ``THRESHOLD_POSITION``."""
        lo = min(floor, threshold * 0.5) if threshold > 0 else floor
        if not threshold > lo:
            lo = threshold - max(abs(threshold), 1e-6)
        return ColourScale(lo, lo + (threshold - lo) / THRESHOLD_POSITION, threshold)

    def position(self, values: np.ndarray) -> np.ndarray:
        return normalise(values, self.lo, self.hi)

    def to_dict(self) -> dict[str, float | None]:
        return {"min": self.lo, "max": self.hi, "threshold": self.threshold,
                "threshold_position": THRESHOLD_POSITION if self.threshold is not None else None}


def overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float, alpha: float = MAX_ALPHA) -> np.ndarray:
    """Colour a map over an image where it is notable (opacity ramps from half-way to 3/4 of the scale).

    Args:
        image: ``HxWx3`` uint8.
        amap: ``[h, w]`` float anomaly map (resized to the image, ``decisions.map_to_image``).
        lo, hi: values at the bottom and top of the colour map (``ColourScale``).
        alpha: opacity of the heat at and above the threshold position.

    Returns:
        ``HxWx3`` uint8.
    """
    if tuple(amap.shape) != tuple(image.shape[:2]):
        from fsiad.fewshot.workflow.decisions import map_to_image

        amap = map_to_image(amap, image.shape[:2])
    x = normalise(amap, lo, hi)
    half = THRESHOLD_POSITION / 2
    a = (np.clip((x - half) / (THRESHOLD_POSITION - half), 0.0, 1.0) * alpha)[..., None]
    out = (1.0 - a) * image.astype(np.float32) + a * colormap(x).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def contour(image: np.ndarray, mask: np.ndarray | None, width: int = 2) -> np.ndarray:
    """The image with the outline of ``mask`` (bool ``HxW``) drawn in ``CONTOUR_RGB``."""
    out = image.copy()
    if mask is None or not mask.any():
        return out
    from scipy import ndimage

    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, width), border_value=0)
    out[edge] = CONTOUR_RGB
    return out


def side_by_side(panels: list[np.ndarray], height: int, gap: int = 3) -> np.ndarray:
    """Panels resized to ``height`` (aspect kept) and joined left to right with white gaps."""
    parts = []
    for i, p in enumerate(panels):
        im = Image.fromarray(p)
        w = max(1, round(im.width * height / im.height))
        parts.append(np.asarray(im.resize((w, height), Image.BILINEAR)))
        if i < len(panels) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """``HxWx3`` (or ``HxW``) uint8 -> PNG file content."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write a uint8 array as PNG (atomically: readers never see half a file)."""
    from fsiad.fewshot.fileio import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(array))


def save_jpeg(array: np.ndarray, path: str | Path, quality: int = 80) -> None:
    """Write an ``HxWx3`` uint8 array as JPEG (atomically)."""
    from fsiad.fewshot.fileio import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())


def png_base64(array: np.ndarray, max_side: int | None = None) -> str:
    """``HxWx3`` uint8 -> base64 PNG text, downscaled so the longer side is <= ``max_side``."""
    im = Image.fromarray(array)
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def colour_bar_svg(scale: ColourScale, width: int = 320, height: int = 46) -> str:
    """Inline SVG colour bar of ``scale`` with the threshold marked (for the report)."""
    stops = "".join(f'<stop offset="{o:.3f}" stop-color="rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})"/>'
                    for o, (r, g, b) in zip(_STOPS, VIRIDIS, strict=True))
    bar_w, y0 = width - 20, 6
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="colour scale" font-size="10" font-family="sans-serif">',
             f'<defs><linearGradient id="cbar">{stops}</linearGradient></defs>',
             f'<rect x="10" y="{y0}" width="{bar_w}" height="14" fill="url(#cbar)" stroke="#333"/>',
             f'<text x="10" y="{y0 + 28}">{scale.lo:.4g}</text>',
             f'<text x="{10 + bar_w}" y="{y0 + 28}" text-anchor="end">{scale.hi:.4g}</text>']
    if scale.threshold is not None:
        x = 10 + THRESHOLD_POSITION * bar_w
        parts.append(f'<line x1="{x:.1f}" y1="{y0 - 4}" x2="{x:.1f}" y2="{y0 + 18}" stroke="#d00" stroke-width="2"/>'
                     f'<text x="{x:.1f}" y="{y0 + 28}" text-anchor="middle" fill="#d00">pixel threshold '
                     f'{scale.threshold:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)
