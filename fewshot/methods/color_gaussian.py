"""A deliberately simple baseline: Gaussian of pixel colours.

It exists to drive the evaluation harness end to end and to give every table a floor.
"""

from __future__ import annotations

import torch
from fsiad.fewshot.methods.base import AnomalyMethod, Images, MethodConfig, iter_batches, register_method
from fsiad.fewshot.methods.options import Option
from fsiad.fewshot.ops import GaussianAccumulator, GaussianStats, gaussian_blur, mahalanobis, topk_mean
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult


@register_method("color_gaussian")
class ColorGaussian(AnomalyMethod):
    """Mahalanobis distance of each pixel's RGB colour to a Gaussian of normal colours.

    * few-shot (K > 0): one 3-D Gaussian of all pixels of the K references;
    * zero-shot (K = 0): each query image's own colour Gaussian (pixels unusual *within*
      their image score high).

    Map = distance blurred with sigma=4 px at ``image_size`` (default 256, bilinear resize);
    image score = mean of the top 1% of the map. Options: ``eps`` (covariance ridge,
    default 1e-4 in [0, 1] colour units), ``sigma`` (default 4).
    """

    regime = "few-shot"
    #: Without references it scores each image against its own colour statistics (K = 0).
    zero_shot_capable = True
    options = (
        Option("eps", "float", 1e-4, "covariance ridge in [0, 1] colour units", ge=0),
        Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
    )

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        opts = self.resolve_options()
        self.eps = float(opts["eps"])
        self.sigma = float(opts["sigma"])
        self._pre = Preprocess(self.config.image_size or 256, interpolation="bilinear")
        self.stats: GaussianStats | None = None

    @property
    def preprocess(self) -> Preprocess:
        return self._pre

    def _fit(self, images: Images) -> None:
        acc = GaussianAccumulator()
        for batch in iter_batches(images, self.config.batch_size):
            acc.update(batch.permute(0, 2, 3, 1).reshape(-1, 1, 3))
        self.stats = acc.finalize(self.eps) if acc.n else None

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        n, _, h, w = images.shape
        pixels = images.permute(2, 3, 0, 1).reshape(h * w, n, 3)  # samples x positions(=images) x C
        if self.stats is None:  # zero-shot: one Gaussian per query image
            acc = GaussianAccumulator()
            acc.update(pixels)
            dist = mahalanobis(pixels, acc.finalize(self.eps))  # [HW, N]
        else:
            dist = mahalanobis(pixels.reshape(-1, 1, 3), self.stats).reshape(h * w, n)
        maps = gaussian_blur(dist.T.reshape(n, h, w), self.sigma)
        return AnomalyResult(topk_mean(maps, 0.01), maps)

    def describe(self) -> dict:
        regime = "few-shot" if self.stats is not None else "zero-shot"
        return {**super().describe(), "regime": regime, "encoder": "none (raw RGB)", "weights_source": "none",
                "eps": self.eps, "sigma": self.sigma}

    def get_state(self) -> dict[str, torch.Tensor]:
        if self.stats is None:
            return {}
        return {"mean": self.stats.mean, "cov": self.stats.cov, "chol": self.stats.chol}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = GaussianStats(state["mean"], state["cov"], state["chol"]) if state else None
