"""Few-shot patch kNN (AnomalyDINO-style): the default method of ``fsiad score --shots K``.

Damm et al., "AnomalyDINO: Boosting patch-based few-shot anomaly detection with DINOv2"
(WACV 2025): a memory of the patch features of the K normal shots; each test patch is scored
by its nearest-neighbour distance to that memory.

Default (``preset=auto``, ``geometry=native``): each image keeps its aspect ratio (equal-area
resize onto the 14-px patch grid, larger for large images, see ``work_side``), and the
configuration is chosen per part from the K references alone: synthetic local and global
defects on each held-out reference score the candidates (mid blocks, last block, their
normalised combination) by leave-one-out; the best one is stored with the fitted state.

``position=on`` (opt-in; not in AnomalyDINO): each patch is compared only with the references'
patches in the same grid cell, after every image is moved onto its part's centroid and turned to
its axis (``ops.align``; a part on a plain background, references of one size, no flipped views).
A missing component then differs from the reference patch at its place, where the position-free
kNN finds bare board like it elsewhere (synthetic board, missing pads: image AUROC 0.47-0.55 ->
BENCHMARKS.md rows ``position on``). Offline on two seeds, comparing within 1-2 cells lost it
again (0.48-0.80) and unaligned same-cell comparison failed on the pose jitter (0.61-0.62).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from fsiad.fewshot.data.defects import LOCAL_KINDS
from fsiad.fewshot.encoders.registry import encoder_from_config
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig, register_method
from fsiad.fewshot.methods.knn_auto import (
    CANDIDATE_MEMBERS,
    CANDIDATES,
    NativeBatch,
    choose,
    defect_plan,
    global_adjust,
    global_distance,
    grouped,
    image_scores,
    image_seed,
    iter_chunks,
    iter_items,
    map_to_shape,
    map_to_square,
    native_shape,
    pooled,
    resize,
    separation,
    split_candidate,
    synth_defects,
)
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.ops.align import Pose, align, axial_spread, directed, foreground, principal_pose, unalign
from fsiad.fewshot.ops.features import block_depth, fuse_layers, parse_layers
from fsiad.fewshot.ops.knn import knn_search
from fsiad.fewshot.ops.pooling import topk_mean
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult

DEFAULT_ENCODER = "dinov2_vits14"
DEFAULT_SIZE = 224
AUGMENTS = ("none", "flips", "rot4", "dihedral8")
#: typical log-scale of the normalised image scores of normal parts (``normal_log_spread``): the
#: test normals of every set measured spread 0.20-0.65 (robust sigma of log scores; 27 runs of 5
#: sets, BENCHMARKS.md "Default few-shot threshold"), while the leave-one-out scores of four
#: references can agree to 0.10 or less. The threshold fit pools its measured scale with this one.
NORMAL_LOG_SPREAD = 0.25
PRESETS = ("auto", "mid", "last", "mid+last")
GEOMETRIES = ("native", "square")
GLOBAL_TERMS = ("auto", "on", "off")
ALIGNS = ("auto", "on", "off")
POSITIONS = ("off", "on")
#: ``position=on`` turns the images to the part's axis only when every reference's part has one
#: (second moments at least this far apart); rounder parts are only moved onto their centroid
POSITION_MIN_ELONGATION = 1.1
#: ``align=auto`` rotates only when two references' axes differ by more than this (degrees):
#: a line that holds its parts to a few degrees keeps the unrotated images
ALIGN_SPREAD_DEG = 15.0
OPTIONS = (
    Option("preset", "str", "auto", "auto = choose mid / last / mid+last per part from synthetic defects on the "
           "references (leave-one-out); or one of them fixed (mid = blocks at 1/2 and 3/4 depth, [5, 8]; "
           "last = the last block)", choices=PRESETS),
    Option("geometry", "str", "native", "native = keep each image's aspect ratio (equal-area patch grid); "
           "square = squash to S x S (the former default)", choices=GEOMETRIES),
    Option("layers", "layers", None, "fixed encoder layers to fuse (overrides preset)", nullable=True),
    Option("augment", "str", "flips", "views of each shot added to the memory", choices=AUGMENTS),
    Option("top_fraction", "float", 0.01, "image score = mean of this top share of patch distances", gt=0, le=1),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels of the S x S output", ge=0),
    Option("metric", "str", None, "patch distance (none = the encoder's: cosine for ViTs, l2 for CNNs)",
           choices=("cosine", "l2"), nullable=True),
    Option("k", "int", 1, "nearest memory patches averaged per test patch", ge=1),
    Option("r", "int", 1, "local r x r aggregation of each layer before fusion", ge=1),
    Option("min_defect_px", "float", 8.0, "native geometry: smallest defect side (original pixels) that should "
           "cover a patch; sets the working size (images are enlarged up to max_side)", gt=0),
    Option("max_side", "int", 448, "native geometry: largest working side (equal-area) for large images", ge=14),
    Option("global_term", "str", "auto", "image-level term (distance of the image's mean mid-block feature to the "
           "references'), for texture-wide defects: auto = preset=auto chooses it, on, off", choices=GLOBAL_TERMS),
    Option("align", "str", "auto", "native geometry: rotate each image so that the part's principal axis lies "
           "along the longer side (parts at any angle on a plain background, e.g. screws): auto = when the "
           "references show an elongated part on a plain background at angles more than 15 degrees apart; "
           "on; off", choices=ALIGNS),
    Option("position", "str", "off", "on = compare each patch only with the references' patches at the same place, "
           "every image first aligned onto its part's centroid and axis (a part on a plain background): parts with "
           "a fixed layout where a component can be missing or misplaced (boards); needs references of one size; "
           "off = anywhere in the references", choices=POSITIONS),
    Option("seed", "int", 0, "seed of the synthetic defects of preset=auto"),
    Option("budget", "int", 32, "preset=auto: synthetic defect images (half local, half global)", ge=2),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)


def check_augment(mode: str) -> None:
    if mode not in AUGMENTS:
        raise ValueError(f"knn: unknown augment {mode!r}; use one of {AUGMENTS}")


def augment_shots(images: torch.Tensor, mode: str) -> torch.Tensor:
    """``[K, 3, S, S]`` -> ``[K * A, 3, S, S]``: identity; ``flips``: identity, horizontal,
    vertical and both flips (axis-aligned structure keeps its direction); ``rot4``: 4 rotations
    by 90 degrees; ``dihedral8``: the 8 symmetries of the square (rotations x horizontal flip)."""
    check_augment(mode)
    if mode == "none":
        return images
    if mode == "flips":
        return torch.cat([images, images.flip(3), images.flip(2), images.flip((2, 3))])
    views = [torch.rot90(images, q, dims=(2, 3)) for q in range(4)]
    if mode == "dihedral8":
        views += [v.flip(3) for v in views]
    return torch.cat(views)


def alignment_decision(mode: str, angles: list[float], usable: list[bool]) -> tuple[bool, dict[str, Any]]:
    """``(active, record)`` of ``align`` ``mode`` (``auto`` / ``on``) from the references' part
    axes (``angles``, radians) and whether each shows a usable part (``Pose.usable``)."""
    spread = axial_spread(angles)
    record: dict[str, Any] = {"mode": mode, "angles_deg": [round(math.degrees(a), 1) for a in angles],
                              "spread_deg": round(spread, 1)}
    if mode == "on":
        return True, {**record, "active": True, "reason": "align=on"}
    if len(angles) < 2:
        reason = "one reference: its angle alone says nothing about the line's"
    elif not all(usable):
        reason = "no elongated part on a plain background in every reference"
    elif spread <= ALIGN_SPREAD_DEG:
        reason = f"the references' axes agree within {ALIGN_SPREAD_DEG:g} degrees"
    else:
        return True, {**record, "active": True,
                      "reason": (f"the references show an elongated part at angles up to {spread:.0f} degrees "
                                 "apart: every image is rotated to the part's principal axis")}
    return False, {**record, "active": False, "reason": reason}


def position_decision(poses: list[Pose]) -> tuple[bool, dict[str, Any]]:
    """``(align, record)`` for ``position=on``: every image is aligned when each reference shows
    a part on a plain background (``Pose.placed``), turned too when each part has an axis; else
    the images are compared as they are."""
    active = bool(poses) and all(p.placed for p in poses)
    return active, position_record(active, active and all(p.elongation >= POSITION_MIN_ELONGATION for p in poses))


def position_record(active: bool, turn: bool) -> dict[str, Any]:
    """The alignment record of ``position=on`` (``describe()["alignment"]``)."""
    if not active:
        reason = "position=on: the part fills the frame or lies on no plain background: images compared as taken"
    elif turn:
        reason = "position=on: every image is moved onto its part's centroid and turned to its axis"
    else:
        reason = "position=on: every image is moved onto its part's centroid (the part shows no clear axis)"
    return {"mode": "position", "active": active, "turn": turn, "reason": reason}


def augment_one(image: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Views of one ``[3, h, w]`` image (identity first), as ``augment_shots``."""
    return list(augment_shots(image[None], mode))


@register_method("knn")
class PatchKNN(AnomalyMethod):
    """Nearest-neighbour distance of each test patch to the patches of the K normal shots.

    Pipeline: encoder patch features of ``layers`` (fused on the finest grid, each layer
    L2-normalised when the metric is cosine) -> memory = all patches of the K shots (and of
    their augmented views) -> per test patch, mean distance to its ``k``
    nearest memory patches (``k = 1``: nearest) -> patch map; image score = mean of the top
    ``top_fraction`` (1%, at least one) patch distances on the patch grid, as AnomalyDINO;
    map = bilinear upsampling to the input side + Gaussian blur (``sigma`` 4 px).

    Geometry (``geometry="native"``, the default): each image keeps its aspect ratio; it is
    resized to an equal-area shape on the 14-px patch grid of side ``work_side``: 224, enlarged
    up to ``max_side`` 448 so that a defect of ``min_defect_px`` (8) original pixels covers a
    patch (the references' median size decides; a 250-px image works at 434). Images of
    different shapes are encoded in separate forwards. The patch grid is resized to the
    ``[S, S]`` output (the squash the evaluation applies to masks) and blurred there, as the
    square path; ``predict_native`` returns maps at each image's own size (blurred at the
    working resolution). ``geometry="square"`` squashes every image to ``S x S``.

    Configuration (``preset="auto"``, the default): patch members ``mid`` (blocks ``[5, 8]``)
    and ``last`` (block ``[11]``), combined as ``mid``, ``last`` or ``mid+last`` (sum of the
    members' distance grids, each normalised by the mean and standard deviation of the
    references' own leave-one-out patch distances), each with or without the image-level
    ``global`` term: the Euclidean distance of the image's mean ``mid`` feature to the nearest
    reference view's, divided by the references' leave-one-out mean, added to the image score
    in its units when it exceeds that mean (``knn_auto.global_adjust``, clipped at 0: ordinary
    images get nothing added; texture-wide changes move the mean feature where no single patch
    stands out). All candidates share one encoder forward. ``fit`` builds
    ``budget`` (32) synthetic defects (``fsiad.fewshot.data.defects``, half local, half global)
    on up to 4 held-out references and scores each candidate by the image AUROC of held-out
    normals (their flipped views included) against the local and against the global defects.
    The patch base (``mid`` or ``mid+last``) is chosen on the local defects (the map's job;
    within 0.005, the better mean of both kinds); its ``+global`` variant is then kept only when
    the term removes at least half of the base's global-defect ranking errors at a local cost of
    at most 0.02 AUROC or half its global gain (``knn_auto.choose``, ``global_helps``): on a homogeneous texture it makes
    synthetic global defects separable (textile: +0.16 to +0.24 AUROC, to 1.0), on varied parts
    it only trades noise for part of the gain (magnetic_tile: +0.05 to +0.10, and real defects
    are local). ``last`` alone is validated and reported but not chosen (its maps do not
    localise). The map comes from the mid blocks when they are a member. The choice, the
    candidates' validation AUROCs and the seconds it took are in ``describe()["selfconfig"]``
    and in the saved state. ``preset`` ``mid`` / ``last`` / ``mid+last`` fix the patch members
    and ``global_term`` ``on`` / ``off`` the image-level term; ``-o preset=mid -o
    geometry=square`` is the former default exactly; an explicit ``layers`` overrides the preset.

    Alignment (``align="auto"``, native geometry only): a part that lies at any angle on a plain
    background (a screw) is rotated in every image so that its principal axis lies along the
    image's longer side, about its centroid moved to the image centre (``fsiad.fewshot.ops.align``:
    background = median colour of the border band, part = Otsu's threshold on the distance to
    it, axis = second moments); the remaining half turn is one of the flipped views (with
    ``augment="none"``, which has none, the part is turned so that its heavier end points one
    way: ``ops.align.directed``, the third moment along the axis). ``auto``
    turns it on only when every reference shows an elongated part (second moments at least
    3 : 1) on a plain background (at most 10 % of the border band on the part) and two
    references' axes differ by more than ``ALIGN_SPREAD_DEG`` (15) degrees; otherwise nothing
    changes (textures, round parts and parts held at one angle keep the unrotated path
    exactly). Each map is rotated back to its image's frame. The decision, the references'
    angles and the reason are in ``describe()["alignment"]`` and the saved state.

    The measurements below (up to "Not available yet") were made with the former default,
    ``preset=mid``, ``geometry=square``.

    Defaults (chosen by measurement): encoder ``dinov2_vits14`` at 224 px (16 x 16 patches),
    blocks ``[5, 8]`` (1/2 and 3/4 depth, final LayerNorm applied, each L2-normalised), cosine
    distance ``1 - cos``, shots augmented by their flips (``augment="flips"``: identity,
    horizontal, vertical, both; memory 4x larger). AnomalyDINO augments its few shots with
    rotations; flips keep the direction of axis-aligned structure (stripes, weaves, edges),
    which rotations by 90 degrees destroy. magnetic_tile, 4 shots, seeds 0-2, image AUROC /
    pixel AUROC / AUPRO of blocks ``[5, 8]`` by augmentation: none 0.760 / 0.699 / 0.655;
    flips 0.810 / 0.712 / 0.671; ``dihedral8`` 0.805 / 0.711 / 0.667 (it also drops the
    oriented textile demo from 0.824 to 0.692, where flips change nothing: 0.774 -> 0.778 on a
    300-image subset). Shifts by half a patch, zoom and gamma/contrast jitter of the shots
    gave no further gain (within +-0.005). Layers, with flips: ``[8]`` 0.817 / 0.708 /
    0.650; ``[8, 11]`` 0.817 / 0.654 / 0.479; ``[5, 8, 11]`` 0.816 / 0.667 / 0.558; without
    augmentation the last block ``[11]`` alone gives 0.647 / 0.583 / 0.291 (on synthetic
    defects it localises at pixel AUROC 0.5-0.64: a defect shifts every token of the image,
    against 0.99 for ``[5, 8]``), but it is the better choice for image-level (global) defects
    such as the textile set's (0.755 against 0.61 for ``[5, 8]``), hence the former demo's
    ``layers=[11]`` (the ``global`` term now does better: 0.97). EfficientNet-Lite0 ``blocks.2 + blocks.4`` with ``r = 3`` (L2, no
    augmentation, seeds 0-1) 0.727 / 0.762 / 0.698. 448 px costs ~6x the encoder time on CPU
    for +0.006 image AUROC with flips (``[8]``: 0.823); the native default enlarges small
    images anyway, for small defects: the textile set's ~10-px local defects go from image
    AUROC 0.67 at 224 px to 0.99 at 448 px (blocks 5+8, offline, 80 + 80 images). Image-score
    rules (top 1%, top 2%, max of the grid, max of the blurred map, minus the image median)
    differ by less than 0.015; top 1% stays, as AnomalyDINO. Keeping each image's aspect ratio (equal-area resize to ~224^2 on a 14-px grid; magnetic_tile
    crops range from 2.7:1 to 1:2.8) raised 4-shot image AUROC with flips to 0.831 (seeds 0-2:
    0.796 / 0.849 / 0.850) in an offline experiment; it is now ``geometry="native"``. The
    default (``auto``, native, enlarged, clipped global term chosen apart from the base)
    measured 0.851 / 0.695 / 0.739 (I / P / AUPRO) on magnetic_tile and 0.970 on the textile
    set (0.981 / 0.986 / 0.944 by seed; the former default 0.810 and 0.599); on a wide synthetic
    set (1132 x 460, faint defects) 0.985 / AUPRO 0.968 against 0.928 / 0.770 for the square
    224 kNN; see ``bench/results/82_selfconfig.json``.

    Options (``MethodConfig.options``): ``preset`` (``auto``), ``geometry`` (``native``),
    ``global_term`` (``auto``), ``align`` (``auto`` | ``on`` | ``off``), ``min_defect_px`` 8, ``max_side`` 448, ``seed`` 0 and ``budget`` 32 (synthetic defects of
    ``auto``), ``layers`` (fixed layers, overrides ``preset``), ``augment``
    (``flips`` | ``none`` | ``rot4`` | ``dihedral8``), ``top_fraction`` 0.01, ``sigma`` 4.0, ``metric``
    (``None`` = the encoder's: cosine for ViTs, l2 for CNNs), ``k`` 1, ``r`` 1 (local
    ``r x r`` aggregation of each layer before fusion, as PatchCore's 3 x 3).

    Deviations from AnomalyDINO: no zero-shot foreground masking (PCA of patch features) and
    no arbitrary-angle rotations of the shots (they are augmented only by exact symmetries of
    the square, flips by default); freely rotated parts are aligned to their principal axis
    instead (``align``): on a synthetic screw, 8 rotations of 45 degrees (AnomalyDINO's
    augmentation) gave image AUROC 0.63 and 16 of 22.5 degrees 0.68, alignment 0.95-0.99.
    """

    regime = "few-shot"
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        check_augment(self.opts["augment"])
        self.encoder = encoder_from_config(self.config, DEFAULT_ENCODER, self._default_size())
        self.metric = self.opts["metric"] or self.encoder.metric
        user = parse_layers(self.opts["layers"])
        depth = block_depth(self.encoder)
        if user:
            self.members: dict[str, list[int | str]] = {"custom": user}
            self.preset = "custom"
        else:
            self.members = {"mid": self._default_layers()}
            if depth:
                self.members["last"] = [depth - 1]
            self.preset = self.opts["preset"]
            if self.preset in ("last", "mid+last") and "last" not in self.members:
                raise ValueError(f"knn: preset={self.preset} needs a ViT encoder with blocks")
        self.native = self.opts["geometry"] == "native"
        #: compare each patch with the references' patches at the same grid cell (``position``)
        self.position = self.opts["position"] == "on"
        self.position_shape: tuple[int, int] | None = None
        if self.opts["align"] == "on" and not self.native:
            raise ValueError("knn: align=on needs geometry=native (the square path keeps the former default exactly)")
        #: rotate every image to its part's principal axis (``align``; decided in ``fit`` for auto)
        self.align_on = False
        self.align_info: dict[str, Any] | None = None
        self._align_poses: list[Pose] = []
        self.memories: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = self._fixed_weights()
        self.norm: dict[str, tuple[float, float]] = {}
        self.work_side = self.preprocess.size
        self.selfconfig: dict[str, Any] | None = None
        #: image-level term: reference mean features [V, C] and (unit, mean) normalisation
        self.global_memory: torch.Tensor | None = None
        self.global_norm: tuple[float, float, float] | None = None  # (unit, mean, clip)
        self._frozen: dict[str, Any] | None = None

    @contextlib.contextmanager
    def frozen_configuration(self) -> Iterator[None]:
        """Inside the block, ``fit`` reuses the configuration of the current fit (chosen members,
        their normalisation, working side) instead of choosing again: the threshold calibration
        refits on K-1 references and must score with the configuration the final model uses."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: fit before freezing the configuration")
        self._frozen = {"weights": dict(self.weights), "norm": dict(self.norm), "work_side": self.work_side,
                        "selfconfig": self.selfconfig, "global_norm": self.global_norm,
                        "align": (self.align_on, self.align_info)}
        try:
            yield
        finally:
            self._frozen = None

    # -- configuration ------------------------------------------------------------------
    def _fixed_weights(self) -> dict[str, float]:
        if self.preset == "custom":
            return {"custom": 1.0}
        if self.preset == "auto":  # until fit: the whole candidate set, "mid" if it is alone
            return {"mid": 1.0} if len(self.members) == 1 else {"mid": 0.5, "last": 0.5}
        names = CANDIDATE_MEMBERS[self.preset]
        return {n: 1.0 / len(names) for n in names}

    @property
    def layers(self) -> list[int | str]:
        """Encoder layers of the active configuration (one forward)."""
        return self._layers_of(self.weights)

    def _layers_of(self, names: Any) -> list[int | str]:
        out: list[int | str] = []
        for n in names:
            out += [x for x in self.members[n] if x not in out]
        return out

    def _map_member(self, names: Any = None) -> str:
        """The member whose features give the map and the global term: ``mid`` when active."""
        names = list(self.weights if names is None else names)
        return "mid" if "mid" in names else names[0]

    def _zero_score(self, members: Any, norm: dict[str, tuple[float, float]]) -> float:
        """Image score of a zero-distance image under the members' normalisation (the natural
        zero the global term's ``unit`` is measured from)."""
        members = list(members)
        return -sum(norm[m][0] / norm[m][1] for m in members if m in norm) / len(members)

    @property
    def lighting_invariant(self) -> bool:
        """``False`` with the global term: it was chosen because image-wide shifts separate as
        defects (its validation counts colour and contrast shifts as defects)."""
        return self.global_norm is None

    @property
    def normal_log_spread(self) -> float | None:
        """``NORMAL_LOG_SPREAD`` when the image scores are in normalised units (``preset=auto``
        self-configured, or a fixed multi-member preset: distances in held-out normal patch
        standard deviations, comparable across parts), else ``None`` (raw distances)."""
        if self.norm and all(m in self.norm for m in self.weights):
            return NORMAL_LOG_SPREAD
        return None

    @property
    def memory(self) -> torch.Tensor | None:
        """The memory bank of a single-member configuration (``None`` before fit)."""
        if not self.memories:
            return None
        if len(self.weights) != 1:
            raise ValueError("knn: the fitted configuration combines several memories (mid+last); "
                             f"use .memories ({sorted(self.memories)})")
        return self.memories[next(iter(self.weights))]

    def _default_layers(self) -> list[int | str]:
        """ViTs: blocks at 1/2 and 3/4 depth (``[5, 8]`` for 12 blocks); CNNs: the encoder's."""
        depth = block_depth(self.encoder)
        if depth:
            return [depth // 2 - 1, 3 * depth // 4 - 1]
        return list(self.encoder.default_layers)

    def _default_size(self) -> int | None:
        return DEFAULT_SIZE if (self.config.encoder or DEFAULT_ENCODER) == DEFAULT_ENCODER else None

    @property
    def preprocess(self) -> Preprocess:
        return self.encoder.preprocess

    def prepare(self, samples):
        """Native geometry: a ``NativeBatch`` (per-image tensors, aspect kept); square: ``[N, 3, S, S]``."""
        if not self.native:
            return super().prepare(samples)
        from fsiad.fewshot.data.io import read_image

        return NativeBatch.from_arrays([read_image(s.path) for s in samples])

    # -- geometry -----------------------------------------------------------------------
    def choose_work_side(self, sizes: list[tuple[int, int]]) -> int:
        """Equal-area working side: ``S`` unless the images are large enough that a defect of
        ``min_defect_px`` original pixels would cover less than a patch; then up to ``max_side``."""
        base = self.preprocess.size
        if not self.native or not sizes:
            return base
        p = self.encoder.patch_size
        areas = sorted(h * w for h, w in sizes)
        native = math.sqrt(areas[len(areas) // 2])
        want = native * p / float(self.opts["min_defect_px"])
        side = int(min(max(base, want), max(base, int(self.opts["max_side"]))))
        return max(p, round(side / p) * p)

    def _fraction(self) -> float:
        """Top share of the patch grid averaged for the image score: ``top_fraction`` of the
        ``S x S`` grid, i.e. the same number of patches at a larger working side (where the
        working side was raised so that a small defect covers about a patch, a share of the
        larger grid would average it away)."""
        return float(self.opts["top_fraction"]) * min(1.0, (self.preprocess.size / self.work_side) ** 2)

    def work_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        if not self.native:
            return (self.preprocess.size, self.preprocess.size)
        return native_shape(size[0], size[1], self.work_side, self.encoder.patch_size)

    def _working(self, items: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[torch.Tensor]:
        out = []
        for img, size in items:
            shape = self.position_shape if self.position and self.position_shape else self.work_shape(size)
            if not self.native and tuple(img.shape[1:]) != shape:
                raise ValueError(f"knn (geometry=square): images must be [N, 3, {shape[0]}, {shape[1]}], "
                                 f"got {tuple(img.shape)}")
            out.append(resize(img, shape))
        return out

    def defect_region(self, image: torch.Tensor) -> torch.Tensor | None:
        """The part (``ops.align.foreground``) when the images are aligned, else ``None``: the
        part then lies on a plain background, and real defects lie on the part."""
        if not self.align_on:
            return None
        return foreground(image.float() / 255.0 if image.dtype == torch.uint8 else image.float())[0]

    def _pose(self, image: torch.Tensor) -> Pose:
        """The part's pose; pointing one way (``directed``) when the references' views do not
        include the half turn (``augment=none``), since flips cover it otherwise."""
        pose = principal_pose(image)
        return directed(pose) if self.opts["augment"] == "none" and not self.position else pose

    def _frame_pose(self, pose: Pose, image: torch.Tensor) -> Pose:
        """The pose ``align`` uses: ``position=on`` without a clear axis moves the part only."""
        if self.position and not (self.align_info or {}).get("turn", False):
            h, w = image.shape[1:]
            return replace(pose, angle=0.0 if w >= h else math.pi / 2)
        return pose

    def _aligned(self, work: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[Pose | None]]:
        """Working images rotated to their part's axis when alignment is active, and their poses."""
        if not self.align_on:
            return work, [None] * len(work)
        poses = [self._frame_pose(self._pose(x), x) for x in work]
        return [align(x, p) for x, p in zip(work, poses, strict=True)], poses

    # -- features -----------------------------------------------------------------------
    def _fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return fuse_layers(feats, r=int(self.opts["r"]), normalize=self.metric == "cosine")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> fused patch features ``[N, h, w, C]`` of the first active member."""
        name = next(iter(self.weights))
        return self._fuse(self.encoder.patch_features(images, self.members[name]))

    def _encode(self, images: list[torch.Tensor], names: Any) -> list[dict[str, torch.Tensor]]:
        """Per image, the fused features ``[h, w, C]`` of each member in ``names``; one encoder
        forward per shape group for all the members' layers together."""
        names = list(names)
        layers = self._layers_of(names)
        out: list[dict[str, torch.Tensor]] = [{} for _ in images]
        for idx in grouped([tuple(x.shape) for x in images], self.config.batch_size):
            feats = self.encoder.patch_features(torch.stack([images[i] for i in idx]), layers)
            for n in names:
                fused = self._fuse([feats[layers.index(x)] for x in self.members[n]])
                for j, i in enumerate(idx):
                    out[i][n] = fused[j]
        return out

    def _grid(self, feat: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h, w, c = feat.shape
        if self.position:  # the memory holds whole grids of the same shape: compare cell by cell
            if memory.numel() % (h * w * c):
                raise ValueError(f"knn (position=on): an image's patch grid {h} x {w} differs from the references'")
            ref = memory.reshape(-1, h, w, c)
            if self.metric == "cosine":
                d = 1 - torch.einsum("hwc,khwc->khw", F.normalize(feat, dim=-1), F.normalize(ref, dim=-1))
            else:
                d = (ref - feat).pow(2).sum(-1).sqrt()
            return d.topk(min(int(self.opts["k"]), d.shape[0]), dim=0, largest=False).values.mean(0)
        d, _ = knn_search(feat.reshape(-1, c), memory, k=int(self.opts["k"]), metric=self.metric)
        return d.mean(1).reshape(h, w)

    def _combine(self, feats: dict[str, torch.Tensor], memories: dict[str, torch.Tensor],
                 weights: dict[str, float], norm: dict[str, tuple[float, float]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score grid, map grid)``: the weighted sum of the members' normalised distance
        grids scores the image; the map comes from the mid blocks when they are a member (the
        last block sees texture-wide changes but localises poorly), else from the sum."""
        grid, grids = None, {}
        for n, wt in weights.items():
            loc, scale = norm.get(n, (0.0, 1.0))
            grids[n] = (self._grid(feats[n], memories[n]) - loc) / scale
            grid = wt * grids[n] if grid is None else grid + wt * grids[n]
        return grid, (grids["mid"] if "mid" in grids and len(grids) > 1 else grid)

    # -- fit ----------------------------------------------------------------------------
    def _fit(self, images: Any) -> None:
        items = list(iter_items(images))
        if not items:
            raise ValueError("knn: needs at least one normal reference image (use --shots K >= 1)")
        frozen = self._frozen
        self.work_side = frozen["work_side"] if frozen else self.choose_work_side([s for _, s in items])
        if not frozen:
            self.position_shape = None
        refs = self._working(items)
        mode = self.opts["align"]
        if self.position:
            shapes = sorted({tuple(x.shape[1:]) for x in refs})
            if len(shapes) > 1:
                raise ValueError(f"knn -o position=on: the references' working sizes differ ({shapes}); position "
                                 "compares images cell by cell: give references of one size")
            self.position_shape = shapes[0]
        self._align_poses = [self._pose(x) for x in refs] if (self.native and mode != "off") or self.position else []
        if frozen:
            self.align_on, self.align_info = frozen["align"]
        elif self.position:
            self.align_on, self.align_info = position_decision(self._align_poses)
        elif self._align_poses:
            self.align_on, self.align_info = alignment_decision(
                mode, [p.angle for p in self._align_poses], [p.usable for p in self._align_poses])
        else:
            self.align_on, self.align_info = False, None
        if self.align_on:
            refs = [align(x, self._frame_pose(p, x)) for x, p in zip(refs, self._align_poses, strict=True)]
        mode = "none" if self.position else self.opts["augment"]  # a flipped view is another layout
        views = [augment_one(x, mode) for x in refs]
        flat = [v for vs in views for v in vs]
        if frozen:
            names = list(frozen["weights"])
        else:
            names = list(self.members) if self.preset in ("auto", "mid+last") else list(self.weights)
        feats = self._encode(flat, names)
        a = len(views[0])
        per_ref = [feats[i * a : (i + 1) * a] for i in range(len(refs))]
        self.memories = {n: torch.cat([f[n].reshape(-1, f[n].shape[-1]) for f in feats]) for n in names}
        self.norm, self.selfconfig, self.global_norm = {}, None, None
        if frozen:  # calibration refits: the configuration and normalisation of the full fit
            self.weights, self.norm, self.selfconfig = dict(frozen["weights"]), dict(frozen["norm"]), frozen["selfconfig"]
            self.global_norm = frozen["global_norm"]
        elif self.preset == "auto" and len(names) > 1:
            self._self_configure(refs, per_ref, names)
        else:
            if len(self.weights) > 1:
                self.norm = self._loo_norm(per_ref, names)
            if self.opts["global_term"] == "on":
                self.global_norm = self._loo_global_norm(per_ref)
        self.memories = {n: m for n, m in self.memories.items() if n in self.weights}
        gname = self._map_member()
        self.global_memory = (torch.stack([pooled(f[gname]) for f in feats])
                              if self.global_norm is not None else None)

    @staticmethod
    def _loo_split(per_ref: list[list[dict[str, torch.Tensor]]], i: int, names: list[str]
                   ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
        """(memory of ``names`` without reference ``i``, its held-out views, the other
        references' views); with one reference, the held-out view is its identity and the
        memory its other views."""
        if len(per_ref) == 1:
            held, rest = per_ref[0][:1], per_ref[0][1:]
        else:
            held, rest = per_ref[i], [f for j, fs in enumerate(per_ref) if j != i for f in fs]
        mem = {n: torch.cat([f[n].reshape(-1, f[n].shape[-1]) for f in rest]) for n in names}
        return mem, held, rest

    def _loo_norm(self, per_ref, names) -> dict[str, tuple[float, float]]:
        """Per member, mean and std of the held-out references' patch distances (leave-one-out)."""
        if len(per_ref) == 1 and len(per_ref[0]) == 1:
            return {}
        dist: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        for i in range(min(len(per_ref), 4)):
            mem, held, _ = self._loo_split(per_ref, i, names)
            for f in held:
                for n in names:
                    dist[n].append(self._grid(f[n], mem[n]).flatten())
        out = {}
        for n in names:
            d = torch.cat(dist[n])
            out[n] = (float(d.mean()), max(float(d.std()), 1e-6))
        return out

    def _loo_global_norm(self, per_ref) -> tuple[float, float, float] | None:
        """``(unit, mean)`` of the global term from held-out references: ``mean`` = their mean
        global distance, ``unit`` = their mean patch score above the zero-distance score."""
        if len(per_ref) == 1 and len(per_ref[0]) == 1:
            return None
        names, gname = list(self.weights), self._map_member()
        fraction = self._fraction()
        patch, dist = [], []
        for i in range(min(len(per_ref), 4)):
            mem, held, rest = self._loo_split(per_ref, i, names)
            gmem = torch.stack([pooled(f[gname]) for f in rest])
            for f in held:
                grid, _ = self._combine(f, mem, self.weights, self.norm)
                patch.append(float(topk_mean(grid[None], fraction)[0]))
                dist.append(float(global_distance(pooled(f[gname])[None], gmem)[0]))
        unit = sum(patch) / len(patch) - self._zero_score(self.weights, self.norm)
        return (max(unit, 1e-6), max(sum(dist) / len(dist), 1e-12), 1.0)

    def _global_term(self, feat: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image's global term (0-d float32; 0 without one)."""
        if self.global_memory is None or self.global_norm is None:
            return torch.zeros((), dtype=torch.float32)
        d = global_distance(pooled(feat[self._map_member()])[None], self.global_memory)[0]
        return global_adjust(d, *self.global_norm).float()

    def _self_configure(self, refs: list[torch.Tensor], per_ref, names: list[str]) -> None:
        t0 = time.perf_counter()
        if len(per_ref) == 1 and len(per_ref[0]) == 1:  # one reference and no augmentation
            self.weights = {"mid": 1.0}
            self.selfconfig = {"chosen": "mid", "reason": "one reference without augmentation: no held-out view"}
            return
        n_held = min(len(refs), 4)
        budget = max(2 * n_held, int(self.opts["budget"]))
        plan = defect_plan(n_held, budget)
        fraction = self._fraction()
        gname = self._map_member(names)
        normal: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        defects: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        kinds: list[str] = []
        gnormal, gdefect = [], []  # global distances of held-out normals / their synthetic defects
        seed = int(self.opts["seed"])
        order = sorted(range(len(refs)), key=lambda i: image_seed(refs[i], seed))  # independent of input order
        for j, i in enumerate(order[:n_held]):
            mem, held, rest = self._loo_split(per_ref, i, names)
            gmem = torch.stack([pooled(f[gname]) for f in rest])
            synth = synth_defects(refs[i], plan[j], seed, self.defect_region(refs[i]))
            dfeats = self._encode([x for x, _ in synth], names)
            kinds += [k for _, k in synth]
            for n in names:
                normal[n] += [self._grid(f[n], mem[n]) for f in held]
                defects[n] += [self._grid(f[n], mem[n]) for f in dfeats]
            gnormal.append(global_distance(torch.stack([pooled(f[gname]) for f in held]), gmem))
            gdefect.append(global_distance(torch.stack([pooled(f[gname]) for f in dfeats]), gmem))
        gn, gd = torch.cat(gnormal), torch.cat(gdefect)
        norm = {}
        for n in names:
            d = torch.cat([g.flatten() for g in normal[n]])
            norm[n] = (float(d.mean()), max(float(d.std()), 1e-6))
        local = torch.tensor([k in LOCAL_KINDS for k in kinds])
        term = self.opts["global_term"]
        results, gnorms = {}, {}
        for cand in CANDIDATES:
            base, with_global = split_candidate(cand)
            if (term == "on" and not with_global) or (term == "off" and with_global):
                continue
            members = list(CANDIDATE_MEMBERS[base])
            if any(m not in names for m in members):
                continue
            def zgrid(grids: dict[str, torch.Tensor], members: list[str] = members) -> torch.Tensor:
                return sum((grids[m] - norm[m][0]) / norm[m][1] for m in members) / len(members)
            nscore = image_scores([zgrid({m: normal[m][j] for m in members}) for j in range(len(gn))], fraction)
            dscore = image_scores([zgrid({m: defects[m][j] for m in members}) for j in range(len(kinds))], fraction)
            if with_global:
                gnorms[cand] = (max(float(nscore.mean()) - self._zero_score(members, norm), 1e-6),
                                max(float(gn.mean()), 1e-12), 1.0)
                nscore = nscore + global_adjust(gn, *gnorms[cand])
                dscore = dscore + global_adjust(gd, *gnorms[cand])
            results[cand] = separation(nscore, dscore[local], dscore[~local])
        chosen = choose(results)
        base, with_global = split_candidate(chosen)
        members = CANDIDATE_MEMBERS[base]
        self.weights = {m: 1.0 / len(members) for m in members}
        self.norm = {m: norm[m] for m in members}
        self.global_norm = gnorms[chosen] if with_global else None
        self.selfconfig = {
            "chosen": chosen,
            "layers": self._layers_of(members),
            "candidates": {c: {k: round(v, 4) for k, v in r.items()} for c, r in results.items()},
            "held_out": n_held, "synthetic_defects": len(kinds),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    # -- predict ------------------------------------------------------------------------
    def predict(self, images: Any) -> AnomalyResult:
        """Score query images (tensor ``[N, 3, H, W]``, ``NativeBatch`` or an iterable of them);
        maps ``[N, S, S]`` (``S`` = ``preprocess.size``)."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        parts = [self._predict_items(chunk) for chunk in iter_chunks(images) if chunk]
        if not parts:
            s = self.preprocess.size
            return AnomalyResult(torch.empty(0), torch.empty(0, s, s))
        return AnomalyResult.concat(parts)

    def _predict_items(self, items, own_size: bool = False):
        work, poses = self._aligned(self._working(items))
        names = list(self.weights)
        if self.preset == "auto" and getattr(self.encoder, "_cache", None) is not None:
            names = list(self.members)  # evaluations cache features: one entry whatever each seed chose
        feats = self._encode(work, names)
        s = self.preprocess.size
        fraction, sigma = self._fraction(), float(self.opts["sigma"])
        scores, maps, terms = [], [], []
        for f, x, (_, size), pose in zip(feats, work, items, poses, strict=True):
            grid, mgrid = self._combine(f, self.memories, self.weights, self.norm)
            shape = tuple(x.shape[1:])
            if pose is not None:  # the map back in the image's own frame, at the working pixels
                mgrid = unalign(map_to_shape(mgrid, shape, shape, 0.0), pose)
            terms.append(self._global_term(f))
            scores.append(topk_mean(grid[None], fraction)[0] + terms[-1])
            if own_size:
                maps.append(map_to_shape(mgrid, shape, size, sigma * math.sqrt(shape[0] * shape[1]) / s))
            else:
                maps.append(map_to_square(mgrid, s, sigma))
        if own_size:
            return torch.stack(scores), maps
        return AnomalyResult(torch.stack(scores), torch.stack(maps),
                             torch.stack(terms) if self.global_memory is not None else None)

    def predict_native(self, images: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image scores ``[N]`` and maps at each image's original size (list of ``[H_i, W_i]``)."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        scores, maps = [], []
        for chunk in iter_chunks(images):
            if chunk:
                sc, mp = self._predict_items(chunk, own_size=True)
                scores.append(sc)
                maps += mp
        return (torch.cat(scores) if scores else torch.empty(0)), maps

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        return self.predict(images)

    def score_features(self, feats: list[torch.Tensor]) -> AnomalyResult:
        """Everything after the encoder forward (square inputs): per-layer ``[N, h, w, C_l]`` of
        ``self.layers`` -> result."""
        layers = self.layers
        fused = {n: self._fuse([feats[layers.index(x)] for x in self.members[n]]) for n in self.weights}
        pairs = [self._combine({n: v[i] for n, v in fused.items()}, self.memories, self.weights, self.norm)
                 for i in range(feats[0].shape[0])]
        from fsiad.fewshot.ops.smoothing import upsample_blur

        scores = topk_mean(torch.stack([g for g, _ in pairs]), float(self.opts["top_fraction"]))
        terms = None
        if self.global_memory is not None:
            terms = torch.stack([self._global_term({n: v[i] for n, v in fused.items()})
                                 for i in range(scores.shape[0])])
            scores = scores + terms
        maps = torch.stack([m for _, m in pairs])
        return AnomalyResult(scores, upsample_blur(maps, self.preprocess.size, float(self.opts["sigma"])), terms)

    # -- description and state ----------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        chosen = "+".join(self.weights) if self.preset != "custom" else "custom"
        chosen += "+global" if self.global_norm is not None else ""
        d = {**super().describe(), "encoder": self.encoder.describe(), "layers": self.layers,
             "metric": self.metric, "configuration": chosen,
             "memory_size": {n: int(m.shape[0]) for n, m in self.memories.items()} or None,
             "work_side": self.work_side,
             **{k: v for k, v in self.opts.items() if k not in ("layers", "metric")}}
        if self.norm:
            d["normalisation"] = {n: [round(loc, 6), round(scale, 6)] for n, (loc, scale) in self.norm.items()}
        if self.selfconfig is not None:
            d["selfconfig"] = self.selfconfig
        if self.align_info is not None:
            d["alignment"] = self.align_info
        if self.global_norm is not None:
            d["global"] = {"member": self._map_member(), "unit": round(self.global_norm[0], 6),
                           "mean_distance": round(self.global_norm[1], 6), "clipped": bool(self.global_norm[2]),
                           "references": int(self.global_memory.shape[0]) if self.global_memory is not None else 0}
        return d

    def get_state(self) -> dict[str, torch.Tensor]:
        if not self.memories:
            return {}
        state = {f"memory.{n}": m for n, m in self.memories.items()}
        names = list(self.members)
        state["weights"] = torch.tensor([self.weights.get(n, 0.0) for n in names], dtype=torch.float32)
        state["norm"] = torch.tensor([self.norm.get(n, (0.0, 1.0)) for n in names], dtype=torch.float64)
        state["work_side"] = torch.tensor(self.work_side)
        if self.position and self.position_shape:
            state["position.shape"] = torch.tensor(self.position_shape)
            state["position.align"] = torch.tensor([float(self.align_on), float((self.align_info or {}).get("turn", 0))])
        elif self.align_info is not None:  # the references' axes and usability: the record is rebuilt on load
            state["align.poses"] = torch.tensor([[p.angle, float(p.usable)] for p in self._align_poses],
                                                dtype=torch.float64).reshape(-1, 2)
        if self.global_memory is not None and self.global_norm is not None:
            state["global.memory"] = self.global_memory
            state["global.norm"] = torch.tensor(self.global_norm, dtype=torch.float64)
        if self.selfconfig is not None and "candidates" in self.selfconfig:
            sc = self.selfconfig
            state["selfconfig.candidates"] = torch.tensor(
                [[sc["candidates"].get(c, {}).get(k, float("nan")) for k in ("local", "global", "score", "dprime")]
                 for c in CANDIDATES], dtype=torch.float64)
            state["selfconfig.meta"] = torch.tensor([sc["held_out"], sc["synthetic_defects"], sc["seconds"]],
                                                    dtype=torch.float64)
        return state

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if "memory" in state and "weights" not in state:  # a model saved before presets: one fixed member
            name = next(iter(self.weights)) if len(self.weights) == 1 else "mid"
            self.weights, self.norm, self.memories = {name: 1.0}, {}, {name: state["memory"]}
            return
        names = list(self.members)
        self.memories = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("memory.")}
        if "weights" in state:
            w = state["weights"].tolist()
            self.weights = {n: float(w[i]) for i, n in enumerate(names) if w[i] > 0}
            nm = state["norm"].tolist()
            self.norm = {n: (nm[i][0], nm[i][1]) for i, n in enumerate(names) if n in self.weights
                         and tuple(nm[i]) != (0.0, 1.0)}
        if "work_side" in state:
            self.work_side = int(state["work_side"])
        self.align_on, self.align_info = False, None  # models saved before alignment: none
        if "position.shape" in state:
            self.position_shape = tuple(int(v) for v in state["position.shape"].tolist())
            active, turn = (bool(v) for v in state["position.align"].tolist())
            self.align_on, self.align_info = active, position_record(active, turn)
        elif "align.poses" in state:
            rows = state["align.poses"].tolist()
            self.align_on, self.align_info = alignment_decision(
                self.opts["align"], [r[0] for r in rows], [bool(r[1]) for r in rows])
        self.global_memory = state.get("global.memory")
        if "global.norm" in state:  # (unit, mean, clip); models saved before the clip: linear
            g = state["global.norm"].tolist()
            self.global_norm = (g[0], g[1], g[2] if len(g) > 2 else 0.0)
        else:
            self.global_norm = None
        if "selfconfig.candidates" in state:
            rows = state["selfconfig.candidates"].tolist()
            meta = state["selfconfig.meta"].tolist()
            chosen = "+".join(self.weights) + ("+global" if self.global_norm is not None else "")
            self.selfconfig = {
                "chosen": chosen, "layers": self.layers,
                "candidates": {c: dict(zip(("local", "global", "score", "dprime"), r, strict=True))
                               for c, r in zip(CANDIDATES, rows, strict=False) if not math.isnan(r[2])},
                "held_out": int(meta[0]), "synthetic_defects": int(meta[1]), "seconds": meta[2],
            }
