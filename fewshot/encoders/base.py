"""The encoder interface shared by every method (CLIP, DINOv2, CNN backbones).

Input images are float tensors ``[N, 3, H, W]`` in ``[0, 1]``; each encoder applies its own
mean/std normalisation. All forwards run under ``torch.inference_mode`` on ``self.device``
with optional autocast (``precision`` = ``fp32`` | ``bf16`` | ``fp16``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from fsiad.fewshot.encoders.cache import FeatureCache
from fsiad.fewshot.preprocess import Preprocess
from torch import nn


@dataclass(frozen=True)
class WeightInfo:
    """Where an encoder's weights came from.

    Attributes:
        source: ``file`` | ``cache`` | ``package`` | ``hub`` | ``random``.
        path: local file the weights were read from (``None`` for random).
        checksum: sha256 of the weight file (``"random-init-seed<k>"`` for random init).
    """

    source: str
    path: str | None
    checksum: str


class Encoder(nn.Module, ABC):
    """Patch features from chosen layers and a global image embedding.

    Attributes (set by subclasses):
        name: registry name, e.g. ``dinov2_vits14``.
        preprocess: default geometry (input side, resize, interpolation).
        mean, std: normalisation constants (RGB).
        patch_size: stride in pixels of the finest feature grid.
        layers: names of the layers ``patch_features`` accepts (ints for ViT blocks,
            strings like ``"layer2"`` for CNN stages).
        default_layers: layers a method uses when it does not choose.
        metric: recommended patch distance, ``cosine`` (ViT) or ``l2`` (CNN).
        weights: ``WeightInfo``.
    """

    name: str = ""
    patch_size: int = 16
    metric: str = "cosine"

    def __init__(self, preprocess: Preprocess, mean: Sequence[float], std: Sequence[float],
                 weights: WeightInfo, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__()
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.preprocess = preprocess
        self.weights = weights
        self.device_name = device
        self.precision = precision
        self._cache: FeatureCache | None = None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # -- helpers for subclasses ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.device_name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> normalised, on ``self.device``."""
        return (images.to(self.device, torch.float32) - self.mean) / self.std

    def autocast(self):
        """Autocast context for the configured precision (no-op for fp32)."""
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- interface ----------------------------------------------------------------------
    @property
    @abstractmethod
    def layers(self) -> list[int | str]: ...

    @property
    @abstractmethod
    def default_layers(self) -> list[int | str]: ...

    @abstractmethod
    def _patch_features(self, images: torch.Tensor, layers: Sequence[int | str]) -> list[torch.Tensor]:
        """Subclass hook: patch features for a batch, one ``[N, h, w, C]`` float32 tensor per layer."""

    def patch_features(self, images: torch.Tensor, layers: Sequence[int | str] | None = None) -> list[torch.Tensor]:
        """Patch features, one ``[N, h, w, C]`` float32 tensor (on CPU) per requested layer.

        When ``enable_cache`` was called, results are memoised per image content, so that an
        evaluation re-scoring the same test images for many shots/seeds encodes them once.
        """
        layers = list(self.default_layers if layers is None else layers)
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown:
            raise ValueError(f"{self.name}: unknown layers {unknown}; available: {self.layers}")
        if self._cache is None:
            with torch.inference_mode(), self.autocast():
                return [f.float().cpu() for f in self._patch_features(images, layers)]
        return self._cache.get_or_compute(("patch", tuple(layers)), images, self._uncached(layers))

    def _uncached(self, layers: list[int | str]):
        def compute(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.inference_mode(), self.autocast():
                return [f.float().cpu() for f in self._patch_features(x, layers)]
        return compute

    def enable_cache(self, max_bytes: int = 4 << 30) -> None:
        """Memoise ``patch_features`` per image (LRU, bounded by ``max_bytes``)."""
        self._cache = FeatureCache(max_bytes)

    def disable_cache(self) -> None:
        self._cache = None

    @abstractmethod
    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Global embedding ``[N, D]`` float32 (CLS / projected image embedding / pooled)."""

    def describe(self) -> dict:
        return {
            "encoder": self.name,
            "weights_source": self.weights.source,
            "weights_path": self.weights.path,
            "weights_checksum": self.weights.checksum,
            "precision": self.precision,
            "device": self.device_name,
        }


class BlockEncoder(Encoder):
    """A ViT whose layers are its blocks: ``k`` (final LayerNorm applied) and ``"raw<k>"``
    (without it) for ``k < depth``; the default is the last block. Subclasses set ``depth``."""

    depth: int = 0

    @property
    def layers(self) -> list[int | str]:
        return [*range(self.depth), *(f"raw{k}" for k in range(self.depth))]

    @property
    def default_layers(self) -> list[int | str]:
        return [self.depth - 1]
