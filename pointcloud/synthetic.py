"""Synthetic MVTec 3D-AD-format data for tests and demos.

A category is one object (an ellipsoidal cap, ``dome``, or a ring, ``torus``) lying on a slightly
tilted plane seen by a pinhole depth camera (~0.5 mm pixel pitch at 128 px, metres as in
MVTec 3D-AD, so BTF's FPFH/plane/DBSCAN parameters apply unchanged). Sensor-like effects:
Gaussian depth noise, random dropouts, missing points on steep slopes and a few missing
patches. Defects are either *geometric only* (``dent``, ``bump``, ``crack``: depth changes,
RGB rendered from the undeformed surface) or *colour only* (``color``: a stain, geometry
unchanged), so that an RGB-only or a 3D-only detector misses one family by construction.

Layout written (same as MVTec 3D-AD)::

    root/<cat>/{train,validation}/good/{rgb/000.png, xyz/000.tiff}
    root/<cat>/test/<label>/{rgb/000.png, xyz/000.tiff, gt/000.png}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fsiad.pointcloud.io import write_xyz_tiff
from PIL import Image

GEOMETRIC_DEFECTS = ("dent", "bump", "crack")
COLOR_DEFECTS = ("color",)
DEFECTS = GEOMETRIC_DEFECTS + COLOR_DEFECTS
SHAPES = ("dome", "torus")


@dataclass
class SyntheticSample:
    """One rendered scene.

    Attributes:
        rgb: uint8 ``[H, W, 3]``.
        xyz: float32 ``[H, W, 3]`` organized cloud in metres, zeros = missing.
        mask: bool ``[H, W]`` defect ground truth.
        label: ``good`` or a defect name.
    """

    rgb: np.ndarray
    xyz: np.ndarray
    mask: np.ndarray
    label: str


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: bilinear upsampling of a coarse random grid."""
    coarse = rng.uniform(-1, 1, (scale + 2, scale + 2)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def render_sample(size: int = 128, label: str = "good", shape: str = "dome", seed: int = 0,
                  noise_mm: float = 0.05, dropout: float = 0.01) -> SyntheticSample:
    """Render one scene; ``label`` is ``good`` or one of ``DEFECTS``."""
    if label != "good" and label not in DEFECTS:
        raise ValueError(f"unknown defect {label!r}; choose from {DEFECTS}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    rng = np.random.default_rng(seed)
    # defect parameters have their own stream, so that the same seed renders the same scene
    # with and without a defect (geometric defects leave the RGB identical, colour ones the xyz)
    drng = np.random.default_rng([seed, 1])
    fov, dist = 0.064, 0.30  # field of view at the plane (m), camera-plane distance (m)
    f = dist * size / fov
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    # object-centred coordinates on the plane (metres), with pose jitter
    cx, cy = rng.normal(0, 0.002, 2)
    ang = rng.uniform(-0.3, 0.3)
    px, py = (u - size / 2) * fov / size - cx, (v - size / 2) * fov / size - cy
    xr, yr = np.cos(ang) * px + np.sin(ang) * py, -np.sin(ang) * px + np.cos(ang) * py
    a, b, hgt = 0.020 * rng.uniform(0.95, 1.05), 0.016 * rng.uniform(0.95, 1.05), 0.010 * rng.uniform(0.9, 1.1)
    if shape == "dome":
        rho = (xr / a) ** 2 + (yr / b) ** 2
        h = hgt * np.sqrt(np.clip(1 - rho, 0, None))
        inside = rho < 1
    else:
        rr = np.sqrt((xr / a) ** 2 + (yr / b) ** 2)
        t = np.clip(1 - ((rr - 0.65) / 0.35) ** 2, 0, None)
        h, inside = hgt * 0.8 * np.sqrt(t), t > 0
    h = h.astype(np.float32)
    h_clean = h.copy()
    mask = np.zeros((size, size), bool)
    pix = fov / size

    # defect centre: a random point well inside the object
    cand = np.argwhere(h > 0.6 * h.max())
    dv, du = cand[drng.integers(len(cand))]
    dx, dy = px[dv, du], py[dv, du]
    r2 = (px - dx) ** 2 + (py - dy) ** 2
    stain = np.zeros((size, size), np.float32)
    if label in ("dent", "bump"):
        s = drng.uniform(0.0022, 0.003)
        g = np.exp(-r2 / (2 * s * s)).astype(np.float32)
        h = h + (1 if label == "bump" else -1) * drng.uniform(0.0025, 0.0035) * g
        mask = g > 0.25
    elif label == "crack":
        th = drng.uniform(0, np.pi)
        length = drng.uniform(0.008, 0.012)
        along = (px - dx) * np.cos(th) + (py - dy) * np.sin(th)
        across = -(px - dx) * np.sin(th) + (py - dy) * np.cos(th)
        width = max(0.0008, 1.2 * pix)
        groove = np.exp(-(across / width) ** 2) * (np.abs(along) < length / 2)
        h = h - 0.003 * groove.astype(np.float32)
        mask = groove > 0.3
    elif label == "color":
        s = drng.uniform(0.0033, 0.0042)
        stain = np.clip(1.6 * np.exp(-r2 / (2 * s * s)) - 0.3, 0, 1).astype(np.float32)
        mask = stain > 0.5
    mask &= inside

    # geometry: plane with small tilt, object in front of it (smaller z = closer)
    tilt = rng.normal(0, 0.02, 2)
    z = dist + tilt[0] * px + tilt[1] * py - h
    z = z + rng.normal(0, noise_mm * 1e-3, z.shape).astype(np.float32)
    x, y = (u - size / 2) * z / f, (v - size / 2) * z / f
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    gy, gx = np.gradient(h_clean, pix)
    slope = np.sqrt(gx ** 2 + gy ** 2)
    missing = (slope > 4.0) | (rng.random(z.shape) < dropout)
    for _ in range(rng.integers(0, 3)):  # small missing patches on the plane
        hv, hu = rng.integers(0, size, 2)
        missing |= ((v - hv) ** 2 + (u - hu) ** 2 < (size / 40) ** 2) & ~inside
    xyz[missing] = 0.0

    # RGB from the *undeformed* surface: Lambertian shading + texture, then colour stains
    nx, ny = -gx, -gy
    shade = (0.35 * nx + 0.35 * ny + 1.0) / np.sqrt(nx ** 2 + ny ** 2 + 1.0)
    tex = 0.06 * _smooth_noise(rng, size, 12) + 0.03 * rng.standard_normal((size, size)).astype(np.float32)
    obj = np.array([0.72, 0.50, 0.28]) * rng.uniform(0.97, 1.03, 3)
    bg = np.array([0.36, 0.37, 0.40]) * rng.uniform(0.97, 1.03, 3)
    base = np.where(inside[..., None], obj, bg) * (np.where(inside, shade, 1.0) + tex)[..., None]
    stain_col = np.array([0.18, 0.30, 0.16])
    rgb = base * (1 - stain[..., None]) + stain_col * stain[..., None] * (1 + tex[..., None])
    rgb = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return SyntheticSample(rgb, xyz, mask, label)


def _write(dirpath: Path, idx: int, s: SyntheticSample, with_gt: bool) -> None:
    name = f"{idx:03d}"
    (dirpath / "rgb").mkdir(parents=True, exist_ok=True)
    Image.fromarray(s.rgb).save(dirpath / "rgb" / f"{name}.png")
    write_xyz_tiff(dirpath / "xyz" / f"{name}.tiff", s.xyz)
    if with_gt:
        (dirpath / "gt").mkdir(parents=True, exist_ok=True)
        Image.fromarray((s.mask * 255).astype(np.uint8)).save(dirpath / "gt" / f"{name}.png")


def generate_mvtec3d(root: str | Path, categories: tuple[str, ...] = ("dome",), n_train: int = 8,
                     n_validation: int = 2, n_test_good: int = 4, n_test_defect: int | dict[str, int] = 2,
                     defects: tuple[str, ...] = DEFECTS, size: int = 128, seed: int = 0) -> Path:
    """Write a small MVTec 3D-AD-format dataset; category names are shapes (``dome``, ``torus``).

    ``n_test_defect`` is a count per defect type, or a ``{defect: count}`` mapping.

    Returns:
        ``root`` as a ``Path``.
    """
    root = Path(root)
    for ci, cat in enumerate(categories):
        base_seed = seed * 100_003 + ci * 10_007
        k = 0
        splits = [("train", "good", n_train), ("validation", "good", n_validation), ("test", "good", n_test_good)]
        counts = n_test_defect if isinstance(n_test_defect, dict) else {d: n_test_defect for d in defects}
        splits += [("test", d, n) for d, n in counts.items()]
        for split, label, n in splits:
            for i in range(n):
                s = render_sample(size, label, cat, seed=base_seed + k)
                k += 1
                _write(root / cat / split / label, i, s, with_gt=split == "test")
    return root
