"""Principal-axis alignment of a part on a plain background (rotated parts, e.g. a screw).

A few references of a freely rotated part show it at a few angles only, and patch kNN has no
rotation invariance: a normal part at a new angle scores as a defect. Rotating every image so
that the part's principal axis lies along the image's longer side (about the part's centroid,
moved to the image centre) removes the rotation up to a half turn, which ``knn``'s flipped
views cover (a turn by 180 degrees is the horizontal and vertical flip together).

The part is found without labels: the background colour is the median of a thin band along the
image border, the part is every pixel far from it (Otsu's threshold on the colour distance).
``Pose.usable`` says whether that is a clear object: a small share of the border on the part,
a part neither tiny nor filling the frame, and an axis (second moments elongated enough).

All functions work on one image ``[C, H, W]`` (float) or map ``[H, W]`` in its own pixel frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

#: a part whose second moments differ by less than this ratio has no reliable axis
MIN_ELONGATION = 3.0
#: the foreground may cover at most this share of the border band (else no plain background)
MAX_BORDER_SHARE = 0.1
#: the foreground's share of the image must lie in this range
AREA_RANGE = (0.005, 0.7)
#: the pose is measured on a copy of at most this side (area-averaged): a few ms per image
POSE_SIDE = 160


@dataclass(frozen=True)
class Pose:
    """Where a part lies in its image.

    Attributes:
        angle: direction of the principal axis, radians in ``(-pi/2, pi/2]`` from the x axis
            (image rows grow downwards; ``(-pi, pi]`` after :func:`directed`).
        cx, cy: centroid of the part, as fractions of the image width and height.
        elongation: ratio of the larger to the smaller second moment (1 = no axis).
        area: share of the image on the part.
        border: share of the border band on the part.
        background: the background colour (per channel), which fills what ``align`` uncovers.
        skew: standardised third moment of the part along ``angle``'s direction (which end is
            heavier: a screw's head; about 0 for a part symmetric along its axis).
    """

    angle: float
    cx: float
    cy: float
    elongation: float
    area: float
    border: float
    background: tuple[float, ...] = ()
    skew: float = 0.0

    @property
    def placed(self) -> bool:
        """A clear object on a plain background (any shape): ``usable`` without the axis."""
        return self.border <= MAX_BORDER_SHARE and AREA_RANGE[0] <= self.area <= AREA_RANGE[1]

    @property
    def usable(self) -> bool:
        """A clear, elongated object on a plain background."""
        return (self.elongation >= MIN_ELONGATION and self.border <= MAX_BORDER_SHARE
                and AREA_RANGE[0] <= self.area <= AREA_RANGE[1])


def otsu(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D tensor (maximal between-class variance over ``bins`` levels)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist = torch.histc(values.float(), bins=bins, min=lo, max=hi).double()
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    m0 = (hist * centres).cumsum(0)
    total, mean = w0[-1], m0[-1]
    w1 = total - w0
    between = (mean * w0 - total * m0) ** 2 / (w0 * w1).clamp_min(1e-12)
    between[w1 <= 0] = -1
    return float(centres[int(torch.argmax(between))])


def foreground(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mask [H, W] bool, background colour [C], border share)`` of ``image [C, H, W]``."""
    c, h, w = image.shape
    b = max(2, min(h, w) // 32)
    band = torch.ones(h, w, dtype=torch.bool)
    band[b : h - b, b : w - b] = False
    x = image.float()
    bg = x[:, band].median(dim=1).values
    dist = (x - bg[:, None, None]).norm(dim=0)
    t = max(otsu(dist.flatten()), 0.05 * max(float(dist.max()), 1e-6))
    mask = dist > t
    return mask, bg, float(mask[band].float().mean())


def principal_pose(image: torch.Tensor) -> Pose:
    """The part's :class:`Pose` in ``image [C, H, W]`` (float in ``[0, 1]``), measured on an
    area-averaged copy of at most ``POSE_SIDE`` pixels a side (fractions and angles do not
    depend on the resolution)."""
    f = POSE_SIDE / max(image.shape[1:])
    if f < 1:
        size = (max(8, round(image.shape[1] * f)), max(8, round(image.shape[2] * f)))
        image = F.interpolate(image.float()[None], size=size, mode="area")[0]
    _, h, w = image.shape
    mask, bg, border = foreground(image)
    background = tuple(float(v) for v in bg)
    n = int(mask.sum())
    if n < 3:
        return Pose(0.0, 0.5, 0.5, 1.0, n / (h * w), border, background)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    xs, ys = xs.double() + 0.5, ys.double() + 0.5
    mx, my = xs.mean(), ys.mean()
    cxx, cyy, cxy = ((xs - mx) ** 2).mean(), ((ys - my) ** 2).mean(), ((xs - mx) * (ys - my)).mean()
    angle = 0.5 * math.atan2(2 * float(cxy), float(cxx - cyy))
    spread = math.sqrt(float((cxx - cyy) ** 2 + 4 * cxy**2))
    big, small = float(cxx + cyy + spread) / 2, float(cxx + cyy - spread) / 2
    elong = big / max(small, 1e-9)
    u = (xs - mx) * math.cos(angle) + (ys - my) * math.sin(angle)
    skew = float((u**3).mean() / max(float((u**2).mean()), 1e-12) ** 1.5)
    return Pose(angle, float(mx) / w, float(my) / h, elong, n / (h * w), border, background, skew)


def directed(pose: Pose) -> Pose:
    """``pose`` turned by a half turn where needed so that its skew is positive: ``align`` then
    lays an asymmetric part the same way round whichever way it pointed (for methods whose
    references do not include the half turn); a part symmetric along its axis stays ambiguous."""
    if pose.skew >= 0:
        return pose
    return replace(pose, angle=pose.angle + (math.pi if pose.angle <= 0 else -math.pi), skew=-pose.skew)


def axial_spread(angles: list[float]) -> float:
    """Largest difference (degrees, 0-90) between two axes among ``angles`` (radians, mod 180)."""
    out = 0.0
    for i, a in enumerate(angles):
        for b in angles[i + 1 :]:
            d = abs(math.degrees(a - b)) % 180.0
            out = max(out, min(d, 180.0 - d))
    return out


def _turn(pose: Pose, h: int, w: int) -> float:
    """Rotation (radians) that takes the part's axis onto the image's longer side."""
    return pose.angle - (0.0 if w >= h else math.pi / 2)


def _sample(x: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of ``x [C, H, W]`` at pixel-centre coordinates; ``fill [C]`` outside."""
    c, h, w = x.shape
    grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], dim=-1)[None].float()
    out = F.grid_sample((x - fill[:, None, None])[None].float(), grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)[0]
    return out + fill[:, None, None]


def _pixels(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return x, y


def align(image: torch.Tensor, pose: Pose) -> torch.Tensor:
    """``image [C, H, W]`` rotated about the part's centroid so that its axis lies along the
    longer side, the centroid moved to the image centre; uncovered pixels take the background
    colour. The output has the input's shape."""
    c, h, w = image.shape
    bg = torch.tensor(pose.background) if len(pose.background) == c else foreground(image)[1]
    t = _turn(pose, h, w)
    ct, st = math.cos(t), math.sin(t)
    x, y = _pixels(h, w)
    u, v = x - (w - 1) / 2, y - (h - 1) / 2  # output pixel relative to the centre
    px, py = pose.cx * w - 0.5, pose.cy * h - 0.5  # centroid, pixel-index coordinates
    return _sample(image, px + ct * u - st * v, py + st * u + ct * v, bg.to(image.dtype)).to(image.dtype)


def unalign(amap: torch.Tensor, pose: Pose, fill: float | None = None) -> torch.Tensor:
    """The inverse of :func:`align` for a map ``[H, W]`` computed on the aligned image: the map in
    the original image's frame. Pixels the aligned image did not cover get ``fill`` (default:
    the map's minimum, i.e. nothing to report)."""
    h, w = amap.shape
    t = _turn(pose, h, w)
    ct, st = math.cos(t), math.sin(t)
    x, y = _pixels(h, w)
    dx, dy = x - (pose.cx * w - 0.5), y - (pose.cy * h - 0.5)
    u, v = ct * dx + st * dy, -st * dx + ct * dy  # rotate back by -t
    value = torch.tensor([float(amap.min()) if fill is None else fill])
    return _sample(amap[None], u + (w - 1) / 2, v + (h - 1) / 2, value)[0]
