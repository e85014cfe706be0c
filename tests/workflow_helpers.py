"""Fixtures for the workflow tests: tiny PNG folders and a transparent pixel-difference method."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fsiad.fewshot.methods.base import AnomalyMethod, register_method
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult
from PIL import Image

SIDE = 32


def texture(rng: np.random.Generator, defect: bool = False, side: int = 40) -> np.ndarray:
    """A striped ``side x side`` RGB texture with noise; ``defect`` adds a bright square."""
    y, x = np.mgrid[0:side, 0:side]
    base = 110 + 60 * np.sin(x / 3.0)[..., None] * np.array([1.0, 0.8, 0.6])
    img = base + rng.normal(0, 6, (side, side, 3))
    if defect:
        r, c = rng.integers(8, side - 16, size=2)
        img[r : r + 8, c : c + 8] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, defect: bool, seed: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(texture(rng, defect)).save(p)
        paths.append(p)
    return paths


def make_inspection_tree(root: Path, n_normal: int = 6, n_good: int = 4, n_bad: int = 4) -> dict[str, Path]:
    """``root/normal`` (references), ``root/targets/{good,bad}`` and a labels CSV."""
    write_images(root / "normal", n_normal, False, seed=1)
    good = write_images(root / "targets" / "good", n_good, False, seed=2)
    bad = write_images(root / "targets" / "bad", n_bad, True, seed=3)  # same stems as good: name clash on purpose
    labels = root / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"targets/good/{p.name},normal\n" for p in good)
                      + "".join(f"targets/bad/{p.name},anomalous\n" for p in bad))
    return {"normal": root / "normal", "targets": root / "targets", "labels": labels}


class PixelDiff(AnomalyMethod):
    """Test method: map = mean over channels of |x - mean of the references|, score = max of the map.

    ``describe`` reports a fake encoder whose checksum is the sha256 of ``config.weights``
    (or ``"none"``), so the model-folder checksum check can be exercised without real weights.
    """

    regime = "few-shot"

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(SIDE, interpolation="bilinear")

    def _fit(self, images) -> None:
        x = images if isinstance(images, torch.Tensor) else torch.cat(list(images))
        self.mean = x.mean(0) if x.shape[0] else torch.full((3, SIDE, SIDE), 0.5)

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        amap = (images - self.mean).abs().mean(1)
        smooth = F.avg_pool2d(amap[:, None], 3, 1, 1)[:, 0]
        return AnomalyResult(smooth.flatten(1).max(1).values, smooth)

    def get_state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean = state["mean"]

    def describe(self) -> dict:
        w = self.config.weights
        checksum = hashlib.sha256(Path(w).read_bytes()).hexdigest() if w else "none"
        return {**super().describe(), "encoder": {"encoder": "wf_fake", "weights_checksum": checksum,
                                                 "weights_path": w}}


class PixelDiffGlobal(PixelDiff):
    """``PixelDiff`` of brightness-centred images (a uniform shift leaves the map unchanged) plus
    an image-level term ``2 x |mean brightness - the references'|``, reported as ``image_terms``."""

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        centred = images - images.mean((1, 2, 3), keepdim=True)
        amap = (centred - (self.mean - self.mean.mean())).abs().mean(1)
        smooth = F.avg_pool2d(amap[:, None], 3, 1, 1)[:, 0]
        term = 2.0 * (images.mean((1, 2, 3)) - self.mean.mean()).abs()
        return AnomalyResult(smooth.flatten(1).max(1).values + term, smooth, term)


class PixelDiffZeroShot(PixelDiff):
    """Zero-shot variant (no references: difference to mid-grey)."""

    regime = "zero-shot"


def register_test_methods() -> None:
    """Register ``wf_pixdiff`` / ``wf_pixdiff0`` / ``wf_pixglobal`` (idempotent; called by fixtures, not at import)."""
    register_method("wf_pixdiff")(PixelDiff)
    register_method("wf_pixglobal")(PixelDiffGlobal)
    register_method("wf_pixdiff0")(PixelDiffZeroShot)


def loo_scores_numpy(paths: list[Path]) -> list[float]:
    """Independent reference for PixelDiff's leave-one-out scores (numpy, not the method)."""
    pre = Preprocess(SIDE, interpolation="bilinear")
    x = pre.images([np.asarray(Image.open(p).convert("RGB")) for p in paths]).numpy()
    out = []
    for i in range(len(paths)):
        mean = np.delete(x, i, axis=0).mean(0)
        amap = np.abs(x[i] - mean).mean(0)
        pad = np.pad(amap, 1)
        smooth = sum(pad[a : a + SIDE, b : b + SIDE] for a in range(3) for b in range(3)) / 9.0  # count_include_pad
        out.append(float(smooth.max()))
    return out
