"""Small synthetic datasets with exact masks, for tests and demos (no network, < 1 s).

Six kinds of category, chosen by the category name's prefix:

- ``texture*``: a woven pattern (product of sinusoids, period ``S/16``) with per-image phase,
  colour, lighting and noise jitter. Defects: ``scratch`` (dark line, ~``S/40`` wide,
  ``0.25-0.45 S`` long) and ``color`` (irregular blob of a foreign colour, radius
  ``S/14-S/9``, keeps the weave shading).
- ``object*``: a shaded ring with a dark tab on a grey background, with small pose
  (translation ±3 %, rotation ±10°) and lighting jitter. Defects: ``missing`` (a bite of the
  ring replaced by background) and ``contamination`` (dark irregular blob on the ring).
- ``wide*``: a wide inspection image (``2.46 S x S``, e.g. 1130 x 460 for ``S = 460``) of a
  brushed surface with horizontal streaks, a row of bright rivets and a lighting gradient.
  Tiny, faint defects of 0.1-0.5 % of the image area: ``spot`` (7 % darker or brighter) and
  ``scratch`` (thin line, 10 % darker).
- ``elongated*``: an elongated part (``3 S x S``, e.g. 720 x 240 for ``S = 240``): a threaded
  pin (head, shaded shaft, threads on its far 60 %) lying along the image on a dark background,
  with small pose (translation ±2-3 %, rotation ±2°) and lighting jitter. Small defects on the
  part, 0.1-0.5 % of the image area: ``notch`` (a bite out of the shaft's edge replaced by
  background) and ``scratch`` (a thin dark line along the shaft, 4-10 % of the image long).
- ``screw*``: the same pin, 0.7 S long, at any angle (0-360°) and up to ±5 % off centre in a
  square image, with the same defects in the same proportions to the part (0.03-0.1 % of the
  image): rotation the references do not cover, as MVTec AD's screw.
- ``board*``: a coloured part (a green circuit board with a 3 x 4 grid of gold pads and a white
  print line, as VisA's pcb) on a dark background, with small pose (±2 %, ±3°) and lighting
  jitter. Defects on one pad (0.3-0.6 % of the image): ``discolor`` (its hue turns pink at the
  same luminance: a colour-only change) and ``missing`` (the pad gone, bare board).

Each defect changes exactly the pixels of its mask (no anti-aliasing), masks are 0/255 PNG
(VisA variant: class indices 1, 2). Everything is deterministic per ``seed``.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DEFECTS = {"texture": ("scratch", "color"), "object": ("missing", "contamination"),
           "wide": ("spot", "scratch"), "elongated": ("notch", "scratch"),
           "screw": ("notch", "scratch"), "board": ("discolor", "missing")}


def _kind(name: str) -> str:
    for kind in DEFECTS:
        if name.startswith(kind):
            return kind
    raise ValueError(f"synthetic category {name!r} must start with one of {sorted(DEFECTS)}")


def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    return y, x


def _blob(rng: np.random.Generator, s: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Irregular blob: a disc whose radius is modulated by a few random harmonics."""
    y, x = _grid(s)
    ang = np.arctan2(y - cy, x - cx)
    rad = np.full_like(ang, r)
    for k in (2, 3, 5):
        rad += r * rng.uniform(0.05, 0.2) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    return np.hypot(y - cy, x - cx) <= rad


def _segment(s: int, p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """Pixels within ``width / 2`` of the segment p0-p1 (points as (y, x))."""
    y, x = _grid(s)
    d = p1 - p0
    t = np.clip(((y - p0[0]) * d[0] + (x - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    return np.hypot(y - (p0[0] + t * d[0]), x - (p0[1] + t * d[1])) <= width / 2


def _texture(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal texture image float [S,S,3] in [0,255] and its weave shading [S,S]."""
    y, x = _grid(s)
    period = s / 16
    py, px = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * x / period + px) * np.sin(2 * np.pi * y / period + py)
    light = 1 + rng.uniform(-0.06, 0.06) * (x / s - 0.5) + rng.uniform(-0.06, 0.06) * (y / s - 0.5)
    shade = (0.8 + 0.2 * weave) * light * rng.uniform(0.93, 1.07)
    base = np.array([150, 125, 95], np.float32) + rng.normal(0, 4, 3)
    img = shade[..., None] * base + rng.normal(0, 5, (s, s, 3))
    return img, shade


def _texture_sample(rng: np.random.Generator, s: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    img, shade = _texture(rng, s)
    mask = np.zeros((s, s), bool)
    if defect == "scratch":
        p0 = rng.uniform(0.2 * s, 0.8 * s, 2)
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.45) * s
        p1 = np.clip(p0 + length * np.array([np.sin(ang), np.cos(ang)]), 0, s - 1)
        mask = _segment(s, p0, p1, max(2.0, s / 40))
        img[mask] *= 0.35
    elif defect == "color":
        mask = _blob(rng, s, *rng.uniform(0.25 * s, 0.75 * s, 2), rng.uniform(s / 14, s / 9))
        colour = np.array([60, 90, 200], np.float32) + rng.normal(0, 10, 3)
        img[mask] = shade[mask, None] * colour + rng.normal(0, 5, (int(mask.sum()), 3))
    return img, mask


def _object_sample(rng: np.random.Generator, s: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(s)
    bg = np.array([70, 72, 75], np.float32) * (1 + 0.1 * (y / s - 0.5))[..., None]
    cy, cx = s / 2 + rng.uniform(-0.03, 0.03, 2) * s
    rot = np.deg2rad(rng.uniform(-10, 10))
    r = np.hypot(y - cy, x - cx)
    ring = (r <= 0.32 * s) & (r >= 0.12 * s)
    ang = np.arctan2(y - cy, x - cx)
    tab = ring & (np.abs((ang - rot + np.pi) % (2 * np.pi) - np.pi) < 0.25) & (r > 0.26 * s)
    shade = 1.0 - 0.35 * ((x - cx) + (y - cy)) / (0.64 * s)  # light from the top left
    metal = np.array([200, 195, 185], np.float32) * rng.uniform(0.92, 1.08)
    img = np.where(ring[..., None], shade[..., None] * metal, bg)
    img[tab] *= 0.65
    img += rng.normal(0, 4, (s, s, 3))
    mask = np.zeros((s, s), bool)
    if defect == "missing":
        a = rng.uniform(0, 2 * np.pi)
        rr = 0.3 * s  # centred near the outer rim: bites a notch out of the ring
        bite = _blob(rng, s, cy + rr * np.sin(a), cx + rr * np.cos(a), rng.uniform(0.1, 0.14) * s)
        mask = bite & ring
        img[mask] = bg[mask] + rng.normal(0, 4, (int(mask.sum()), 3))
    elif defect == "contamination":
        a, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.17, 0.27) * s
        blob = _blob(rng, s, cy + rr * np.sin(a), cx + rr * np.cos(a), rng.uniform(s / 16, s / 11))
        mask = blob & ring
        img[mask] = np.array([45, 35, 25], np.float32) + rng.normal(0, 6, (int(mask.sum()), 3))
    return img, mask


def _wide_sample(rng: np.random.Generator, s: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Wide brushed surface ``[S, 2.46 S, 3]`` with rivets; tiny defects (0.1-0.5 % of the area)."""
    h, w = s, int(round(2.46 * s))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    streak = rng.normal(0, 1, (h, 1)).astype(np.float32)
    streak = np.convolve(streak[:, 0], np.ones(3) / 3, mode="same")[:, None]
    fine = rng.normal(0, 1, (h, w // 8 + 2)).astype(np.float32)
    fine = np.repeat(fine, 8, axis=1)[:, :w]
    shade = 1 + 0.04 * streak + 0.02 * fine + rng.uniform(-0.08, 0.08) * (x / w - 0.5)
    img = shade[..., None] * (np.array([128, 130, 134], np.float32) * rng.uniform(0.94, 1.06))
    period = w / 12
    off = rng.uniform(-0.01, 0.01) * w
    for cx in np.arange(period / 2, w, period) + off:  # a row of rivets at a fixed height
        rivet = np.hypot(y - 0.2 * h, x - cx) <= 0.035 * h
        img[rivet] = img[rivet] * 0.5 + 110
    img += rng.normal(0, 3, (h, w, 3))
    mask = np.zeros((h, w), bool)
    if defect is not None:
        area = rng.uniform(0.001, 0.005) * h * w
        cy, cx = rng.uniform(0.3 * h, 0.9 * h), rng.uniform(0.05 * w, 0.95 * w)
        if defect == "spot":
            r = np.sqrt(area / np.pi)
            ang = np.arctan2(y - cy, x - cx)
            rad = r * (1 + 0.15 * np.cos(3 * ang + rng.uniform(0, 6.3)))
            mask = np.hypot(y - cy, x - cx) <= rad
            img[mask] *= rng.choice([0.93, 1.07])
        else:
            width = max(1.5, 0.004 * h)
            length = min(area / width, 0.4 * w)
            a = rng.uniform(0, np.pi)
            p0 = np.array([cy, cx])
            d = length * np.array([np.sin(a), np.cos(a)])
            t = np.clip(((y - p0[0]) * d[0] + (x - p0[1]) * d[1]) / float(d @ d), 0, 1)
            mask = np.hypot(y - (p0[0] + t * d[0]), x - (p0[1] + t * d[1])) <= width / 2
            img[mask] *= 0.9
    return img, mask


def _pin(rng: np.random.Generator, h: int, w: int, defect: str | None, angle: tuple[float, float],
         shift: tuple[float, float], size: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """A threaded pin (head, shaded shaft, threads on its far 60 %) on a dark background, centred
    up to ``shift`` (fractions of h, w) off the middle at an angle drawn from ``angle`` (degrees);
    ``size``: ``half`` (half length), ``head``, ``shaft``, ``head_r``, ``pitch``, ``margin`` in px,
    ``notch`` / ``scratch`` lengths in px per unit of the drawn factor, ``line`` (scratch width)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.uniform(-shift[0], shift[0]) * h, w / 2 + rng.uniform(-shift[1], shift[1]) * w
    a = np.deg2rad(rng.uniform(*angle))
    ca, sa = np.cos(a), np.sin(a)
    u = (x - cx) * ca + (y - cy) * sa  # along the part
    v = -(x - cx) * sa + (y - cy) * ca  # across it
    half, head_len, r_shaft, r_head = size["half"], size["head"], size["shaft"], size["head_r"]
    head = (u >= -half) & (u < -half + head_len) & (np.abs(v) <= r_head)
    shaft = (u >= -half + head_len) & (u <= half) & (np.abs(v) <= r_shaft)
    part = head | shaft
    radius = np.where(head, r_head, r_shaft)
    shade = 0.55 + 0.45 * np.sqrt(np.clip(1 - (v / radius) ** 2, 0, 1))  # a lit cylinder
    threaded = shaft & (u > -half + 0.4 * 2 * half)
    pitch = size["pitch"]
    shade = np.where(threaded, shade * (0.78 + 0.22 * np.cos(2 * np.pi * (u + 0.4 * v) / pitch)), shade)
    metal = np.array([190, 188, 180], np.float32) * rng.uniform(0.92, 1.08)
    bg = np.array([55, 58, 62], np.float32) * (1 + rng.uniform(-0.1, 0.1) * (x / w - 0.5))[..., None]
    img = np.where(part[..., None], shade[..., None] * metal, bg) + rng.normal(0, 3, (h, w, 3))
    mask = np.zeros((h, w), bool)
    if defect is not None:
        u0 = rng.uniform(-half + head_len + size["margin"], half - size["margin"])
        if defect == "notch":
            v0 = rng.choice([-1.0, 1.0]) * r_shaft
            py, px = cy + u0 * sa + v0 * ca, cx + u0 * ca - v0 * sa
            r = rng.uniform(0.05, 0.08) * size["notch"]
            ang = np.arctan2(y - py, x - px)
            rad = r * (1 + 0.15 * np.cos(3 * ang + rng.uniform(0, 2 * np.pi)))
            mask = (np.hypot(y - py, x - px) <= rad) & shaft
            img[mask] = bg[mask] + rng.normal(0, 3, (int(mask.sum()), 3))
        else:  # scratch: a thin line along the shaft
            v0 = rng.uniform(-0.5, 0.5) * r_shaft
            length, tilt = rng.uniform(0.04, 0.1) * size["scratch"], np.deg2rad(rng.uniform(-12, 12))
            t = np.clip(((u - u0) * np.cos(tilt) + (v - v0) * np.sin(tilt)) / length, 0, 1)
            du, dv = u - (u0 + t * length * np.cos(tilt)), v - (v0 + t * length * np.sin(tilt))
            mask = (np.hypot(du, dv) <= size["line"]) & shaft
            img[mask] *= 0.5
    return img, mask


def _elongated_sample(rng: np.random.Generator, s: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A threaded pin ``[S, 3 S, 3]`` lying along the image; small defects on the part."""
    h, w = s, 3 * s
    size = {"half": 0.42 * w, "head": 0.1 * w, "shaft": 0.11 * h, "head_r": 0.2 * h, "pitch": 0.025 * w,
            "margin": 0.05 * w, "notch": h, "scratch": w, "line": max(1.0, 0.006 * h)}
    return _pin(rng, h, w, defect, (-2, 2), (0.03, 0.02), size)


def _screw_sample(rng: np.random.Generator, s: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The same pin, smaller, at any angle in a square ``[S, S, 3]`` image (as MVTec AD's screw)."""
    # proportions of the elongated pin (shaft radius 0.044 of the length, pitch 0.03, notch radius
    # 0.45-0.73 x the shaft's, scratches 5-12 % of the length) on a part 0.7 S long
    length = 0.7 * s
    size = {"half": length / 2, "head": 0.119 * length, "shaft": 0.0437 * length, "head_r": 0.0794 * length,
            "pitch": 0.0298 * length, "margin": 0.0595 * length, "notch": 0.397 * length, "scratch": 1.19 * length,
            "line": max(1.0, 0.0024 * length)}
    return _pin(rng, s, s, defect, (0, 360), (0.05, 0.05), size)


def _board_sample(rng: np.random.Generator, s: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A green board with gold pads ``[S, S, 3]`` on a dark background; colour-only and missing-pad defects."""
    y, x = _grid(s)
    cy, cx = s / 2 + rng.uniform(-0.02, 0.02, 2) * s
    rot = np.deg2rad(rng.uniform(-3, 3))
    v = (y - cy) * np.cos(rot) - (x - cx) * np.sin(rot)  # board coordinates, rotated with the board
    u = (y - cy) * np.sin(rot) + (x - cx) * np.cos(rot)
    light = rng.uniform(0.93, 1.07) * (1 + 0.08 * (x / s - 0.5))
    board = (np.abs(u) <= 0.4 * s) & (np.abs(v) <= 0.32 * s)
    img = np.where(board[..., None], np.array([40, 120, 60], np.float32), np.array([25, 25, 28], np.float32))
    img[board & (np.abs(v - 0.26 * s) <= 0.008 * s) & (np.abs(u) <= 0.3 * s)] = (230, 230, 225)  # print line
    gold = np.array([210, 170, 60], np.float32)
    pads = [(np.abs(u - (i - 1.5) * 0.18 * s) <= 0.035 * s) & (np.abs(v - (j - 1) * 0.16 * s) <= 0.03 * s)
            for i in range(4) for j in range(3)]
    for pad in pads:
        img[pad] = gold
    mask = np.zeros((s, s), bool)
    which = int(rng.integers(len(pads)))  # drawn for normals too: a defect changes only its own pixels
    if defect is not None:
        mask = pads[which]
        # pink of gold's luminance (0.299 R + 0.587 G + 0.114 B = 169): only the hue changes
        img[mask] = (200, 150, 180) if defect == "discolor" else (40, 120, 60)
    img = img * light[..., None] + rng.normal(0, 4, (s, s, 3))
    return img, mask


_SAMPLERS: dict[str, Callable[[np.random.Generator, int, str | None], tuple[np.ndarray, np.ndarray]]] = {
    "texture": _texture_sample,
    "object": _object_sample,
    "wide": _wide_sample,
    "elongated": _elongated_sample,
    "screw": _screw_sample,
    "board": _board_sample,
}


def render_category(
    name: str, image_size: int, n_train: int, n_test_good: int, n_test_defect: int, seed: int
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Render one category in memory.

    Returns:
        ``{"train": [...], "good": [...], <defect>: [...]}`` of ``(uint8 [S,S,3], bool [S,S])``;
        test defects are distributed round-robin over the category's defect types.
    """
    kind = _kind(name)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    sample = _SAMPLERS[kind]

    def draw(defect: str | None) -> tuple[np.ndarray, np.ndarray]:
        img, mask = sample(rng, image_size, defect)
        return np.clip(np.round(img), 0, 255).astype(np.uint8), mask

    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [draw(None) for _ in range(n_train)]}
    out["good"] = [draw(None) for _ in range(n_test_good)]
    for i in range(n_test_defect):
        d = DEFECTS[kind][i % len(DEFECTS[kind])]
        out.setdefault(d, []).append(draw(d))
    return out


def _save(path: Path, arr: np.ndarray, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        kw.setdefault("compress_level", 1)  # fast; noisy images barely compress anyway
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def make_mvtec_dataset(
    root: str | Path,
    categories: Sequence[str] = ("texture", "object"),
    image_size: int = 128,
    n_train: int = 8,
    n_test_good: int = 6,
    n_test_defect: int = 6,
    seed: int = 0,
) -> Path:
    """Write MVTec AD-layout categories (``train/good``, ``test/*``, ``ground_truth/*/<stem>_mask.png``).

    Returns:
        ``root`` (holding one folder per category).
    """
    root = Path(root)
    for name in categories:
        parts = render_category(name, image_size, n_train, n_test_good, n_test_defect, seed)
        cat = root / name
        for i, (img, _) in enumerate(parts.pop("train")):
            _save(cat / "train" / "good" / f"{i:03d}.png", img)
        for group, items in parts.items():
            for i, (img, mask) in enumerate(items):
                _save(cat / "test" / group / f"{i:03d}.png", img)
                if group != "good":
                    _save(cat / "ground_truth" / group / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root


def make_visa_dataset(
    root: str | Path,
    categories: Sequence[str] = ("texture", "object"),
    image_size: int = 128,
    n_train: int = 8,
    n_test_good: int = 6,
    n_test_defect: int = 6,
    seed: int = 0,
) -> Path:
    """Write the raw VisA layout (``Data/Images/{Normal,Anomaly}``, ``Data/Masks/Anomaly``) plus
    ``split_csv/1cls.csv``. Images are JPEG (quality 95), masks PNG with class indices 1, 2, ...

    Returns:
        ``root``.
    """
    root = Path(root)
    rows = []
    for name in categories:
        parts = render_category(name, image_size, n_train, n_test_good, n_test_defect, seed)
        data = root / name / "Data"
        normals = [("train", img) for img, _ in parts.pop("train")] + [
            ("test", img) for img, _ in parts.pop("good")
        ]
        for i, (split, img) in enumerate(normals):
            _save(data / "Images" / "Normal" / f"{i:04d}.JPG", img, quality=95)
            rows.append([name, split, "normal", f"{name}/Data/Images/Normal/{i:04d}.JPG", ""])
        j = 0
        for cls, items in enumerate(parts.values(), start=1):
            for img, mask in items:
                _save(data / "Images" / "Anomaly" / f"{j:04d}.JPG", img, quality=95)
                _save(data / "Masks" / "Anomaly" / f"{j:04d}.png", mask.astype(np.uint8) * cls)
                rows.append(
                    [
                        name,
                        "test",
                        "anomaly",
                        f"{name}/Data/Images/Anomaly/{j:04d}.JPG",
                        f"{name}/Data/Masks/Anomaly/{j:04d}.png",
                    ]
                )
                j += 1
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def make_folder_dataset(
    root: str | Path,
    category: str = "texture",
    image_size: int = 128,
    n_train: int = 8,
    n_test_good: int = 6,
    n_test_defect: int = 6,
    seed: int = 0,
    masks: bool = True,
) -> Path:
    """Write one generic folder-dataset category at ``root`` (``normal/``, ``test/good``,
    ``test/<defect>``, and with ``masks`` ``masks/<defect>/<stem>.png``).

    Returns:
        ``root``.
    """
    root = Path(root)
    parts = render_category(category, image_size, n_train, n_test_good, n_test_defect, seed)
    for i, (img, _) in enumerate(parts.pop("train")):
        _save(root / "normal" / f"n{i:03d}.png", img)
    for group, items in parts.items():
        for i, (img, mask) in enumerate(items):
            _save(root / "test" / group / f"{group}_{i:03d}.png", img)
            if masks and group != "good":
                _save(root / "masks" / group / f"{group}_{i:03d}.png", mask.astype(np.uint8) * 255)
    return root
