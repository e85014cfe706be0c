"""Native geometry and label-free self-configuration for the ``knn`` method.

Native geometry: every image keeps its aspect ratio; it is resized to an equal-area shape on
the encoder's patch grid (``native_shape``), images of different shapes are encoded in
separate forwards, and the anomaly map is computed on that grid, blurred at the working
resolution and resized to the method's square ``[S, S]`` output (the same squash the
evaluation applies to masks, so maps and masks stay aligned).

Self-configuration: synthetic defects (``fsiad.fewshot.data.defects``) on each held-out
reference; each candidate configuration is scored by how well it separates held-out normals
from their synthetic defects (leave-one-out over the K references). Nothing here sees a test
image or a label.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from fsiad.fewshot.data.defects import GLOBAL_KINDS, LOCAL_KINDS, make_defect
from fsiad.fewshot.metrics import auroc
from fsiad.fewshot.ops.pooling import topk_mean
from fsiad.fewshot.ops.smoothing import gaussian_blur

#: side cap of the images ``prepare`` keeps (equal-area), so later working sizes can be chosen
PREPARE_CAP = 768
#: patch-member combinations, in order of preference on ties
BASES = ("mid+last", "mid", "last")
CANDIDATE_MEMBERS = {"mid+last": ("mid", "last"), "mid": ("mid",), "last": ("last",)}
#: suffix of the candidates that add the image-level (global) term
GLOBAL = "+global"
#: candidate configurations: the patch bases, then each with the global term (saved models
#: store one validation row per candidate in this order; older models have the first three)
CANDIDATES = (*BASES, *(b + GLOBAL for b in BASES))


def split_candidate(cand: str) -> tuple[str, bool]:
    """``"mid+global"`` -> ``("mid", True)``; ``"mid+last"`` -> ``("mid+last", False)``."""
    return (cand[: -len(GLOBAL)], True) if cand.endswith(GLOBAL) else (cand, False)


def native_shape(h: int, w: int, side: int, patch: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """Equal-area shape of an ``h x w`` image with area ``side**2``, both sides multiples of ``patch``.

    The aspect ratio is kept (clamped to ``max_aspect``); each side is at least one patch.
    """
    a = min(max(w / max(h, 1), 1 / max_aspect), max_aspect)
    hh = max(patch, round(side / math.sqrt(a) / patch) * patch)
    ww = max(patch, round(side * math.sqrt(a) / patch) * patch)
    return int(hh), int(ww)


def resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``[3, h, w]`` (uint8 or float) -> float ``[3, H, W]`` in ``[0, 1]`` (bicubic, antialiased)."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    return F.interpolate(x[None], size=shape, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


@dataclass
class NativeBatch:
    """Images of any shapes for ``knn``: what its ``prepare`` returns and ``fit``/``predict`` take.

    Attributes:
        images: per-image ``[3, h, w]`` uint8 tensors (equal-area, side capped at ``PREPARE_CAP``).
        sizes: the original ``(height, width)`` of each image.
    """

    images: list[torch.Tensor]
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: slice) -> NativeBatch:
        return NativeBatch(self.images[idx], self.sizes[idx])

    @staticmethod
    def concat(parts: list[NativeBatch]) -> NativeBatch:
        return NativeBatch([i for p in parts for i in p.images], [s for p in parts for s in p.sizes])

    @staticmethod
    def from_arrays(arrays: Sequence[np.ndarray]) -> NativeBatch:
        """uint8 ``HxWx3`` arrays -> batch (each reduced to an equal-area side of at most ``PREPARE_CAP``)."""
        images, sizes = [], []
        for a in arrays:
            t = torch.from_numpy(np.require(a, np.uint8, ["C", "W"])).permute(2, 0, 1)
            h, w = t.shape[1:]
            f = PREPARE_CAP / math.sqrt(h * w)
            if f < 1:
                shape = (max(1, round(h * f)), max(1, round(w * f)))
                t = (resize(t, shape) * 255).round().to(torch.uint8)
            images.append(t.contiguous())
            sizes.append((int(h), int(w)))
        return NativeBatch(images, sizes)


def iter_items(images: object) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    """``(image [3, h, w], original size)`` from a tensor, a ``NativeBatch`` or an iterable of them."""
    if images is None:
        return
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        for x in images:
            yield x, (int(x.shape[1]), int(x.shape[2]))
    elif isinstance(images, NativeBatch):
        yield from zip(images.images, images.sizes, strict=True)
    elif isinstance(images, Iterable):
        for part in images:
            yield from iter_items(part)
    else:
        raise TypeError(f"knn: cannot read images from {type(images).__name__}")


def iter_chunks(images: object) -> Iterator[list[tuple[torch.Tensor, tuple[int, int]]]]:
    """Chunks of items as they come (one per tensor / batch), so ``predict`` stays memory-bounded."""
    if images is None:
        return
    if isinstance(images, (torch.Tensor, NativeBatch)):
        yield list(iter_items(images))
    else:
        for part in images:
            yield from iter_chunks(part)


def grouped(shapes: Sequence[tuple[int, ...]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by shape (first-seen order), in chunks of ``batch_size``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s : s + batch_size]


def map_to_square(grid: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Patch grid ``[h, w]`` (any aspect) -> ``[size, size]`` map: bilinear resize to the square
    output (the squash the evaluation applies to masks) then a Gaussian blur of ``sigma`` output
    pixels, as the square path (``upsample_blur``)."""
    x = F.interpolate(grid.float()[None, None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return gaussian_blur(x, sigma)[0]


def map_to_shape(grid: torch.Tensor, work: tuple[int, int], shape: tuple[int, int], sigma: float) -> torch.Tensor:
    """Patch grid ``[h, w]`` -> map at the working pixels ``work`` (bilinear), blurred by
    ``sigma`` working pixels, then resized to ``shape``, e.g. the image's own size."""
    x = F.interpolate(grid.float()[None, None], size=work, mode="bilinear", align_corners=False)[0]
    x = gaussian_blur(x, sigma)
    if tuple(work) != tuple(shape):
        x = F.interpolate(x[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]
    return x[0]


def image_seed(image: torch.Tensor, seed: int) -> int:
    """A seed from an image's content (so a reference gets the same defects in every fit)."""
    small = F.adaptive_avg_pool2d(image.float()[None], 8)[0]
    return zlib.crc32((small * 255).round().to(torch.uint8).numpy().tobytes()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def defect_plan(n_ref: int, budget: int) -> list[list[str]]:
    """Kinds of synthetic defects per held-out reference: alternating local and global kinds,
    ``budget`` in all (at least one local and one global per reference)."""
    per = max(2, budget // max(n_ref, 1))
    plan = []
    for i in range(n_ref):
        kinds = []
        for j in range(per):
            pool = LOCAL_KINDS if j % 2 == 0 else GLOBAL_KINDS
            kinds.append(pool[(i + j // 2) % len(pool)])
        plan.append(kinds)
    return plan


def synth_defects(image: torch.Tensor, kinds: Sequence[str], seed: int,
                  region: torch.Tensor | None = None) -> list[tuple[torch.Tensor, str]]:
    """Synthetic defects of ``kinds`` on ``image`` (local ones inside ``region`` when given)."""
    base = image_seed(image, seed)
    return [(make_defect(image, k, base + 7919 * j, region)[0], k) for j, k in enumerate(kinds)]


def separation(normal: torch.Tensor, local: torch.Tensor, glob: torch.Tensor) -> dict[str, float]:
    """Validation of one candidate: AUROC of held-out normals against local and against global
    synthetic defects, their mean (``score``) and a margin (``dprime``) for ties."""
    def one(d: torch.Tensor) -> float:
        if d.numel() == 0:
            return float("nan")
        return float(auroc(torch.cat([normal, d]).numpy(), np.r_[np.zeros(normal.numel()), np.ones(d.numel())]))

    a_loc, a_glob = one(local), one(glob)
    vals = [v for v in (a_loc, a_glob) if not math.isnan(v)]
    allv = torch.cat([local, glob])
    sd = float(torch.cat([normal, allv]).std()) or 1.0
    return {"local": a_loc, "global": a_glob, "score": float(np.mean(vals)) if vals else float("nan"),
            "dprime": float((allv.mean() - normal.mean()) / sd)}


#: candidates ``auto`` may choose: those whose map comes from the mid blocks. The last block
#: alone localises poorly (a defect shifts every token), and synthetic defects are easy enough
#: that local ones rarely separate the candidates, so it would often win on global defects
#: alone and give maps of no use; it is still validated and reported.
CHOOSABLE = ("mid+last", "mid", "mid+last" + GLOBAL, "mid" + GLOBAL)


#: the global term is kept only when it removes at least this share of the synthetic global
#: defects' ranking errors of its base (``(AUROC_with - AUROC_without) / (1 - AUROC_without)``)
GLOBAL_MIN_GAIN = 0.5
#: ... and costs the local defects' AUROC at most this much, or at most ``GLOBAL_LOSS_PER_GAIN``
#: of its global AUROC gain when that is more (both kinds have the same number of synthetic
#: defects, so AUROC differences count ranking errors alike)
GLOBAL_MAX_LOCAL_LOSS = 0.02
#: local AUROC the term may cost per unit of global AUROC it gains (it must remove at least twice
#: as many global ranking errors as it adds local ones)
GLOBAL_LOSS_PER_GAIN = 0.5


def global_helps(results: dict[str, dict[str, float]], cand: str) -> bool:
    """Whether a ``+global`` candidate earns its term against its base.

    Image-level statistics separate texture-wide changes almost perfectly where the normal
    appearance is homogeneous (a texture: the term removes nearly all the global errors); where
    normals vary (several part types), the term trades noise for a partial gain, which the
    real, mostly local, defects then pay for. Synthetic global defects are always caught
    better with the term, so the bar is relative, not "any gain". The local cost allowed is
    0.02 AUROC, or half the global gain when that is more: with 16 local defects against 16
    held-out normal views one AUROC point is ~2.6 ranking pairs, and a term that removes every
    global error (textile seed 2: 0.902 -> 1.0) was refused for 6 local pairs (0.965 -> 0.941).
    """
    base, with_global = split_candidate(cand)
    if not with_global:
        return True
    if base not in results:
        return False
    b, g = results[base], results[cand]
    headroom = 1.0 - b["global"]
    gain = (g["global"] - b["global"]) / headroom if headroom > 1e-9 else 0.0
    allowed = max(GLOBAL_MAX_LOCAL_LOSS, GLOBAL_LOSS_PER_GAIN * (g["global"] - b["global"]))
    return gain >= GLOBAL_MIN_GAIN and g["local"] >= b["local"] - allowed


def choose(results: dict[str, dict[str, float]], tol: float = 0.005) -> str:
    """The patch base by its local-defect AUROC, then its global term if it earns its place.

    The base gives the map, whose job is to find local defects; texture-wide ones are the
    global term's job (``global_helps``). Choosing the base on the mean of both kinds let the
    synthetic global defects pick ``mid+last`` where the real defects are local (magnetic_tile
    seed 0: local 0.957 against 0.965 for ``mid``, chosen for its global 0.77 against 0.70).
    Among ``CHOOSABLE`` bases within ``tol`` of the best local AUROC, the better mean of both
    kinds (``score``), then the first in ``BASES`` order, wins. With ``global_term=on`` (only
    ``+global`` rows) the bases are compared on those rows; with ``off`` (no ``+global`` rows)
    there is no term to add.
    """
    def row(base: str) -> dict[str, float]:
        return results[base] if base in results else results[base + GLOBAL]

    bases = [b for b in BASES if any(c in results and c in CHOOSABLE for c in (b, b + GLOBAL))]
    if not bases:  # nothing choosable was validated (e.g. only "last"): the best by score
        return max(results, key=lambda c: (results[c]["score"], -CANDIDATES.index(c)))
    best = max(row(b)["local"] for b in bases)
    tied = [b for b in bases if row(b)["local"] >= best - tol]
    base = max(tied, key=lambda b: (row(b)["score"], -BASES.index(b)))
    with_term = base + GLOBAL
    if with_term in results and (base not in results or global_helps(results, with_term)):
        return with_term
    return base


def pooled(feat: torch.Tensor) -> torch.Tensor:
    """Fused patch features ``[h, w, C]`` -> the image's mean feature ``[C]`` (the global term's vector)."""
    return feat.reshape(-1, feat.shape[-1]).mean(0)


def global_distance(vectors: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each mean feature ``[N, C]`` to the nearest reference mean feature ``[M, C]``."""
    return torch.cdist(vectors.float()[None], memory.float()[None])[0].min(1).values


def global_adjust(distance: torch.Tensor, unit: float, mean: float, clip: float = 1.0) -> torch.Tensor:
    """The global term in the patch score's units: ``unit * max(distance / mean - 1, 0)``.

    ``mean`` is the references' own leave-one-out global distance and ``unit`` their
    leave-one-out patch score measured from the score of a zero-distance image: an image whose
    mean feature is farther from the references than a held-out reference typically is gets
    ``unit`` per multiple of that distance added; a nearer one gets nothing. Clipping at the
    references' typical distance keeps the term from adding its noise to the ordinary images
    (measured offline: textile texture-wide defects 0.994 -> 0.992, magnetic_tile 0.763 ->
    0.772, the former linear form against this one). ``clip=0`` is that linear form
    ``unit * (distance / mean - 1)``, which models saved before the clip use.
    """
    r = distance / max(mean, 1e-12) - 1.0
    return unit * (r.clamp(min=0.0) if clip else r)


def image_scores(grids: list[torch.Tensor], fraction: float) -> torch.Tensor:
    return torch.stack([topk_mean(g[None], fraction)[0] for g in grids]) if grids else torch.empty(0)
