"""Per-modality patch features of the point-cloud methods: ``fpfh``, ``rgb`` and ``depth``.

Every modality yields ``[N, g, g, C]`` on the method's ``g x g`` grid: FPFH of the organized
cloud average-pooled to the grid (memoised per cloud), and the 2D encoder's layers 3x3-pooled
and adaptively pooled to the grid for the RGB image and for the depth map rendered as a
3-channel image (BTF's "RGB iNet" / "Depth iNet").
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.fileio import atomic_path
from fsiad.pointcloud.batch import RGBDBatch
from fsiad.pointcloud.features import FPFHParams, depth_image, fpfh_organized, pool_to_grid
from fsiad.pointcloud.io import valid_mask

MODALITIES = ("rgb", "depth", "fpfh")
#: 2D encoders in order of preference when ``config.encoder`` is not given (BTF uses WR50).
PREFERRED_ENCODERS = ("wide_resnet50_2", "tf_efficientnet_lite0", "dinov2_vits14")
FPFH_POOLS = ("zeros", "valid")

_FPFH_MEMO: OrderedDict[str, torch.Tensor] = OrderedDict()
_FPFH_MEMO_MAX = 512


def select_encoder_name(config: Any) -> str:
    """``config.encoder`` or the first preferred encoder whose weights are available here."""
    from fsiad.fewshot.encoders import encoder_names, encoder_status

    if config.encoder:
        return config.encoder
    known = [n for n in PREFERRED_ENCODERS if n in encoder_names()]
    for name in known:
        if encoder_status(name)["available"]:
            return name
    if config.allow_random and known:
        return known[0]
    raise FileNotFoundError(
        f"no 2D encoder weights available (tried {', '.join(PREFERRED_ENCODERS)}); "
        "install them with scripts/setup.sh (see `fsiad models`) or pass --encoder")


def _fpfh_cache_path(key: str) -> Path:
    from fsiad.pointcloud.cleaning import cache_dir

    return cache_dir() / "fpfh" / f"{key}.npy"


def _load_cached(path: Path, grid: int) -> torch.Tensor | None:
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle a cache entry
    except (OSError, ValueError):
        return None
    if arr.dtype != np.float32 or arr.shape != (grid, grid, 33):
        return None
    return torch.from_numpy(arr)


def fpfh_features(batch: RGBDBatch, params: FPFHParams, grid: int, pool: str = "zeros",
                  disk_cache: bool = False) -> torch.Tensor:
    """FPFH of each organized cloud pooled to ``grid x grid`` -> ``[N, g, g, 33]`` (memoised).

    ``pool="zeros"``: missing points count as zero features (BTF); ``"valid"``: mean over the
    valid points of each cell only. ``disk_cache``: also keep the pooled features as ``.npy``
    under ``$FSIAD_HOME/cache/pointcloud/fpfh``, keyed by the cloud's bytes and every parameter,
    so later runs skip FPFH (loaded bit-exactly, without pickle).
    """
    out = []
    for xyz, src in zip(batch.xyz, batch.sources, strict=True):
        arr = xyz.numpy()
        key = hashlib.sha1(arr.tobytes() + repr((arr.shape, params, grid, pool)).encode()).hexdigest()
        if key not in _FPFH_MEMO:
            path = _fpfh_cache_path(key) if disk_cache else None
            pooled = _load_cached(path, grid) if path is not None and path.is_file() else None
            if pooled is None:
                pooled = _pooled_fpfh(arr, params, grid, pool, src)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(path, suffix=".npy") as tmp:
                        np.save(tmp, pooled.numpy())
            _FPFH_MEMO[key] = pooled
            while len(_FPFH_MEMO) > _FPFH_MEMO_MAX:
                _FPFH_MEMO.popitem(last=False)
        out.append(_FPFH_MEMO[key])
    return torch.stack(out) if out else torch.empty(0, grid, grid, 33)


def _pooled_fpfh(arr: np.ndarray, params: FPFHParams, grid: int, pool: str, src: str) -> torch.Tensor:
    dense = torch.from_numpy(fpfh_organized(arr, params, src))[None]
    pooled = pool_to_grid(dense, grid)[0]
    if pool == "valid":  # mean over valid points only
        ok = torch.from_numpy(valid_mask(arr)).float()[None, ..., None]
        frac = pool_to_grid(ok, grid)[0]
        pooled = torch.where(frac > 0, pooled / frac.clamp_min(1e-6), torch.zeros(()))
    return pooled.contiguous()


def encoder_features(encoder: Any, images: torch.Tensor, layers: Any, grid: int, batch_size: int) -> torch.Tensor:
    """2D patch features ``[N, g, g, C]``: each layer 3x3-pooled to the grid, concatenated."""
    parts = []
    for i in range(0, images.shape[0], batch_size):
        feats = encoder.patch_features(images[i : i + batch_size], layers)
        parts.append(torch.cat([pool_to_grid(f, grid) for f in feats], dim=-1))
    return torch.cat(parts)


def depth_images(batch: RGBDBatch) -> torch.Tensor:
    """The depth maps of a batch rendered as 3-channel images ``[N, 3, S, S]`` in ``[0, 1]``."""
    d = np.stack([depth_image(x.numpy()) for x in batch.xyz]) if len(batch) else np.zeros((0, 1, 1, 3))
    return torch.from_numpy(d).permute(0, 3, 1, 2).float() / 255.0


__all__ = ["FPFH_POOLS", "MODALITIES", "PREFERRED_ENCODERS", "depth_images", "encoder_features", "fpfh_features",
           "select_encoder_name"]
