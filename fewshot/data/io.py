"""Robust image and mask IO.

Every image becomes ``uint8 HxWx3`` RGB whatever its storage (grayscale, gray+alpha, RGBA,
palette, CMYK, 16-bit or float TIFF); every mask becomes ``bool HxW``. Any problem with a
file is raised as a one-line :class:`DatasetError` ``"<path>: <problem>"``.

Conventions: alpha channels are dropped (not composited), EXIF orientation is ignored (so
that masks stay aligned with their images), 16-bit values are rescaled by ``255/65535``,
float images in ``[0, 1]`` are scaled by 255 and other float ranges are min-max rescaled.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from fsiad.fewshot.data.base import DatasetError, Sample
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
MASK_MODES = ("auto", "threshold", "nonzero")

# A few datasets (e.g. large VisA images) exceed PIL's decompression-bomb guard.
Image.MAX_IMAGE_PIXELS = None


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with a known image extension."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises many types on corrupt input
        raise DatasetError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar CHW -> HWC
    return arr


def _read_raw(path: str | Path) -> np.ndarray:
    """Pixel array as stored (palette/CMYK/YCbCr/1-bit already converted to RGB/L)."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode.startswith("I;16"):
                    return np.asarray(im).astype(np.uint16)
                arr = np.asarray(im)
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not a readable image (corrupt or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None
    if arr.size == 0:
        raise DatasetError(f"{path}: image has no pixels")
    return arr


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:  # 16-bit data stored as int32 (PIL mode "I")
            return _to_uint8(arr.astype(np.uint16), path)
        arr = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise DatasetError(f"{path}: image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.round(arr * 255.0).astype(np.uint8)
    raise DatasetError(f"{path}: unsupported pixel type {arr.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image as RGB.

    Args:
        path: image file.

    Returns:
        ``uint8`` array ``[H, W, 3]``.

    Raises:
        DatasetError: missing, empty, corrupt or unsupported file (one line naming it).
    """
    path = Path(path)
    arr = _read_raw(path)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(_to_uint8(arr, path)[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        arr = np.repeat(_to_uint8(arr[..., 0], path)[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = _to_uint8(arr[..., :3], path)
    else:
        raise DatasetError(f"{path}: unsupported image shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def read_mask(
    path: str | Path,
    expected_hw: tuple[int, int] | None = None,
    mode: str = "auto",
    image: str | Path | None = None,
) -> np.ndarray:
    """Read a ground-truth mask as a boolean array.

    Args:
        path: mask file (any format :func:`read_image` accepts; colour masks use the max
            over RGB).
        expected_hw: ``(H, W)`` of the image the mask belongs to; a different size raises.
        mode: ``threshold`` = ``> 127`` on the 8-bit scale (MVTec-style 0/255 masks, also
            anti-aliased ones); ``nonzero`` = ``!= 0`` (class-index masks such as VisA's);
            ``auto`` (default) = ``nonzero`` when no value exceeds 127 on the 8-bit scale
            (0/1 or class-index masks), else ``threshold``.
        image: image file, only used to name it in the size-mismatch error.

    Returns:
        ``bool`` array ``[H, W]``.

    Raises:
        DatasetError: unreadable mask or size mismatch (one line naming the file(s)).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; use one of {MASK_MODES}")
    path = Path(path)
    arr = _read_raw(path)
    if arr.ndim == 3:
        arr = arr[..., : min(arr.shape[-1], 3)].max(axis=-1) if arr.shape[-1] != 2 else arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{path}: unsupported mask shape {tuple(arr.shape)}")
    if expected_hw is not None and tuple(arr.shape) != tuple(expected_hw):
        what = f"image {image}" if image is not None else "image"
        raise DatasetError(
            f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} (WxH) differs from {what} size "
            f"{expected_hw[1]}x{expected_hw[0]}"
        )
    if mode == "auto":
        small = arr.dtype == np.bool_ or (
            float(arr.max()) <= (0.5 if np.issubdtype(arr.dtype, np.floating) else 127)
            if arr.dtype != np.uint16
            else int(arr.max()) <= 32767
        )
        mode = "nonzero" if small else "threshold"
    if mode == "nonzero":
        return arr != 0
    if arr.dtype == np.bool_:
        return arr.copy()
    if np.issubdtype(arr.dtype, np.floating) and float(np.nanmax(arr)) <= 1.0:
        return arr > 0.5
    return _to_uint8(arr, path) > 127


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a sample's image and (if any) its mask, checking that their sizes agree.

    The mask mode is taken from ``sample.extra["mask_mode"]`` (readers set ``nonzero`` for
    class-index masks), default ``auto``.

    Returns:
        ``(image uint8 [H, W, 3], mask bool [H, W] or None)``.
    """
    img = read_image(sample.path)
    if sample.mask_path is None:
        return img, None
    mode = sample.extra.get("mask_mode", "auto") if sample.extra else "auto"
    mask = read_mask(sample.mask_path, expected_hw=img.shape[:2], mode=mode, image=sample.path)
    return img, mask
