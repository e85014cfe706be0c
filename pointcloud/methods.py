"""Point-cloud methods: ``btf`` (RGB + FPFH), ``fpfh`` (3D only), ``rgb`` and ``depth`` (2D encoder).

The modality features live in ``pointcloud.modalities``, their normalisation and fusion in
``pointcloud.fusion``; this module holds the scorer (``RGBDMethod``), the options and the four
registered methods.

All four share one scorer, BTF's recipe (Horwitz & Hoshen 2022; reference-facts b.5): per-
modality patch features on a ``g x g`` grid (28x28 at 224 px), concatenated per patch into
one PatchCore memory bank (all patches of the K references for few-shot fits; an approximate
greedy coreset of ``coreset_ratio`` = 0.1 as in BTF when more than ``coreset_above`` = 16
references are given), nearest-neighbour L2 distance per query patch, image score = max patch
score, map = bilinear upsampling + Gaussian blur (sigma 4) to the working side (224).

Deviations from BTF, on purpose (all switchable back with ``-o key=value``):
    * Per-modality normalisation, default ``fusion_norm="nn"``: each modality is centred on the
      fit patches and divided by its *leave-one-image-out nearest-neighbour distance* (the max
      over a reference's patches of the distance to the other references, averaged over up to 16
      references; with K = 1 the square root of the total variance, ``"std"``, is used), then
      multiplied by ``weights[m]`` (default 1). A normal image thus scores about 1 in every
      modality, so neither dominates the concatenated distance. BTF concatenates raw features
      (``fusion_norm="none"``): whichever modality has the larger numeric scale dominates (open3d
      FPFH histograms sum to 600 per point, CNN features are O(1), and the balance changes with
      the encoder). ``"std"`` (variance only) and ``"nnmean"`` (mean instead of max) also exist.
    * ``fusion="concat"`` (default, BTF: one bank of concatenated patch features) or
      ``fusion="scores"``: one bank per modality, patch score ``sqrt(sum_m d_m^2)``. With few
      references a concatenated query rarely finds a reference patch that matches in both
      modalities at once, which inflates normal scores; score fusion avoids that.
      Synthetic mixed geometric-only / colour-only defects, 4-shot, 96 px, 2 categories x 3 seeds
      (``python -m bench.bench_pointcloud compare``), I-AUROC / P-AUROC / AUPRO in %:
      concat+none (BTF) 84.3 / 98.4 / 95.3; concat+std 85.9 / 97.4 / 91.7;
      concat+nn (default) 86.1 / 98.6 / 95.9; scores+nn 92.4 / 98.7 / 95.5;
      fpfh 85.0 / 90.2 / 80.9; rgb 55.1 / 59.8 / 33.0; depth 56.9 / 65.5 / 34.6.
    * Image score = max patch distance (official PatchCore); BTF's neighbour re-weighting of the
      max is not applied.
    * 2D encoder: BTF's ImageNet WideResNet-50 (layer2+layer3) when its weights are available,
      otherwise the first available of ``tf_efficientnet_lite0`` and ``dinov2_vits14``; the
      encoder used is recorded by ``describe()`` (results files, ``fsiad inspect`` JSON). Layers
      of any encoder are 3x3 average-pooled and adaptively pooled to the grid, as BTF does for WR50.
    * ``btf`` runs FPFH on a voxel-downsampled copy of about ``fpfh_max_points`` = 8000 points
      mapped back to the pixels (``0`` = full resolution, BTF). At 224 px (~49k points) FPFH
      drops from ~3.7 s to ~0.8 s per sample on 2 loaded cores; on the synthetic benchmark
      (``python -m bench.bench_pointcloud voxel``, 2 categories x 2 seeds) ``btf`` keeps
      I-AUROC / P-AUROC / AUPRO within 0.01 (95.8 / 99.5 / 98.8 vs 96.5 / 99.7 / 99.2 %), but
      the 3D-only ``fpfh`` method loses 5.6 I-AUROC points (80.2 vs 85.8 %), so ``fpfh``
      keeps full resolution by default. ``fpfh_cache=true`` keeps pooled FPFH on disk across
      runs, keyed by cloud content and parameters.
    * FPFH normals are oriented towards the camera (see ``pointcloud.features``);
      ``fpfh_pool="valid"`` averages FPFH over valid points only (default ``"zeros"`` = BTF).
    * Point-cloud cleaning (plane removal + DBSCAN, ``clean=True``) is off by default: BTF's raw
      and cleaned results are within 0.005 I-AUROC (0.873 vs 0.878) and cleaning is slow at
      full resolution; when on, results are cached and never written over the dataset, and the
      RGB of removed points is blanked as BTF does (``zero_rgb_background``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig, register_method
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.ops import approximate_greedy_coreset, upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult
from fsiad.pointcloud.batch import RGBDBatch, build_batch, iter_rgbd
from fsiad.pointcloud.cleaning import CleaningParams
from fsiad.pointcloud.features import FPFHParams
from fsiad.pointcloud.fusion import (
    FUSION_NORMS,
    FUSIONS,
    NN_SCALE_IMAGES,
    fit_normalisation,
    fuse,
    fused_distance,
    normalised,
)
from fsiad.pointcloud.fusion import loo_nn_distance as _loo_nn_distance
from fsiad.pointcloud.modalities import (
    _FPFH_MEMO,
    _FPFH_MEMO_MAX,
    FPFH_POOLS,
    PREFERRED_ENCODERS,
    depth_images,
    encoder_features,
    fpfh_features,
    select_encoder_name,
)

DEFAULT_SIZE = 224

OPTIONS = (
    Option("layers", "layers", None, "2D encoder layers (none = the encoder's default)", nullable=True),
    Option("grid", "int", None, "feature grid side (none = image side / 8, 28 at 224 as BTF)", ge=1, nullable=True),
    Option("fusion", "str", "concat", "one bank of concatenated features (BTF) or a bank per modality",
           choices=FUSIONS),
    Option("fusion_norm", "str", "nn", "per-modality scale before fusion (none = raw features, BTF)",
           choices=FUSION_NORMS),
    Option("weights", "dict", None, "per-modality weights, e.g. {\"rgb\": 1.0, \"fpfh\": 2.0} (none = all 1)",
           nullable=True, item="float"),
    Option("k", "int", 1, "nearest bank entries averaged for a patch score", ge=1),
    Option("coreset_ratio", "float", 0.1, "share of patches kept by the greedy coreset", gt=0, le=1),
    Option("coreset_above", "int", 16, "coreset only when fitting on more references than this", ge=0),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
    Option("resize", "int", None, "square resize before a centre crop (none = no crop, BTF)", ge=1, nullable=True),
    Option("clean", "bool", False, "BTF plane removal + DBSCAN of the point cloud (cached, slow)"),
    Option("zero_rgb_background", "bool", True, "with clean=true, blank the RGB of removed points (BTF)"),
    Option("fpfh_voxel", "float", 0.05, "FPFH voxel size relative to the object extent", gt=0),
    Option("normal_max_nn", "int", 30, "neighbours for the normal estimation", ge=1),
    Option("feature_max_nn", "int", 100, "neighbours for the FPFH histogram", ge=1),
    Option("orient_normals", "bool", True, "orient normals towards the camera"),
    Option("fpfh_max_points", "int", 8000, "FPFH on a voxel-downsampled copy of about this many points, "
           "mapped back to the pixels (0 = full resolution, BTF)", ge=0),
    Option("fpfh_cache", "bool", False, "cache pooled FPFH on disk by cloud content ($FSIAD_HOME/cache/pointcloud)"),
    Option("fpfh_pool", "str", "zeros", "missing points as zero features (BTF) or mean over valid points",
           choices=FPFH_POOLS),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)


class RGBDMethod(AnomalyMethod):
    """Base of the point-cloud methods: modalities -> fused patch features -> PatchCore."""

    modalities: ClassVar[tuple[str, ...]] = ()
    regime: ClassVar[str] = "few-shot"
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        self.size = int(self.config.image_size or DEFAULT_SIZE)
        self.grid = int(self.opts["grid"] or max(1, self.size // 8))
        self._pre = Preprocess(self.size, self.opts["resize"], "bicubic")
        self.fpfh_params = FPFHParams(float(self.opts["fpfh_voxel"]), int(self.opts["normal_max_nn"]),
                                      int(self.opts["feature_max_nn"]), bool(self.opts["orient_normals"]),
                                      int(self.opts["fpfh_max_points"]))
        self.cleaning = CleaningParams() if self.opts["clean"] else None
        w = self.opts["weights"] or {}
        self.weights = {m: float(w.get(m, 1.0)) for m in self.modalities}
        self.encoder = None
        if any(m in ("rgb", "depth") for m in self.modalities):
            from fsiad.fewshot.encoders import encoder_from_config

            self.config.encoder = select_encoder_name(self.config)
            self.encoder = encoder_from_config(self.config, self.config.encoder, self.size)
        self.banks: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}
        self.n_references = 0

    @property
    def preprocess(self) -> Preprocess:
        return self._pre

    # -- data ---------------------------------------------------------------------------
    @classmethod
    def collect_samples(cls, paths: Sequence[str | Path], labels: dict[Path, int] | None = None) -> list[Sample]:
        """RGB-D samples from ``--normal`` / TARGET paths (MVTec 3D-AD ``rgb/`` + ``xyz/`` folders,
        ``name.png`` + ``name.tiff`` pairs, ``.ply`` / ``.pcd`` files); see ``pointcloud.data.collect_rgbd``.

        ``labels``: resolved path -> 0/1 (``read_labels_csv``); unlabeled samples get ``None``.
        """
        from fsiad.pointcloud.data import collect_rgbd

        return collect_rgbd(paths, labels)

    def prepare(self, samples: Sequence) -> RGBDBatch:
        """Load RGB-D samples (``Sample.extra["xyz"]``) and precompute the 3D features."""
        batch = build_batch(list(samples), self._pre, self.cleaning, bool(self.opts["zero_rgb_background"]))
        if "rgb" in self.modalities and not bool(batch.has_rgb.all()):
            bad = batch.sources[int((~batch.has_rgb).nonzero()[0, 0])]
            raise ValueError(f"{bad}: method {self.name} needs an RGB image (point cloud without colours)")
        if "fpfh" in self.modalities:
            batch.features["fpfh"] = self._fpfh(batch)
        return batch

    def _fpfh(self, batch: RGBDBatch) -> torch.Tensor:
        return fpfh_features(batch, self.fpfh_params, self.grid, self.opts["fpfh_pool"], bool(self.opts["fpfh_cache"]))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """2D patch features ``[N, g, g, C]``: each layer 3x3-pooled to the grid, concatenated."""
        assert self.encoder is not None
        return encoder_features(self.encoder, images, self.opts["layers"], self.grid, self.config.batch_size)

    def modality_features(self, batch: RGBDBatch) -> dict[str, torch.Tensor]:
        """Per-modality patch features ``{name: [N, g, g, C]}``."""
        out = {}
        for m in self.modalities:
            if m == "fpfh":
                out[m] = batch.features["fpfh"] if "fpfh" in batch.features else self._fpfh(batch)
            elif m == "rgb":
                out[m] = self._encode(batch.rgb)
            elif m == "depth":
                out[m] = self._encode(depth_images(batch))
        return out

    def _normalised(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality normalised, weighted features ``{m: [N * g * g, C_m]}``."""
        return normalised(feats, self.stats, self.weights, self.modalities)

    def _fuse(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bank/query features: ``{"fused": concatenation}`` or one entry per modality (``fusion="scores"``)."""
        return fuse(self._normalised(feats), self.opts["fusion"], self.modalities)

    @property
    def memory(self) -> torch.Tensor | None:
        """The memory bank of a concatenation fit (``None`` before fit or with ``fusion="scores"``)."""
        return self.banks.get("fused")

    # -- fit / predict ------------------------------------------------------------------
    def _fit(self, images: Any) -> None:
        raise NotImplementedError  # fit is overridden

    def fit(self, batches: RGBDBatch | Iterable[RGBDBatch] | None = None) -> RGBDMethod:
        """Build the memory bank from normal RGB-D references (at least one)."""
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        n_images = 0
        for b in iter_rgbd(batches):
            for m, f in self.modality_features(b).items():
                feats[m].append(f.reshape(-1, f.shape[-1]))
            n_images += len(b)
        if n_images == 0:
            raise ValueError(f"{self.name}: needs at least one normal reference (K >= 1); it has no zero-shot mode")
        cat = {m: torch.cat(v) for m, v in feats.items()}
        self.stats = fit_normalisation(cat, n_images, self.opts["fusion_norm"])
        self.banks = {}
        for key, bank in self._fuse(cat).items():
            if n_images > int(self.opts["coreset_above"]) and float(self.opts["coreset_ratio"]) < 1.0:
                seed = torch.initial_seed() % (2**31)
                bank = bank[approximate_greedy_coreset(bank, ratio=float(self.opts["coreset_ratio"]), seed=seed)]
            self.banks[key] = bank.contiguous()
        self.n_references = n_images
        self.fitted = True
        return self

    def patch_scores(self, batch: RGBDBatch) -> torch.Tensor:
        """Nearest-neighbour distance of every patch to the memory bank -> ``[N, g, g]``.

        With ``fusion="scores"`` each modality has its own bank and the patch score is
        ``sqrt(sum_m d_m^2)``, the distance concatenation would give if the nearest neighbours
        of the modalities could come from different reference patches.
        """
        d = fused_distance(self._fuse(self.modality_features(batch)), self.banks, int(self.opts["k"]))
        return d.reshape(len(batch), self.grid, self.grid)

    def predict(self, batches: RGBDBatch | Iterable[RGBDBatch]) -> AnomalyResult:
        """Scores ``[N]`` and maps ``[N, S, S]`` for RGB-D batches."""
        if not self.fitted or not self.banks:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        parts = []
        for b in iter_rgbd(batches):
            for i in range(0, len(b), max(1, self.config.batch_size)):
                ps = self.patch_scores(b[i : i + self.config.batch_size])
                maps = upsample_blur(ps, self.size, float(self.opts["sigma"]))
                parts.append(AnomalyResult(ps.flatten(1).amax(1), maps))
        if not parts:
            return AnomalyResult(torch.empty(0), torch.empty(0, self.size, self.size))
        return AnomalyResult.concat(parts)

    # -- metadata / persistence ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        d = super().describe()
        full = self.n_references > int(self.opts["coreset_above"])
        d.update(regime="full-data" if full else "few-shot", n_references=self.n_references,
                 modalities=list(self.modalities), grid=self.grid, fusion_norm=self.opts["fusion_norm"],
                 fusion_weights=self.weights, k=self.opts["k"], coreset_ratio=self.opts["coreset_ratio"],
                 coreset_above=self.opts["coreset_above"], sigma=self.opts["sigma"],
                 image_score="max patch distance", xyz_interpolation="nearest",
                 cleaning=None if self.cleaning is None else vars(self.cleaning))
        if "fpfh" in self.modalities:
            d["fpfh"] = self.fpfh_params.describe()
        if self.encoder is not None:
            d["encoder"] = {**self.encoder.describe(), "layers": self.opts["layers"] or list(self.encoder.default_layers)}
        d["fusion"] = self.opts["fusion"]
        if self.banks:
            d["memory_banks"] = {k: list(v.shape) for k, v in self.banks.items()}
        return d

    def get_state(self) -> dict[str, torch.Tensor]:
        if not self.banks:
            return {}
        banks = {f"bank.{k}": v for k, v in self.banks.items()}
        return {**banks, "n_references": torch.tensor(self.n_references), **self.stats}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for m in self.modalities for k in (f"mean.{m}", f"scale.{m}") if k not in state]
        banks = {k[5:]: v.float() for k, v in state.items() if k.startswith("bank.")}
        if not banks or missing:
            raise ValueError(f"{self.name}: saved state lacks {missing or 'a memory bank'}")
        self.banks = banks
        self.n_references = int(state.get("n_references", torch.tensor(0)))
        self.stats = {k: v.float() for k, v in state.items() if k.startswith(("mean.", "scale."))}
        self.fitted = True


@register_method("btf")
class BTF(RGBDMethod):
    """Back to the Feature: 2D encoder patch features + FPFH, fused, PatchCore scorer."""

    modalities = ("rgb", "fpfh")


@register_method("fpfh")
class FPFHOnly(RGBDMethod):
    """FPFH features of the organized cloud only (BTF's 3D-only baseline)."""

    modalities = ("fpfh",)
    # voxel FPFH costs this 3D-only method 5.6 I-AUROC points on the synthetic benchmark: full resolution
    options = tuple(replace(o, default=0) if o.name == "fpfh_max_points" else o for o in OPTIONS)


@register_method("rgb")
class RGBOnly(RGBDMethod):
    """2D encoder features of the RGB image only, same scorer (BTF's "RGB iNet")."""

    modalities = ("rgb",)


@register_method("depth")
class DepthOnly(RGBDMethod):
    """Depth map rendered as a 3-channel image through the 2D encoder (BTF's "Depth iNet")."""

    modalities = ("depth",)


__all__ = ["BTF", "DEFAULTS", "DEFAULT_SIZE", "DepthOnly", "FPFHOnly", "FUSION_NORMS", "NN_SCALE_IMAGES", "OPTIONS",
           "PREFERRED_ENCODERS", "RGBDMethod", "RGBOnly", "_FPFH_MEMO", "_FPFH_MEMO_MAX", "_loo_nn_distance",
           "select_encoder_name"]
