"""Point-cloud methods: ``btf`` (RGB + FPFH), ``fpfh`` (3D only), ``rgb`` and ``depth`` (2D encoder).

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
    * FPFH normals are oriented towards the camera (see ``pointcloud.features``);
      ``fpfh_pool="valid"`` averages FPFH over valid points only (default ``"zeros"`` = BTF).
    * Point-cloud cleaning (plane removal + DBSCAN, ``clean=True``) is off by default: BTF's raw
      and cleaned results are within 0.005 I-AUROC (0.873 vs 0.878) and cleaning is slow at
      full resolution; when on, results are cached and never written over the dataset, and the
      RGB of removed points is blanked as BTF does (``zero_rgb_background``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig, register_method
from fsiad.fewshot.ops import approximate_greedy_coreset, knn_search, upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult
from fsiad.pointcloud.batch import RGBDBatch, build_batch, iter_rgbd
from fsiad.pointcloud.cleaning import CleaningParams
from fsiad.pointcloud.features import FPFHParams, depth_image, fpfh_organized, pool_to_grid
from fsiad.pointcloud.io import valid_mask

DEFAULT_SIZE = 224
#: 2D encoders in order of preference when ``config.encoder`` is not given (BTF uses WR50).
PREFERRED_ENCODERS = ("wide_resnet50_2", "tf_efficientnet_lite0", "dinov2_vits14")

DEFAULTS: dict[str, Any] = {
    "layers": None,  # encoder layers (None = encoder default)
    "grid": None,  # feature grid side (None = size // 8, 28 at 224 as BTF)
    "fusion": "concat",  # "concat": one bank of concatenated features (BTF) | "scores": a bank per modality
    "fusion_norm": "nn",  # "nn" | "nnmean" | "std" | "none" (BTF)
    "weights": None,  # {"rgb": 1.0, "fpfh": 1.0, ...}
    "k": 1,  # nearest neighbours averaged for a patch score
    "coreset_ratio": 0.1,
    "coreset_above": 16,  # coreset only when fitting on more references than this
    "sigma": 4.0,
    "resize": None,  # square resize before a centre crop (None = no crop, BTF)
    "clean": False,  # BTF plane removal + DBSCAN
    "zero_rgb_background": True,  # with clean=True, blank the RGB of removed points (BTF)
    "fpfh_voxel": 0.05,
    "normal_max_nn": 30,
    "feature_max_nn": 100,
    "orient_normals": True,
    "fpfh_pool": "zeros",  # "zeros": missing points count as zero features (BTF); "valid": mean over valid points
}

FUSION_NORMS = ("std", "nn", "nnmean", "none")
#: at most this many reference images enter the leave-one-out distance scale of ``fusion_norm="nn"``
NN_SCALE_IMAGES = 16

_FPFH_MEMO: OrderedDict[str, torch.Tensor] = OrderedDict()
_FPFH_MEMO_MAX = 512


def select_encoder_name(config: MethodConfig) -> str:
    """``config.encoder`` or the first preferred encoder whose weights are available here."""
    from fsiad.fewshot.encoders import encoder_names, encoder_status

    if config.encoder:
        return config.encoder
    known = [n for n in PREFERRED_ENCODERS if n in encoder_names()]
    for name in known:
        if encoder_status(name)["available"]:
            return name
    if config.allow_random and known:
        return known[0]
    raise FileNotFoundError(
        f"no 2D encoder weights available (tried {', '.join(PREFERRED_ENCODERS)}); "
        "install them with scripts/setup.sh (see `fsiad models`) or pass --encoder")


def _loo_nn_distance(feats: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """Leave-one-image-out nearest-neighbour L2 distances of patches ``[K, P, C]`` (K >= 2),
    reduced per image (``max``: the image score a normal image would get; ``mean``), then
    averaged over images.

    Uses at most ``NN_SCALE_IMAGES`` images (evenly spaced); one kNN search per image.
    """
    k = feats.shape[0]
    sel = torch.linspace(0, k - 1, min(k, NN_SCALE_IMAGES)).round().long().unique()
    f = feats[sel]
    dists = []
    for i in range(f.shape[0]):
        others = torch.cat([f[:i], f[i + 1 :]]).reshape(-1, f.shape[-1])
        d = knn_search(f[i], others, k=1, metric="l2")[0][:, 0]
        dists.append(d.max() if reduce == "max" else d.mean())
    return torch.stack(dists).mean().clamp_min(1e-8)


class RGBDMethod(AnomalyMethod):
    """Base of the point-cloud methods: modalities -> fused patch features -> PatchCore."""

    modalities: ClassVar[tuple[str, ...]] = ()
    regime: ClassVar[str] = "few-shot"

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        opts = dict(self.config.options)
        unknown = sorted(set(opts) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
        self.opts = {**DEFAULTS, **opts}
        if self.opts["fusion"] not in ("concat", "scores"):
            raise ValueError(f"{self.name}: fusion must be 'concat' or 'scores', got {self.opts['fusion']!r}")
        if self.opts["fusion_norm"] not in FUSION_NORMS:
            raise ValueError(f"{self.name}: fusion_norm must be one of {FUSION_NORMS}, got {self.opts['fusion_norm']!r}")
        self.size = int(self.config.image_size or DEFAULT_SIZE)
        self.grid = int(self.opts["grid"] or max(1, self.size // 8))
        self._pre = Preprocess(self.size, self.opts["resize"], "bicubic")
        self.fpfh_params = FPFHParams(float(self.opts["fpfh_voxel"]), int(self.opts["normal_max_nn"]),
                                      int(self.opts["feature_max_nn"]), bool(self.opts["orient_normals"]))
        self.cleaning = CleaningParams() if self.opts["clean"] else None
        w = self.opts["weights"] or {}
        self.weights = {m: float(w.get(m, 1.0)) for m in self.modalities}
        self.encoder = None
        if any(m in ("rgb", "depth") for m in self.modalities):
            from fsiad.fewshot.encoders import create_encoder

            self.config.encoder = select_encoder_name(self.config)
            self.encoder = create_encoder(self.config.encoder, weights=self.config.weights, device=self.config.device,
                                          precision=self.config.precision, image_size=self.size,
                                          allow_random=self.config.allow_random)
        self.banks: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}
        self.n_references = 0

    @property
    def preprocess(self) -> Preprocess:
        return self._pre

    # -- data ---------------------------------------------------------------------------
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
        out = []
        for xyz, src in zip(batch.xyz, batch.sources, strict=True):
            arr = xyz.numpy()
            key = hashlib.sha1(arr.tobytes() + repr((self.fpfh_params, self.grid, self.opts["fpfh_pool"])).encode()).hexdigest()
            if key not in _FPFH_MEMO:
                dense = torch.from_numpy(fpfh_organized(arr, self.fpfh_params, src))[None]
                pooled = pool_to_grid(dense, self.grid)[0]
                if self.opts["fpfh_pool"] == "valid":  # mean over valid points only
                    ok = torch.from_numpy(valid_mask(arr)).float()[None, ..., None]
                    frac = pool_to_grid(ok, self.grid)[0]
                    pooled = torch.where(frac > 0, pooled / frac.clamp_min(1e-6), torch.zeros(()))
                _FPFH_MEMO[key] = pooled
                while len(_FPFH_MEMO) > _FPFH_MEMO_MAX:
                    _FPFH_MEMO.popitem(last=False)
            out.append(_FPFH_MEMO[key])
        return torch.stack(out) if out else torch.empty(0, self.grid, self.grid, 33)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """2D patch features ``[N, g, g, C]``: each layer 3x3-pooled to the grid, concatenated."""
        assert self.encoder is not None
        parts = []
        for i in range(0, images.shape[0], self.config.batch_size):
            feats = self.encoder.patch_features(images[i : i + self.config.batch_size], self.opts["layers"])
            parts.append(torch.cat([pool_to_grid(f, self.grid) for f in feats], dim=-1))
        return torch.cat(parts)

    def modality_features(self, batch: RGBDBatch) -> dict[str, torch.Tensor]:
        """Per-modality patch features ``{name: [N, g, g, C]}``."""
        out = {}
        for m in self.modalities:
            if m == "fpfh":
                out[m] = batch.features["fpfh"] if "fpfh" in batch.features else self._fpfh(batch)
            elif m == "rgb":
                out[m] = self._encode(batch.rgb)
            elif m == "depth":
                d = np.stack([depth_image(x.numpy()) for x in batch.xyz]) if len(batch) else np.zeros((0, 1, 1, 3))
                out[m] = self._encode(torch.from_numpy(d).permute(0, 3, 1, 2).float() / 255.0)
        return out

    def _normalised(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality normalised, weighted features ``{m: [N * g * g, C_m]}``."""
        out = {}
        for m in self.modalities:
            f = feats[m].reshape(-1, feats[m].shape[-1]).float()
            out[m] = (f - self.stats[f"mean.{m}"]) / self.stats[f"scale.{m}"] * self.weights[m]
        return out

    def _fuse(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bank/query features: ``{"fused": concatenation}`` or one entry per modality (``fusion="scores"``)."""
        norm = self._normalised(feats)
        if self.opts["fusion"] == "scores" and len(norm) > 1:
            return norm
        return {"fused": torch.cat([norm[m] for m in self.modalities], dim=1)}

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
        self.stats = {}
        for m, f in cat.items():
            mean, scale = torch.zeros(f.shape[1]), torch.tensor(1.0)
            if self.opts["fusion_norm"] != "none":
                mean = f.mean(0)
                scale = ((f - mean).pow(2).sum(1).mean()).sqrt().clamp_min(1e-8)
            if self.opts["fusion_norm"] in ("nn", "nnmean") and n_images >= 2:
                red = "max" if self.opts["fusion_norm"] == "nn" else "mean"
                scale = _loo_nn_distance((f - mean).reshape(n_images, -1, f.shape[1]), red)
            self.stats[f"mean.{m}"], self.stats[f"scale.{m}"] = mean, scale.reshape(())
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
        total = None
        for key, q in self._fuse(self.modality_features(batch)).items():
            bank = self.banks[key]
            dist, _ = knn_search(q, bank, k=min(int(self.opts["k"]), bank.shape[0]), metric="l2")
            d2 = dist.mean(1).pow(2)
            total = d2 if total is None else total + d2
        assert total is not None
        return total.sqrt().reshape(len(batch), self.grid, self.grid)

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


@register_method("rgb")
class RGBOnly(RGBDMethod):
    """2D encoder features of the RGB image only, same scorer (BTF's "RGB iNet")."""

    modalities = ("rgb",)


@register_method("depth")
class DepthOnly(RGBDMethod):
    """Depth map rendered as a 3-channel image through the 2D encoder (BTF's "Depth iNet")."""

    modalities = ("depth",)
