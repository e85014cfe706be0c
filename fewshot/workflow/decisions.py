"""Pixel decisions at the part's own size: map -> original geometry, defect mask, area, boxes.

``map_to_image`` is the ONE place that brings a method's ``[S, S]`` anomaly map back onto the
original image (``H x W``): today a bilinear resize, the inverse of the square resize the
methods apply (and of ``map_to_square`` for native-geometry methods). Masks, overlays and the
report all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fsiad.fewshot.preprocess import Preprocess


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file (header only), EXIF orientation ignored like the readers."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def map_to_image(amap: np.ndarray, size: tuple[int, int], pre: Preprocess | None = None) -> np.ndarray:
    """``[h, w]`` anomaly map -> ``size = (H, W)`` float32 (bilinear; unchanged when equal).

    With the method's ``pre`` (``Preprocess``) its centre crop is undone first
    (``Preprocess.map_to_image``), so the map lands where the method looked."""
    if pre is not None:
        return pre.map_to_image(amap, size)
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == tuple(size):
        return amap
    t = torch.from_numpy(np.ascontiguousarray(amap))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass
class PixelDecision:
    """Defect region of one image at its original size.

    Attributes:
        height, width: the original image size.
        area_px: pixels at or above the pixel threshold; ``area_pct``: their share in %.
        boxes: ``[x0, y0, x1, y1]`` per connected region (inclusive pixel coordinates), largest first.
    """

    height: int
    width: int
    area_px: int = 0
    area_pct: float = 0.0
    boxes: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "area_px": self.area_px, "area_pct": self.area_pct,
                "boxes": self.boxes}


def defect_mask(amap: np.ndarray, size: tuple[int, int], pixel_threshold: float,
                pre: Preprocess | None = None) -> np.ndarray:
    """Bool ``H x W`` mask: map (at the original size) ``>= pixel_threshold``."""
    return map_to_image(amap, size, pre) >= pixel_threshold


def describe_mask(mask: np.ndarray, max_boxes: int = 10) -> PixelDecision:
    """Area and bounding boxes (8-connected regions, largest first, at most ``max_boxes``)."""
    from scipy import ndimage

    h, w = mask.shape
    area = int(mask.sum())
    out = PixelDecision(h, w, area, round(100.0 * area / max(h * w, 1), 3))
    if area:
        lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        slices = ndimage.find_objects(lab)
        for i in np.argsort(-sizes, kind="stable")[:max_boxes]:
            sy, sx = slices[i]
            out.boxes.append([int(sx.start), int(sy.start), int(sx.stop - 1), int(sy.stop - 1)])
    return out


def boxes_text(boxes: list[list[int]]) -> str:
    """``x0 y0 x1 y1;...`` for ``scores.csv``."""
    return ";".join(" ".join(str(v) for v in b) for b in boxes)


def mask_png(mask: np.ndarray) -> np.ndarray:
    """Bool mask -> ``H x W`` uint8 (255 = defect) for a PNG."""
    return mask.astype(np.uint8) * 255
