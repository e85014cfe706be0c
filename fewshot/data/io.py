"""Robust image and mask IO.

Every image becomes ``uint8 HxWx3`` RGB whatever its storage (grayscale, gray+alpha, RGBA,
palette, CMYK, 16-bit or float TIFF); every mask becomes ``bool HxW``. Any problem with a
file is raised as a one-line :class:`DatasetError` ``"<path>: <problem>"``.

Conventions: alpha channels are dropped (not composited), EXIF orientation is ignored (so
that masks stay aligned with their images), 16-bit values are rescaled by ``255/65535``,
float images in ``[0, 1]`` are scaled by 255 and other float ranges are min-max rescaled.

Decompression bombs: the pixel count is read from the file header BEFORE anything is decoded;
an image (or mask, or TIFF) above ``max_image_pixels()`` (default 64 MP, environment variable
``FSIAD_MAX_IMAGE_PIXELS``) raises a ``DatasetError`` naming the file, its size and the limit,
so the workflow lists it in ``errors.csv`` and goes on. PIL's own guard stays in force too
(it refuses images above twice ``Image.MAX_IMAGE_PIXELS``, ~179 MP).

Large but allowed images are reduced while decoding: above ``DECODE_PIXELS`` (16 MP) the
image is shrunk by the smallest integer factor ``f`` that brings it under that budget (JPEG:
the decoder's DCT scaling via ``Image.draft``, then ``Image.reduce``; box averages), so that
the float conversion in ``Preprocess`` never sees more than ~16 MP (working resolutions are
a few hundred to a few thousand pixels). The result is ``ceil(H/f) x ceil(W/f)``: every file
with the same header size gives the same decoded size, and masks are reduced by the same
factor (block maximum, so that small defects survive), so an image and its mask keep
matching sizes (``load_sample``) and cover the same field of view.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.errors import OptionError
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
MASK_MODES = ("auto", "threshold", "nonzero")

#: Default refusal limit (pixels per image), overridable with ``FSIAD_MAX_IMAGE_PIXELS``.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
#: Images above this many pixels are reduced by an integer factor while decoding.
DECODE_PIXELS = 16_000_000


def max_image_pixels() -> int:
    """The pixel limit: ``$FSIAD_MAX_IMAGE_PIXELS`` (an integer, ``64e6`` allowed) or 64 MP."""
    raw = os.environ.get("FSIAD_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 1:
        raise OptionError(f"FSIAD_MAX_IMAGE_PIXELS={raw!r}: expected a positive number of pixels (e.g. 64000000)")
    return int(value)


def _check_pixels(path: Path, width: int, height: int, what: str = "image") -> None:
    """Refuse a file whose header declares more pixels than ``max_image_pixels()`` (nothing decoded)."""
    limit = max_image_pixels()
    if width * height > limit:
        raise DatasetError(f"{path}: {what} is {width}x{height} ({width * height / 1e6:.1f} MP), above the "
                           f"{limit / 1e6:g} MP limit; downscale the file or raise FSIAD_MAX_IMAGE_PIXELS")


def _bomb_message(path: Path, exc: Exception, what: str) -> str:
    """Our one-line limit message for PIL's ``DecompressionBombError`` (raised before our check)."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"declares {int(m.group(1)) / 1e6:.1f} MP" if m else "declares too many pixels"
    return (f"{path}: {what} {size}, above the {max_image_pixels() / 1e6:g} MP limit; downscale the file "
            "(PIL refuses such files whatever FSIAD_MAX_IMAGE_PIXELS says)")


def reduce_factor(width: int, height: int) -> int:
    """Smallest integer ``f`` with ``ceil(W/f) * ceil(H/f) <= DECODE_PIXELS`` (1 = decode as is)."""
    f = 1
    while math.ceil(width / f) * math.ceil(height / f) > DECODE_PIXELS:
        f += 1
    return f


def _block_reduce(arr: np.ndarray, f: int, how: str) -> np.ndarray:
    """``[H, W, ...]`` -> ``[ceil(H/f), ceil(W/f), ...]`` by block mean or max (partial edge blocks)."""
    if f <= 1:
        return arr
    h, w = arr.shape[:2]
    ho, wo = math.ceil(h / f), math.ceil(w / f)
    out = np.empty((ho, wo, *arr.shape[2:]), np.float32 if how == "mean" else arr.dtype)
    for i in range(ho):  # one block row at a time: memory stays ~ f rows
        rows = arr[i * f : (i + 1) * f]
        pad = wo * f - w
        if how == "max":
            if pad:
                rows = np.concatenate([rows, np.repeat(rows[:, -1:], pad, axis=1)], axis=1)
            out[i] = rows.reshape(rows.shape[0], wo, f, *arr.shape[2:]).max(axis=(0, 2))
        else:
            s = np.add.reduceat(rows.astype(np.float64).sum(0), np.arange(0, w, f), axis=0)
            counts = rows.shape[0] * np.minimum(f, w - np.arange(0, w, f))
            out[i] = s / counts.reshape(-1, *([1] * (arr.ndim - 2)))
    if how == "mean" and np.issubdtype(arr.dtype, np.integer):
        return np.round(out).astype(arr.dtype)
    return out


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


def _tiff_pixels(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(width, height)`` of a TIFF series shape (HW, HWC, CHW; other layouts: all elements)."""
    if len(shape) == 2:
        return shape[1], shape[0]
    if len(shape) == 3 and shape[-1] <= 4:
        return shape[1], shape[0]
    if len(shape) == 3 and shape[0] <= 4:
        return shape[2], shape[1]
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1, shape[0] if shape else 0


def check_tiff_size(path: str | Path, what: str = "image") -> None:
    """Refuse a TIFF whose header declares more than ``max_image_pixels()`` pixels (nothing decoded)."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(str(path)) as tf:
            shape = tuple(int(n) for n in tf.series[0].shape) if tf.series else ()
    except Exception as exc:  # tifffile raises many types on corrupt input
        raise DatasetError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
    if not shape:
        raise DatasetError(f"{path}: TIFF holds no image")
    _check_pixels(path, *_tiff_pixels(shape), what=what)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    check_tiff_size(path)
    try:
        arr = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises many types on corrupt input
        raise DatasetError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar CHW -> HWC
    return arr


def _read_raw(path: str | Path, mask: bool = False) -> np.ndarray:
    return _read_raw_sized(path, mask)[0]


def _read_raw_sized(path: str | Path, mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixel array (palette/CMYK/YCbCr/1-bit already converted to RGB/L), size-checked from the
    header first and reduced by ``reduce_factor`` (box mean for images, block max for masks),
    and the ``(H, W)`` the file declares."""
    path = Path(path)
    _check_file(path)
    max_image_pixels()  # a bad FSIAD_MAX_IMAGE_PIXELS is an OptionError, not a per-image error
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(path)
        hw = (int(arr.shape[0]), int(arr.shape[1]))
        return _block_reduce(arr, reduce_factor(hw[1], hw[0]), "max" if mask else "mean"), hw
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                _check_pixels(path, w, h, "mask" if mask else "image")
                f = reduce_factor(w, h)
                target = (math.ceil(w / f), math.ceil(h / f))
                if f > 1 and not mask and im.format == "JPEG":
                    im.draft(im.mode, target)  # DCT scaling: decodes at 1/2, 1/4 or 1/8 directly
                im.load()
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode.startswith("I;16"):
                    arr = np.asarray(im).astype(np.uint16)
                    return _block_reduce(arr, f, "max" if mask else "mean"), (h, w)
                if mask:
                    arr = _block_reduce(np.asarray(im), f, "max")
                elif im.size != target:
                    g = im.width // target[0] if im.width % target[0] == 0 else 0
                    if g and math.ceil(im.height / g) == target[1]:
                        im = im.reduce(g)
                    elif im.size == (w, h):
                        im = im.reduce(f)
                    else:  # a JPEG draft scale that does not divide f
                        im = im.resize(target, Image.Resampling.BOX)
                    arr = np.asarray(im)
                else:
                    arr = np.asarray(im)
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not a readable image (corrupt or unsupported format)") from None
    except Image.DecompressionBombError as exc:  # PIL refuses at open above 2x its own limit (~179 MP)
        raise DatasetError(_bomb_message(path, exc, "mask" if mask else "image")) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None
    if arr.size == 0:
        raise DatasetError(f"{path}: image has no pixels")
    return arr, (h, w)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` a file declares in its header (nothing decoded); ``DatasetError`` when unreadable."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tf:
                shape = tuple(int(n) for n in tf.series[0].shape)
        except Exception as exc:  # tifffile raises many types on corrupt input
            raise DatasetError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
        w, h = _tiff_pixels(shape)
        return h, w
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None


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
        ``uint8`` array ``[H, W, 3]``: the file's size, or ``ceil(H/f) x ceil(W/f)`` for an
        image above ``DECODE_PIXELS`` (reduced while decoding, see the module docstring).

    Raises:
        DatasetError: missing, empty, corrupt or unsupported file, or more pixels than
            ``max_image_pixels()`` declared in its header (one line naming it; nothing decoded).
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
        expected_hw: ``(H, W)`` of the image the mask belongs to (its header size, or the
            size ``read_image`` returned); a different size raises.
        mode: ``threshold`` = ``> 127`` on the 8-bit scale (MVTec-style 0/255 masks, also
            anti-aliased ones); ``nonzero`` = ``!= 0`` (class-index masks such as VisA's);
            ``auto`` (default) = ``nonzero`` when no value exceeds 127 on the 8-bit scale
            (0/1 or class-index masks), else ``threshold``.
        image: image file, only used to name it in the size-mismatch error.

    Returns:
        ``bool`` array ``[H, W]``, reduced like its image above ``DECODE_PIXELS`` (block
        maximum: a defect pixel anywhere in a block marks the block).

    Raises:
        DatasetError: unreadable mask, size mismatch or above ``max_image_pixels()`` (one
            line naming the file(s)).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; use one of {MASK_MODES}")
    path = Path(path)
    arr, declared = _read_raw_sized(path, mask=True)
    if arr.ndim == 3:
        arr = arr[..., : min(arr.shape[-1], 3)].max(axis=-1) if arr.shape[-1] != 2 else arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{path}: unsupported mask shape {tuple(arr.shape)}")
    if expected_hw is not None and tuple(expected_hw) not in (tuple(declared), tuple(arr.shape)):
        what = f"image {image}" if image is not None else "image"
        raise DatasetError(
            f"{path}: mask size {declared[1]}x{declared[0]} (WxH) differs from {what} size "
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
    # header sizes: a large image and its mask are reduced by the same factor while decoding
    mask = read_mask(sample.mask_path, expected_hw=image_size(sample.path), mode=mode, image=sample.path)
    return img, mask
