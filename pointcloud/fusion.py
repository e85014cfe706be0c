"""Fusion of the per-modality patch features of the point-cloud methods (``pointcloud.methods``).

Each modality (``rgb``, ``depth``, ``fpfh``) gives patch features ``[N, g, g, C_m]``. Before
they meet in a memory bank, every modality is centred on the fit patches and divided by a
scale (``fusion_norm``), then weighted; ``fusion="concat"`` concatenates them into one bank
(BTF), ``fusion="scores"`` keeps a bank per modality and combines the distances as
``sqrt(sum_m d_m^2)``. See the ``pointcloud.methods`` docstring for the measurements.
"""

from __future__ import annotations

import torch
from fsiad.fewshot.ops import knn_search

FUSIONS = ("concat", "scores")
FUSION_NORMS = ("std", "nn", "nnmean", "none")
#: at most this many reference images enter the leave-one-out distance scale of ``fusion_norm="nn"``
NN_SCALE_IMAGES = 16


def loo_nn_distance(feats: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """Leave-one-image-out nearest-neighbour L2 distances of patches ``[K, P, C]`` (K >= 2),
    reduced per image (``max``: the image score a normal image would get; ``mean``), then
    averaged over images.

    Uses at most ``NN_SCALE_IMAGES`` images (evenly spaced); one kNN search per image.
    """
    k = feats.shape[0]
    sel = torch.linspace(0, k - 1, min(k, NN_SCALE_IMAGES)).round().long().unique()
    f = feats[sel]
    dists = []
    for i in range(f.shape[0]):
        others = torch.cat([f[:i], f[i + 1 :]]).reshape(-1, f.shape[-1])
        d = knn_search(f[i], others, k=1, metric="l2")[0][:, 0]
        dists.append(d.max() if reduce == "max" else d.mean())
    return torch.stack(dists).mean().clamp_min(1e-8)


def fit_normalisation(feats: dict[str, torch.Tensor], n_images: int, fusion_norm: str) -> dict[str, torch.Tensor]:
    """Per-modality centring and scale from the fit patches ``{m: [n_images * P, C_m]}``.

    ``none``: no centring, scale 1 (BTF); ``std``: square root of the total variance; ``nn`` /
    ``nnmean``: leave-one-image-out nearest-neighbour distance (max / mean per image; ``std``
    when there is a single image). Returns ``{"mean.<m>": [C_m], "scale.<m>": []}``.
    """
    if fusion_norm not in FUSION_NORMS:
        raise ValueError(f"fusion_norm must be one of {FUSION_NORMS}, got {fusion_norm!r}")
    stats: dict[str, torch.Tensor] = {}
    for m, f in feats.items():
        mean, scale = torch.zeros(f.shape[1]), torch.tensor(1.0)
        if fusion_norm != "none":
            mean = f.mean(0)
            scale = ((f - mean).pow(2).sum(1).mean()).sqrt().clamp_min(1e-8)
        if fusion_norm in ("nn", "nnmean") and n_images >= 2:
            red = "max" if fusion_norm == "nn" else "mean"
            scale = loo_nn_distance((f - mean).reshape(n_images, -1, f.shape[1]), red)
        stats[f"mean.{m}"], stats[f"scale.{m}"] = mean, scale.reshape(())
    return stats


def normalised(feats: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], weights: dict[str, float],
               modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-modality normalised, weighted features ``{m: [N * g * g, C_m]}``."""
    out = {}
    for m in modalities:
        f = feats[m].reshape(-1, feats[m].shape[-1]).float()
        out[m] = (f - stats[f"mean.{m}"]) / stats[f"scale.{m}"] * weights[m]
    return out


def fuse(norm: dict[str, torch.Tensor], fusion: str, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Bank/query features: ``{"fused": concatenation}`` or one entry per modality (``fusion="scores"``)."""
    if fusion == "scores" and len(norm) > 1:
        return norm
    return {"fused": torch.cat([norm[m] for m in modalities], dim=1)}


def fused_distance(queries: dict[str, torch.Tensor], banks: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Patch scores ``[Q]``: ``sqrt(sum over banks of d^2)``, ``d`` = mean L2 distance to the ``k``
    nearest bank entries (a single ``fused`` bank gives the plain kNN distance)."""
    total = None
    for key, q in queries.items():
        bank = banks[key]
        dist, _ = knn_search(q, bank, k=min(int(k), bank.shape[0]), metric="l2")
        d2 = dist.mean(1).pow(2)
        total = d2 if total is None else total + d2
    assert total is not None
    return total.sqrt()


__all__ = ["FUSIONS", "FUSION_NORMS", "NN_SCALE_IMAGES", "fit_normalisation", "fuse", "fused_distance",
           "loo_nn_distance", "normalised"]
