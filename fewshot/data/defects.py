"""Synthetic defects on normal images, for label-free self-configuration (no test data seen).

Each generator takes one image ``[3, H, W]`` float in ``[0, 1]`` and a ``numpy`` random
generator, and returns ``(defective image, mask)`` with ``mask`` bool ``[H, W]``. Local
defects change pixels only inside their mask; global defects return an all-true mask.

Local kinds (sizes relative to the image, so they follow the working geometry):

- ``cutpaste``: a rectangle of the image (1-4 % of the area), flipped and colour-jittered,
  pasted at another place (CutPaste, Li et al. 2021);
- ``blend``: a Perlin-like (multi-octave smooth noise) region blended with a foreign texture
  (another, flipped and shifted, part of the same image) at 50-100 % opacity (DRAEM-style);
- ``scratch``: a thin dark or bright polyline (width ~1 % of the short side);
- ``blob``: a small irregular blob (0.2-1 % of the area) of shifted intensity.

Global kinds: ``warp`` (smooth sinusoidal displacement), ``color`` (per-channel gain and
offset), ``blur`` (Gaussian), ``contrast`` (scaled around the image mean).

Everything is deterministic for a given generator state. ``make_defect(..., region=mask)``
plants a local defect on a region (a part on a plain background): a defect that falls less
than half on the region is moved so that its centre lies on a pixel of the region drawn at
random, then cut to the region.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LOCAL_KINDS = ("cutpaste", "blend", "scratch", "blob")
GLOBAL_KINDS = ("warp", "color", "blur", "contrast")
KINDS = LOCAL_KINDS + GLOBAL_KINDS
#: a local defect planted on a region that lies less than this share on it is moved onto it
MIN_ON_REGION = 0.5


def _check(image: torch.Tensor) -> tuple[int, int]:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"defects: image must be [3, H, W], got {tuple(image.shape)}")
    return int(image.shape[1]), int(image.shape[2])


def smooth_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 3, base: int = 4) -> torch.Tensor:
    """Perlin-like smooth noise ``[h, w]`` in about ``[-1, 1]``: bicubically upsampled random
    grids of ``base * 2**o`` cells, amplitudes halving per octave."""
    out = torch.zeros(h, w)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2 ** o
        gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
        g = torch.from_numpy(rng.uniform(-1, 1, (1, 1, gh, gw)).astype(np.float32))
        out += amp * F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
        total += amp
        amp /= 2
    return out / total


def _window(rng: np.random.Generator, h: int, w: int, frac: float, aspect: float = 1.0) -> tuple[int, int, int, int]:
    """A random rectangle of about ``frac`` of the image area, ``(y0, x0, rh, rw)``."""
    area = frac * h * w
    rh = int(np.clip(round(math.sqrt(area / aspect)), 2, h - 1))
    rw = int(np.clip(round(area / rh), 2, w - 1))
    return int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1)), rh, rw


def cutpaste(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    aspect = float(np.exp(rng.uniform(-0.8, 0.8)))
    y0, x0, rh, rw = _window(rng, h, w, rng.uniform(0.01, 0.04), aspect)
    y1, x1 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    patch = image[:, y0:y0 + rh, x0:x0 + rw]
    patch = patch.flip(1) if rng.random() < 0.5 else patch.flip(2)
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (3, 1, 1)).astype(np.float32))
    patch = (patch * gain + float(rng.uniform(-0.1, 0.1))).clamp(0, 1)
    out = image.clone()
    out[:, y1:y1 + rh, x1:x1 + rw] = patch
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y1:y1 + rh, x1:x1 + rw] = True
    return out, mask


def blend(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    y0, x0, rh, rw = _window(rng, h, w, rng.uniform(0.03, 0.08))
    region = torch.zeros(h, w, dtype=torch.bool)
    region[y0:y0 + rh, x0:x0 + rw] = True
    noise = smooth_noise(rng, h, w, base=max(4, round(max(h, w) / max(rh, rw) * 2)))
    mask = (noise > float(rng.uniform(0.1, 0.3))) & region
    if not mask.any():  # the noise stayed low in the window: keep its highest point
        flat = torch.where(region, noise, torch.full_like(noise, -9)).argmax()
        mask.view(-1)[flat] = True
    foreign = torch.roll(image.flip((1, 2)), shifts=(int(rng.integers(h)), int(rng.integers(w))), dims=(1, 2))
    foreign = (foreign * float(rng.uniform(0.6, 1.4))).clamp(0, 1)
    alpha = float(rng.uniform(0.5, 1.0))
    out = torch.where(mask, (1 - alpha) * image + alpha * foreign, image)
    return out, mask


def scratch(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    s = min(h, w)
    width = max(1.0, s * rng.uniform(0.006, 0.015))
    length = s * rng.uniform(0.15, 0.35)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    p = np.array([rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w])
    ang = rng.uniform(0, 2 * np.pi)
    mask = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(3):  # three segments with small bends
        ang += rng.uniform(-0.5, 0.5)
        q = p + length / 3 * np.array([math.sin(ang), math.cos(ang)])
        d = q - p
        t = (((y - p[0]) * d[0] + (x - p[1]) * d[1]) / max(float(d @ d), 1e-6)).clamp(0, 1)
        mask |= torch.hypot(y - (p[0] + t * d[0]), x - (p[1] + t * d[1])) <= width / 2
        p = q
    if not mask.any():
        mask[int(np.clip(p[0], 0, h - 1)), int(np.clip(p[1], 0, w - 1))] = True
    value = float(rng.uniform(0.0, 0.15)) if rng.random() < 0.5 else float(rng.uniform(0.85, 1.0))
    out = torch.where(mask, torch.full_like(image, value), image)
    return out, mask


def blob(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    r = math.sqrt(rng.uniform(0.002, 0.01) * h * w / math.pi)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ang = torch.atan2(y - cy, x - cx)
    rad = torch.full_like(ang, r)
    for k in (2, 3, 5):
        rad += r * float(rng.uniform(0.05, 0.25)) * torch.cos(k * ang + float(rng.uniform(0, 2 * np.pi)))
    mask = torch.hypot(y - cy, x - cx) <= rad
    mask[int(cy), int(cx)] = True
    shift = float(rng.uniform(0.15, 0.4)) * (1 if rng.random() < 0.5 else -1)
    tint = torch.from_numpy(rng.uniform(0.7, 1.0, (3, 1, 1)).astype(np.float32))
    out = torch.where(mask, (image + shift * tint).clamp(0, 1), image)
    return out, mask


def warp(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    amp = float(rng.uniform(0.01, 0.03)) * 2  # in normalised [-1, 1] units
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    f1, f2 = rng.uniform(2, 6, 2)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    gx = xs + amp * torch.sin(math.pi * f1 * ys + p1)
    gy = ys + amp * torch.sin(math.pi * f2 * xs + p2)
    grid = torch.stack([gx, gy], -1)[None]
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    return out.clamp(0, 1), torch.ones(h, w, dtype=torch.bool)


def color(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    gain = torch.from_numpy(rng.uniform(0.75, 1.25, (3, 1, 1)).astype(np.float32))
    off = torch.from_numpy(rng.uniform(-0.08, 0.08, (3, 1, 1)).astype(np.float32))
    return (image * gain + off).clamp(0, 1), torch.ones(h, w, dtype=torch.bool)


def blur(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from fsiad.fewshot.ops.smoothing import gaussian_blur

    h, w = _check(image)
    sigma = float(rng.uniform(0.006, 0.015)) * min(h, w)
    return gaussian_blur(image, max(sigma, 0.8)).clamp(0, 1), torch.ones(h, w, dtype=torch.bool)


def contrast(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = _check(image)
    f = float(rng.uniform(0.55, 0.75)) if rng.random() < 0.5 else float(rng.uniform(1.3, 1.6))
    mean = image.mean(dim=(1, 2), keepdim=True)
    return ((image - mean) * f + mean).clamp(0, 1), torch.ones(h, w, dtype=torch.bool)


GENERATORS = {"cutpaste": cutpaste, "blend": blend, "scratch": scratch, "blob": blob,
              "warp": warp, "color": color, "blur": blur, "contrast": contrast}


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x [..., H, W]`` moved by ``(dy, dx)`` pixels; what enters is zero (False)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src = x[..., max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    out[..., max(0, dy): max(0, dy) + src.shape[-2], max(0, dx): max(0, dx) + src.shape[-1]] = src
    return out


def make_defect(image: torch.Tensor, kind: str, seed: int,
                region: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic defect of ``kind`` on ``image`` ``[3, H, W]``; deterministic for ``seed``.

    ``region`` (bool ``[H, W]``, optional): where a local defect may lie (e.g. the part on a
    plain background). A defect that lies less than half on it is moved so that the centre of
    its mask lands on a pixel of the region (drawn from ``seed``), then cut to the region; a
    region that holds the defect changes nothing. Global kinds ignore it.

    Returns:
        ``(image', mask)``: ``[3, H, W]`` float in ``[0, 1]`` and bool ``[H, W]`` (all true for
        global kinds). Local kinds leave every pixel outside ``mask`` unchanged.
    """
    if kind not in GENERATORS:
        raise ValueError(f"defects: unknown kind {kind!r}; use one of {KINDS}")
    x = image.float()
    rng = np.random.default_rng(seed)
    if kind not in LOCAL_KINDS:
        return GENERATORS[kind](x, rng)
    out, mask = GENERATORS[kind](x, rng)
    if region is not None:
        if tuple(region.shape) != tuple(x.shape[1:]):
            raise ValueError(f"defects: region {tuple(region.shape)} does not match the image {tuple(x.shape[1:])}")
        if region.any() and mask.any() and float((mask & region).sum()) < MIN_ON_REGION * float(mask.sum()):
            ys, xs = torch.nonzero(region, as_tuple=True)
            pick = int(np.random.default_rng([seed, 1]).integers(ys.numel()))
            my, mx = torch.nonzero(mask, as_tuple=True)
            dy, dx = int(ys[pick]) - round(float(my.float().mean())), int(xs[pick]) - round(float(mx.float().mean()))
            out, mask = _shift(out, dy, dx), _shift(mask, dy, dx)
        if (mask & region).any():
            mask = mask & region
    return torch.where(mask, out, x), mask
