"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022)."""

from __future__ import annotations

from typing import Any

import torch
from fsiad.fewshot.encoders.registry import encoder_from_config
from fsiad.fewshot.methods.base import AnomalyMethod, Images, MethodConfig, iter_batches, register_method
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.ops.coreset import approximate_greedy_coreset
from fsiad.fewshot.ops.features import fuse_layers, parse_layers
from fsiad.fewshot.ops.knn import knn_search
from fsiad.fewshot.ops.smoothing import upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult

DEFAULT_ENCODER = "tf_efficientnet_lite0"
OPTIONS = (
    Option("layers", "layers", None, "encoder layers (none = the encoder's two mid-level stages, stride 8 and 16)", nullable=True),
    Option("patch_size", "int", 3, "local aggregation neighbourhood (patch_size x patch_size, stride 1)", ge=1),
    Option("coreset_ratio", "float", 0.1, "share of training patches kept by the greedy coreset (1 = all)",
           gt=0, le=1),
    Option("proj_dim", "int", 128, "random projection dimension for the coreset selection", ge=1),
    Option("num_starts", "int", 10, "coreset start candidates", ge=1),
    Option("seed", "int", None, "coreset seed (none = 0)", nullable=True),
    Option("reweight_b", "int", 9, "neighbours of the image-score reweighting (1 = plain max)", ge=1),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)


def reweighted_scores(
    query_best: torch.Tensor, nn_dist: torch.Tensor, nn_idx: torch.Tensor, memory: torch.Tensor, b: int
) -> torch.Tensor:
    """PatchCore's image score (paper eq. 7) for each image's most anomalous patch.

    ``s = (1 - exp(d*) / sum_{m in N_b(m*)} exp(||m_test* - m||)) * d*`` where ``m_test*`` is
    the patch with the largest nearest-neighbour distance ``d*``, ``m*`` its nearest memory
    entry and ``N_b(m*)`` the ``b`` nearest memory entries of ``m*`` (``m*`` included).
    Computed stably as ``(1 - softmax(distances)[m*]) * d*``.

    Args:
        query_best: ``[N, C]`` features of each image's most anomalous patch.
        nn_dist: ``[N]`` their nearest-neighbour distance ``d*``.
        nn_idx: ``[N]`` index of ``m*`` in ``memory``.
        memory: ``[M, C]`` memory bank.
        b: neighbourhood size (``<= 1`` returns ``d*`` unchanged).

    Returns:
        ``[N]`` image scores.
    """
    b = min(int(b), memory.shape[0])
    if b <= 1:
        return nn_dist
    _, nb = knn_search(memory[nn_idx], memory, k=b, metric="l2")  # [N, b], normally m* first
    d = (memory[nb] - query_best[:, None, :]).norm(dim=-1)  # [N, b]
    is_star = nb == nn_idx[:, None]
    is_star[:, -1] |= ~is_star.any(1)  # m* not returned (duplicates): drop the b-th neighbour instead
    d = d.masked_fill(is_star, float("-inf"))  # m* enters once, with its exact distance d*
    logits = torch.cat([nn_dist[:, None], d], 1)
    weight = 1.0 - torch.softmax(logits, dim=1)[:, 0]
    return weight * nn_dist


@register_method("patchcore")
class PatchCore(AnomalyMethod):
    """Full-data PatchCore: coreset memory of locally aggregated mid-level patch features.

    Pipeline (paper / official code):
        * features of ``layers`` (default: the encoder's two mid-level stages, stride 8 and
          16, the analogue of WideResNet-50 ``layer2`` + ``layer3``), each averaged over its
          ``patch_size`` x ``patch_size`` neighbourhood (3, stride 1), coarser layer
          upsampled bilinearly to the finer grid, concatenated;
        * memory bank = all training patches, reduced by the approximate greedy coreset
          (``coreset_ratio`` 0.1, random projection to ``proj_dim`` 128, ``num_starts`` 10,
          see ``fewshot.ops.coreset``); fit streams batches, only the features are kept;
        * patch score = Euclidean distance to the nearest memory entry; map = bilinear
          upsampling to the input side + Gaussian blur (``sigma`` 4);
        * image score = paper eq. 7: the maximum patch score ``s*`` reweighted by
          ``1 - exp(d*) / sum_{N_b(m*)} exp(||m_test* - m||)`` with ``reweight_b`` = 9
          neighbours of the nearest memory entry ``m*`` (``reweight_b = 1`` = plain max).

    Deviations: the default encoder is ``tf_efficientnet_lite0`` (input resize 256, centre crop
    224; layers ``blocks.2`` + ``blocks.4``, 40 + 112 channels) because its weights ship
    offline; ``wide_resnet50_2`` (the paper's) is selected with ``encoder``. The official code's
    adaptive average pooling of each layer's features to 1024 dimensions is not used (the
    concatenated channels are kept as is; for WideResNet-50 that is 1536-d). The official code
    scores images with the plain max (its ``anomaly_scorer_num_nn=1``); the paper's reweighting
    is the default here. Aggregation at borders averages valid neighbours only.

    Measured (magnetic_tile, all 761 training images, 2 CPU cores, defaults): the whole
    ``fsiad eval`` takes 129 s on a quiet machine (median of 3: 129 / 131 / 129 s; fit 65 s,
    predict 57 s; 215 s under load), 596,624 patches -> 59,663 by the lazy exact greedy
    coreset (almost all of it the distance-update passes, compute-bound), kNN of the 583 test
    images on faiss, peak RSS 2.4 GB; image AUROC 0.960, pixel AUROC 0.857, AUPRO 0.777.

    Options: ``layers``, ``patch_size`` 3, ``coreset_ratio`` 0.1 (1.0 = no coreset),
    ``proj_dim`` 128, ``num_starts`` 10, ``seed`` (``None`` = 0), ``reweight_b`` 9, ``sigma`` 4.
    """

    regime = "full-data"
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        self.encoder = encoder_from_config(self.config, DEFAULT_ENCODER)
        self.layers = parse_layers(self.opts["layers"]) or list(self.encoder.default_layers)
        self.memory: torch.Tensor | None = None
        self.n_train_patches = 0

    @property
    def preprocess(self) -> Preprocess:
        return self.encoder.preprocess

    @property
    def _device(self) -> torch.device:
        return torch.device(getattr(self.encoder, "device", "cpu"))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` -> locally aggregated, fused patch features ``[N, h, w, C]``."""
        return fuse_layers(self.encoder.patch_features(images, self.layers), r=int(self.opts["patch_size"]))

    def _fit(self, images: Images) -> None:
        bank = []
        for batch in iter_batches(images, self.config.batch_size):
            f = self.features(batch)
            bank.append(f.reshape(-1, f.shape[-1]))
        if not bank:
            raise ValueError("patchcore: needs normal training images (use --shots all or K >= 1)")
        bank_t = torch.cat(bank).to(self._device)  # coreset and kNN run where the encoder runs (GPU too)
        del bank
        self.n_train_patches = int(bank_t.shape[0])
        ratio = float(self.opts["coreset_ratio"])
        if ratio < 1.0:
            seed = 0 if self.opts["seed"] is None else int(self.opts["seed"])
            idx = approximate_greedy_coreset(bank_t, ratio=ratio, proj_dim=int(self.opts["proj_dim"]),
                                             num_starts=int(self.opts["num_starts"]), seed=seed)
            bank_t = bank_t[idx]
        self.memory = bank_t.contiguous()

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        f = self.features(images).to(self._device)
        n, h, w, c = f.shape
        flat = f.reshape(-1, c)
        d, i = knn_search(flat, self.memory.to(self._device), k=1, metric="l2")
        d, i = d.to(flat.device), i.to(flat.device)
        grid = d[:, 0].reshape(n, h * w)
        best = grid.argmax(1)
        rows = torch.arange(n, device=flat.device) * h * w + best
        scores = reweighted_scores(flat[rows], grid.max(1).values, i[rows, 0], self.memory,
                                   int(self.opts["reweight_b"]))
        maps = upsample_blur(grid.reshape(n, h, w), self.preprocess.size, float(self.opts["sigma"]))
        return AnomalyResult(scores.cpu(), maps.cpu())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "encoder": self.encoder.describe(), "layers": self.layers,
                "memory_size": None if self.memory is None else int(self.memory.shape[0]),
                "train_patches": self.n_train_patches,
                **{k: v for k, v in self.opts.items() if k != "layers"}}

    def get_state(self) -> dict[str, torch.Tensor]:
        return {} if self.memory is None else {"memory": self.memory.cpu()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.memory = state.get("memory")
