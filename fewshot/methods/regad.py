"""RegAD-style few-shot scoring (Huang et al., "Registration based Few-Shot Anomaly Detection", ECCV 2022)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from fsiad.fewshot.encoders.registry import encoder_from_config
from fsiad.fewshot.methods.base import AnomalyMethod, Images, MethodConfig, iter_batches, register_method
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.methods.regad_net import compose, invert, warp
from fsiad.fewshot.methods.regad_train import is_checkpoint
from fsiad.fewshot.ops.features import parse_layers
from fsiad.fewshot.ops.gaussian import GaussianStats, fit_gaussian, mahalanobis
from fsiad.fewshot.ops.pooling import topk_mean
from fsiad.fewshot.ops.smoothing import upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult

DEFAULT_ENCODER = "tf_efficientnet_lite0"
#: strides 4, 8, 16 (RegAD: ResNet-18 layer1-3)
DEFAULT_LAYERS = {"resnet": ["layer1", "layer2", "layer3"], "efficientnet": ["blocks.1", "blocks.2", "blocks.4"]}
OPTIONS = (
    Option("layers", "layers", None, "encoder layers (none = strides 4, 8, 16: ResNet layer1-3 / EfficientNet blocks.1,2,4)", nullable=True),
    Option("eps", "float", 0.01, "covariance ridge (+ eps I)", ge=0),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
    Option("augment", "bool", True, "RegAD's fixed support augmentation (22 views per shot)"),
    Option("n_features", "int", None, "random channel subset (none = all channels)", ge=1, nullable=True),
    Option("seed", "int", 0, "channel subset seed"),
    Option("score", "str", "max", "image score: map maximum or mean of the top share", choices=("max", "topk")),
    Option("topk", "float", 0.01, "top share of the map averaged with score=topk", gt=0, le=1),
    Option("fit_chunk", "int", 256, "grid positions fitted at a time (memory bound)", ge=1),
    Option("frame", "str", "registered",
           "with a --weights checkpoint: Gaussians in the registered frame (map warped back) or the input frame",
           choices=("registered", "input")),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)
#: RegAD's support augmentations (test.py): small rotations, translations (normalised coordinates)
ROTATIONS = tuple(k * math.pi / 16 for k in (-4, -3, -2, -1, 1, 2, 3, 4))
TRANSLATIONS = ((0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2), (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
N_AUGMENT = 1 + len(ROTATIONS) + len(TRANSLATIONS) + 1 + 1 + 3


def _affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_support(images: torch.Tensor) -> torch.Tensor:
    """RegAD's fixed support augmentation: ``[K, 3, S, S]`` -> ``[22 K, 3, S, S]``.

    Order: originals, 8 rotations (+-pi/16 .. +-pi/4), 8 translations (+-0.1 / +-0.2 of the
    half-side on both axes), horizontal flip, greyscale (ITU-R 601 luma, 3 channels), rot90 x
    1, 2, 3. Rotations/translations sample bilinearly with reflection padding. Deterministic:
    RegAD's only randomness is a shuffle of this list, which does not change the statistics.
    """
    x = images.float()
    out = [x]
    for a in ROTATIONS:
        c, s = math.cos(a), math.sin(a)
        out.append(_affine(x, torch.tensor([[c, -s, 0.0], [s, c, 0.0]])))
    for tx, ty in TRANSLATIONS:
        out.append(_affine(x, torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty]])))
    out.append(x.flip(-1))
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out.append(luma.expand(-1, 3, -1, -1))
    out.extend(torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3))
    return torch.cat(out)


def concat_nearest(feats: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer ``[N, h_l, w_l, C_l]`` -> ``[N, h, w, sum C_l]`` on the finest grid (nearest upsampling).

    Equals RegAD/PaDiM's ``embedding_concat`` (unfold/fold: each coarse cell copied to the fine
    cells it covers) when the grids divide each other.
    """
    h, w = max((f.shape[1], f.shape[2]) for f in feats)
    out = []
    for f in feats:
        if (f.shape[1], f.shape[2]) != (h, w):
            f = F.interpolate(f.permute(0, 3, 1, 2).float(), size=(h, w), mode="nearest").permute(0, 2, 3, 1)
        out.append(f.float())
    return torch.cat(out, dim=-1).contiguous()


@register_method("regad")
class RegAD(AnomalyMethod):
    """Per-position Gaussian of augmented support features; Mahalanobis map (training-free RegAD).

    Test-time procedure of RegAD: the K support images are augmented with RegAD's fixed list
    (``augment_support``: 22 K images); stage outputs of ``layers`` (strides 4, 8, 16) are
    nearest-upsampled to the finest grid and concatenated (``concat_nearest``); one Gaussian per
    grid position (mean, unbiased covariance ``+ eps I``, ``eps`` 0.01) is fitted on the 22 K
    feature vectors; a query's map is the Mahalanobis distance per position (Cholesky solves),
    bilinearly upsampled to the input side and blurred (``sigma`` 4); image score = map maximum
    (``score="max"``, RegAD) or ``topk_mean`` of the top ``topk`` share (``score="topk"``).

    Registration (``--weights CKPT`` = a checkpoint of ``fsiad train regad``, see
    ``regad_train``): the checkpoint's STNs (``regad_net.RegistrationNet``, meta-trained on
    other categories with the target held out) register the frozen stage features of supports
    and queries before the Gaussian. The checkpoint fixes encoder, layers and image size; its
    sha256 (recorded in ``CKPT.json``) and the encoder weights' sha256 are checked before
    anything is parsed. ``frame="registered"`` (default): every stage is warped by the final
    composite transform, the Gaussians and distances live in that registered frame, and the
    distance map is warped back to the input frame (inverse transform, border padding).
    ``frame="input"``: the paper's choice, each STN output warped back to the input frame
    before the Gaussian. Without a checkpoint the method is training-free (no STN);
    ``describe()["registration"]`` (in ``run.json``) says which.

    A checkpoint of ``fsiad train regad --tune-encoder`` holds the paper's STN-encoder
    (``regad_net.CascadeRegistration``): the CNN stages from the first feature layer on,
    fine-tuned, each STN's warped output feeding the next stage; the features are its layer
    outputs (``frame="input"``: each warped back by the inverse of its composite transform, as
    the paper; ``frame="registered"``: each taken to the last layer's frame, map warped back).

    Deviations from the paper:
      * Frozen encoder by default. RegAD fine-tunes its ResNet-18 together with the STNs and
        re-runs each stage on the previous stage's warped output; ``--tune-encoder`` does that
        (CNN encoders; the stem and the stages before the first feature layer stay frozen so
        their output can be cached; encoder batch norms keep their ImageNet statistics; encoder
        lr 1e-4 as the paper, STNs and heads at ``--lr``; ``--augment-pairs``, not in the paper,
        gives every training image its own random pose and exposure; ``--identity-prior W``,
        also not in the paper, adds W x the squared distance of the batch-mean transform from the
        identity to the loss). Without it fsiad's STNs sit on FROZEN
        stage outputs (any encoder: CNN stages or ViT patch grids): stage ``l`` is warped by the
        composite of the earlier stages' transforms before its STN predicts the next one.
        Because the encoder is not re-run on warped features, warping the STN outputs back
        (``frame="input"``, the paper) nearly undoes the registration; hence the default
        ``frame="registered"``.
      * STN parametrisation ``rotation`` (default of ``fsiad train regad``) instead of the
        paper's ``rotation_scale``: on frozen features the scale parameters collapse (measured
        on magnetic_tile: the composite transform zooms ~10x into the image centre, where
        query and supports look alike, and AUPRO falls from 73 to 18).
      * Meta-training on synthetic categories (``fewshot.data.synthetic``) plus whatever other
        real categories are at hand, frozen features encoded once, no augmentation of the
        training pairs; fixed schedule and last epoch (the paper's ``train.py`` keeps the epoch
        with the best TEST AUROC, #18: not done). One SGD optimiser over STN + projection +
        predictor (the paper's three SGD optimisers with the same settings are equivalent), lr
        0.01 instead of 1e-4 (fresh heads on frozen features; 1e-4 barely moves them in the
        CPU budget), 5 epochs instead of 50, K = 4 supports per query, batch 32.
      * Default encoder ``tf_efficientnet_lite0`` (offline package weights here; RegAD's
        ResNet-18 has none), layers ``blocks.1, blocks.2, blocks.4`` (24 + 40 + 112 = 176
        channels at strides 4/8/16, like ResNet ``layer1-3``). ``encoder="resnet18"`` selects the
        paper's backbone (``layer1-3``, 448 channels) when its weights are present.
      * Input: square resize to 224 (bicubic, no crop) then the encoder's own mean/std
        normalisation (RegAD feeds un-normalised [0, 1] tensors to its trained STN-ResNet).
      * Scores are not min-max normalised over the test set (a common affine map changes no
        AUROC; per-image outputs stay independent of the test batch).
      * ``n_features`` (default ``None`` = all channels): optional seeded random channel
        subset (PaDiM-style, for wide backbones); RegAD keeps all channels.
      * A checkpoint is used by ``score`` / ``eval`` / ``fit`` + ``predict`` (``--weights``): the
        method declares it as its own weights file (``describe()["weights_file"]``), which model
        folders record beside the encoder's weights, so ``fsiad predict --weights CKPT`` checks
        both sha256s before reading either file.

    Memory: the fit holds ``22 K * P * C`` float32 features (K = 4, P = 56^2, C = 176: 0.2 GB)
    and fits ``fit_chunk`` positions at a time; the state keeps mean ``[P, C]`` and the Cholesky
    factor ``[P, C, C]`` (0.39 GB for C = 176), not the covariance.

    Options: ``layers``, ``eps`` 0.01, ``sigma`` 4, ``augment`` True, ``n_features`` None,
    ``seed`` 0 (channel subset), ``score`` ``max`` | ``topk``, ``topk`` 0.01, ``fit_chunk`` 256,
    ``frame`` ``registered`` | ``input`` (with a checkpoint).
    """

    regime = "few-shot"
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        if self.opts["score"] not in ("max", "topk"):
            raise ValueError(f"regad: score must be 'max' or 'topk', got {self.opts['score']!r}")
        self.net, self.checkpoint = None, None
        self._theta: torch.Tensor | None = None
        self.channels: torch.Tensor | None = None
        self.stats: GaussianStats | None = None
        self.grid: tuple[int, int] | None = None
        if self.config.weights and is_checkpoint(self.config.weights):
            self._init_registered()
            return
        self._pre = Preprocess(self.config.image_size or 224, interpolation="bicubic")
        self.encoder = encoder_from_config(self.config, DEFAULT_ENCODER, self._pre.size)
        family = "resnet" if "layer1" in self.encoder.layers else "efficientnet"
        default = DEFAULT_LAYERS[family] if all(x in self.encoder.layers for x in DEFAULT_LAYERS[family]) else None
        self.layers = parse_layers(self.opts["layers"]) or default or list(self.encoder.default_layers)

    def _init_registered(self) -> None:
        """Load a meta-trained checkpoint (``fsiad train regad``): its encoder, layers, size and STNs."""
        from fsiad.fewshot.encoders.weights import expect_weights_checksum
        from fsiad.fewshot.methods.regad_train import CheckpointError, load_net, read_checkpoint

        path = self.config.weights
        meta, tensors, info = read_checkpoint(path)
        enc = meta.get("encoder") or {}
        name, checksum = enc.get("encoder"), enc.get("weights_checksum")
        if self.config.encoder and self.config.encoder != name:
            raise CheckpointError(f"{path}: trained on encoder {name}, but --encoder {self.config.encoder} was given")
        size = int(meta.get("image_size") or 224)
        if self.config.image_size and self.config.image_size != size:
            raise CheckpointError(f"{path}: trained at image size {size}, but --image-size {self.config.image_size}")
        layers = parse_layers(self.opts["layers"])
        if layers is not None and list(layers) != list(meta.get("layers", [])):
            raise CheckpointError(f"{path}: trained on layers {meta.get('layers')}, but -o layers={layers}")
        self._pre = Preprocess(size, interpolation="bicubic")
        cfg = dataclasses.replace(self.config, weights=None, encoder=name, image_size=size)
        with expect_weights_checksum(checksum, f"the RegAD checkpoint {path}"):
            self.encoder = encoder_from_config(cfg, DEFAULT_ENCODER, size)
        if self.encoder.weights.checksum != checksum:
            raise CheckpointError(f"{path}: trained on {name} weights sha256 {checksum}, but the encoder loaded "
                                  f"now has {self.encoder.weights.checksum} ({self.encoder.weights.source})")
        self.layers = list(meta["layers"])
        self.net = load_net(meta, tensors, self.encoder).to(self.encoder.device).eval()
        train = meta.get("training") or {}
        self.checkpoint = {"path": str(info.path), "sha256": info.checksum, "epochs": meta.get("epochs_done"),
                           "trained_on": sorted(train.get("categories") or {}), "held_out": train.get("held_out"),
                           "stn_mode": meta.get("stn_mode"),
                           "encoder_fine_tuned": bool(meta.get("cascade"))}

    @property
    def preprocess(self) -> Preprocess:
        return self._pre

    def _stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage ``[N, h_l, w_l, C_l]``: frozen encoder features, registered when a checkpoint is loaded.

        ``frame="input"`` (the paper): each STN output warped back to the input frame with the
        inverse of its composite transform. ``frame="registered"``: every stage warped by the
        final composite transform ``Theta_L`` (kept in ``self._theta`` to warp the map back).
        """
        cascade = self.net is not None and hasattr(self.net, "prefix")  # the paper's fine-tuned STN-encoder
        if not cascade:
            feats = self.encoder.patch_features(images, self.layers)
            if self.net is None:
                return feats
            x = [f.permute(0, 3, 1, 2).to(self.encoder.device) for f in feats]
        with torch.inference_mode():
            if cascade:
                with self.encoder.autocast():
                    reg, thetas = self.net.register(self.net.prefix(self.encoder.stem(images)))
                reg = [r.float() for r in reg]
            else:
                reg, thetas = self.net.register(x)
            if self.opts["frame"] == "input":
                out = [warp(r, invert(t)) for r, t in zip(reg, thetas, strict=True)]
                self._theta = None
            else:
                if cascade:  # layer l is in the frame of Theta_l: the remaining transforms take it to Theta_L
                    out = [warp(r, compose(invert(t), thetas[-1])) for r, t in zip(reg[:-1], thetas[:-1], strict=True)]
                else:  # frozen features: every stage warped once, from the original map, by Theta_L
                    out = [warp(f, thetas[-1]) for f in x[:-1]]
                out.append(reg[-1])
                self._theta = thetas[-1].cpu()
        return [o.permute(0, 2, 3, 1).float().cpu() for o in out]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` -> concatenated (optionally channel-subset) features ``[N, h*w, C]``."""
        f = concat_nearest(self._stage_features(images))
        self.grid = (f.shape[1], f.shape[2])
        if self.channels is None and self.opts["n_features"] is not None:
            d = min(int(self.opts["n_features"]), f.shape[-1])
            g = torch.Generator().manual_seed(int(self.opts["seed"]))
            self.channels = torch.randperm(f.shape[-1], generator=g)[:d].sort().values
        if self.channels is not None:
            f = f[..., self.channels]
        return f.reshape(f.shape[0], -1, f.shape[-1])

    def _fit(self, images: Images) -> None:
        self.channels, self.stats = None, None
        feats = []
        for batch in iter_batches(images, self.config.batch_size):
            aug = augment_support(batch) if self.opts["augment"] else batch
            feats.extend(self.features(b) for b in aug.split(self.config.batch_size))
        if not feats:
            raise ValueError("regad: needs at least 1 normal support image (few-shot method)")
        f = torch.cat(feats)
        if f.shape[0] < 2:
            raise ValueError("regad: needs at least 2 support feature sets (1 image with augment=True)")
        eps, step = float(self.opts["eps"]), max(1, int(self.opts["fit_chunk"]))
        means, chols = [], []
        for s in range(0, f.shape[1], step):
            st = fit_gaussian(f[:, s : s + step], eps)
            means.append(st.mean)
            chols.append(st.chol)
        # the covariance is not kept (only mean + Cholesky factor are used by ``mahalanobis``)
        self.stats = GaussianStats(torch.cat(means), torch.empty(0), torch.cat(chols))

    def distance(self, images: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each grid position to its support Gaussian ``[N, h, w]``."""
        if self.stats is None:
            raise RuntimeError("regad: call fit() with support images before scoring")
        f = self.features(images)
        d = mahalanobis(f, self.stats).reshape(f.shape[0], *self.grid)
        if self.net is not None and self._theta is not None:  # registered frame -> input frame
            d = warp(d[:, None], invert(self._theta), padding="border")[:, 0]
        return d

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        maps = upsample_blur(self.distance(images), self._pre.size, float(self.opts["sigma"]))
        if self.opts["score"] == "max":
            scores = maps.flatten(1).max(1).values
        else:
            scores = topk_mean(maps, float(self.opts["topk"]))
        return AnomalyResult(scores, maps)

    def describe(self) -> dict[str, Any]:
        own = {"weights_file": {"path": self.checkpoint["path"], "sha256": self.checkpoint["sha256"]}} \
            if self.checkpoint is not None else {}
        return {**super().describe(), **own, "encoder": self.encoder.describe(), "layers": self.layers,
                "registration": self._registration(), "n_augment": N_AUGMENT if self.opts["augment"] else 1,
                **{k: v for k, v in self.opts.items() if k != "layers" and (k != "frame" or self.net is not None)}}

    def _registration(self) -> Any:
        if self.checkpoint is None:
            return "none (training-free, no STN: no --weights RegAD checkpoint given)"
        return {**self.checkpoint, "frame": self.opts["frame"]}

    def get_state(self) -> dict[str, torch.Tensor]:
        if self.stats is None:
            return {}
        state = {"mean": self.stats.mean, "chol": self.stats.chol, "grid": torch.tensor(self.grid)}
        if self.channels is not None:
            state["channels"] = self.channels
        return state

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.channels, self.stats, self.grid = None, None, None
            return
        self.channels = state.get("channels")
        self.grid = tuple(int(v) for v in state["grid"])
        self.stats = GaussianStats(state["mean"], torch.empty(0), state["chol"])
