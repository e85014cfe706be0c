"""Geometric preprocessing shared by a method, its encoder and the evaluation protocol.

Images enter methods as float tensors ``[N, 3, S, S]`` in ``[0, 1]`` (no mean/std
normalisation: each encoder applies its own). Masks go through the same geometry with
nearest-neighbour interpolation so that metrics are computed at the method's resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


@dataclass(frozen=True)
class Preprocess:
    """Square resize to ``resize`` (default ``size``) then centre-crop to ``size``.

    Attributes:
        size: side of the square tensor a method works on.
        resize: side of the square resize before the centre crop (``None`` = ``size``).
        interpolation: image interpolation (``bicubic``, ``bilinear`` or ``nearest``).
    """

    size: int
    resize: int | None = None
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in _MODES:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(_MODES)}")
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size})")

    @property
    def resize_side(self) -> int:
        return self.resize or self.size

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        off = (self.resize_side - self.size) // 2
        return x[..., off : off + self.size, off : off + self.size]

    def images(self, images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 ``HxWx3`` arrays (any sizes) -> float ``[N, 3, S, S]`` in ``[0, 1]``."""
        side = self.resize_side
        out = []
        for img in images:
            t = torch.from_numpy(np.require(img, np.uint8, ['C', 'W'])).permute(2, 0, 1)[None].float() / 255.0
            kw = {"antialias": True} if self.interpolation != "nearest" else {}
            if self.interpolation != "nearest":
                kw["align_corners"] = False
            t = F.interpolate(t, size=(side, side), mode=_MODES[self.interpolation], **kw)
            out.append(self._crop(t).clamp_(0.0, 1.0))
        return torch.cat(out) if out else torch.empty(0, 3, self.size, self.size)

    def masks(self, masks: list[np.ndarray | None]) -> torch.Tensor:
        """bool ``HxW`` masks (``None`` = all normal) -> bool ``[N, S, S]`` (nearest)."""
        side = self.resize_side
        out = []
        for m in masks:
            if m is None:
                out.append(torch.zeros(1, self.size, self.size, dtype=torch.bool))
                continue
            t = torch.from_numpy(np.require(m, None, ['C', 'W'])).float()[None, None]
            t = F.interpolate(t, size=(side, side), mode="nearest")
            out.append(self._crop(t)[0] > 0.5)
        return torch.cat(out) if out else torch.empty(0, self.size, self.size, dtype=torch.bool)

    def map_to_image(self, amap: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Invert this geometry for an anomaly map: ``[S, S]`` -> ``size = (H, W)`` float32.

        The centre crop is undone by edge padding to the resize side (the cropped-off border has
        no scores of its own), then the square is stretched back to the image's own size
        (bilinear). The one way maps return to the original image (overlays, defect masks, 3D).
        """
        t = torch.as_tensor(np.asarray(amap, dtype=np.float32))[None, None]
        pad = self.resize_side - self.size
        if pad > 0 and tuple(t.shape[-2:]) == (self.size, self.size):
            t = F.pad(t, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), mode="replicate")
        if tuple(t.shape[-2:]) == tuple(size):
            return t[0, 0].numpy()
        return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()

    def describe(self) -> dict:
        """Protocol record for results metadata."""
        d = asdict(self)
        d["crop"] = self.size if self.resize_side != self.size else None
        d["mask_interpolation"] = "nearest"
        d["metric_resolution"] = [self.size, self.size]
        return d
