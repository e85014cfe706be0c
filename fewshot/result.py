"""Typed result objects shared by every method."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AnomalyResult:
    """Output of ``AnomalyMethod.predict``.

    Attributes:
        image_scores: ``[N]`` float32, higher = more anomalous.
        anomaly_maps: ``[N, H, W]`` float32 at the method's working resolution
            (``method.preprocess.size``), higher = more anomalous.
        image_terms: ``[N]`` the part of each image score that comes from an image-level term
            and not from the map (``knn``'s global term: a texture-wide change), or ``None`` for
            methods without one.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    image_terms: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.image_scores.ndim != 1:
            raise ValueError(f"image_scores must be [N], got {tuple(self.image_scores.shape)}")
        if self.anomaly_maps.ndim != 3 or self.anomaly_maps.shape[0] != self.image_scores.shape[0]:
            raise ValueError(
                f"anomaly_maps must be [N, H, W] with N={self.image_scores.shape[0]}, "
                f"got {tuple(self.anomaly_maps.shape)}"
            )
        if self.image_terms is not None and self.image_terms.shape != self.image_scores.shape:
            raise ValueError(f"image_terms must be [N] like image_scores, got {tuple(self.image_terms.shape)}")

    def __len__(self) -> int:
        return int(self.image_scores.shape[0])

    @staticmethod
    def concat(parts: list[AnomalyResult]) -> AnomalyResult:
        """Concatenate batch results along N (``image_terms`` only when every part has them)."""
        terms = [p.image_terms for p in parts]
        return AnomalyResult(
            torch.cat([p.image_scores for p in parts]), torch.cat([p.anomaly_maps for p in parts]),
            torch.cat(terms) if terms and all(t is not None for t in terms) else None,  # type: ignore[arg-type]
        )
