"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021)."""

from __future__ import annotations

from typing import Any

import torch
from fsiad.fewshot.encoders.registry import encoder_from_config
from fsiad.fewshot.methods.base import AnomalyMethod, Images, MethodConfig, iter_batches, register_method
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.ops.features import fuse_layers, parse_layers
from fsiad.fewshot.ops.gaussian import GaussianAccumulator, GaussianStats, mahalanobis
from fsiad.fewshot.ops.smoothing import upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult

DEFAULT_ENCODER = "tf_efficientnet_lite0"
#: default layers per encoder family (stride 4, 8, 16 stages, as ResNet layer1-3 in the paper)
DEFAULT_LAYERS = {"resnet": ["layer1", "layer2", "layer3"], "efficientnet": ["blocks.1", "blocks.2", "blocks.4"]}
OPTIONS = (
    Option("layers", "layers", None, "encoder layers (none = strides 4, 8, 16: ResNet layer1-3 / EfficientNet blocks.1,2,4)", nullable=True),
    Option("n_features", "int", 100, "random channel subset kept", ge=1),
    Option("eps", "float", 0.01, "covariance ridge (+ eps I)", ge=0),
    Option("seed", "int", None, "channel subset seed (none = 0)", nullable=True),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)


@register_method("padim")
class PaDiM(AnomalyMethod):
    """Per-position multivariate Gaussian of patch embeddings; Mahalanobis distance map.

    Pipeline (paper): stage outputs of ``layers`` (default: strides 4, 8 and 16, i.e. ResNet
    ``layer1-3`` / EfficientNet ``blocks.1, blocks.2, blocks.4``) upsampled to the finest grid
    and concatenated; a random subset of ``n_features`` channels (default 100, seeded by
    ``seed``, ``None`` = 0) is kept; for every grid position a Gaussian (mean, covariance
    ``+ eps I`` with ``eps`` 0.01) is fitted on the training images (streamed, float64 sums);
    the map is the Mahalanobis distance (Cholesky solves) upsampled bilinearly to the input side
    and blurred (``sigma`` 4); image score = maximum of the map (as the official code).

    Deviations: default encoder ``tf_efficientnet_lite0`` (offline weights; the paper uses
    ResNet-18 / WideResNet-50, selectable with ``encoder``) with 24 + 40 + 112 = 176 channels;
    upsampling of coarser layers is bilinear (the paper uses nearest).

    Options: ``layers``, ``n_features`` 100, ``eps`` 0.01, ``seed``, ``sigma`` 4.
    """

    regime = "full-data"
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        self.encoder = encoder_from_config(self.config, DEFAULT_ENCODER)
        family = "resnet" if "layer1" in self.encoder.layers else "efficientnet"
        default = DEFAULT_LAYERS[family] if all(x in self.encoder.layers for x in DEFAULT_LAYERS[family]) else None
        self.layers = parse_layers(self.opts["layers"]) or default or list(self.encoder.default_layers)
        self.channels: torch.Tensor | None = None
        self.stats: GaussianStats | None = None

    @property
    def preprocess(self) -> Preprocess:
        return self.encoder.preprocess

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` -> selected-channel embeddings ``[N, h*w, d]``."""
        f = fuse_layers(self.encoder.patch_features(images, self.layers))
        if self.channels is None:
            c = f.shape[-1]
            d = min(int(self.opts["n_features"]), c)
            g = torch.Generator().manual_seed(0 if self.opts["seed"] is None else int(self.opts["seed"]))
            self.channels = torch.randperm(c, generator=g)[:d].sort().values
        self.grid = (f.shape[1], f.shape[2])
        return f[..., self.channels].reshape(f.shape[0], -1, self.channels.numel())

    def _fit(self, images: Images) -> None:
        self.channels, self.stats = None, None
        acc = GaussianAccumulator()
        for batch in iter_batches(images, self.config.batch_size):
            acc.update(self.features(batch))
        if acc.n < 2:
            raise ValueError(f"padim: needs at least 2 normal training images, got {acc.n}")
        self.stats = acc.finalize(float(self.opts["eps"]))

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        f = self.features(images)
        dist = mahalanobis(f, self.stats).reshape(f.shape[0], *self.grid)
        maps = upsample_blur(dist, self.preprocess.size, float(self.opts["sigma"]))
        return AnomalyResult(maps.flatten(1).max(1).values, maps)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "encoder": self.encoder.describe(), "layers": self.layers,
                **{k: v for k, v in self.opts.items() if k != "layers"}}

    def get_state(self) -> dict[str, torch.Tensor]:
        if self.stats is None:
            return {}
        return {"channels": self.channels, "mean": self.stats.mean, "cov": self.stats.cov, "chol": self.stats.chol}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.channels, self.stats = None, None
            return
        self.channels = state["channels"]
        self.stats = GaussianStats(state["mean"], state["cov"], state["chol"])
