"""MAEDAY zero-shot (Schwartz et al., "MAEDAY: MAE for few and zero shot AnomalY-Detection", 2022)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from fsiad.fewshot.encoders.registry import encoder_from_config
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods.base import AnomalyMethod, Images, MethodConfig, iter_batches, register_method
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.ops.pooling import topk_mean
from fsiad.fewshot.ops.smoothing import upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult

DEFAULT_ENCODER = "mae_vitb16_pretrain"
OPTIONS = (
    Option("n_masks", "int", 32, "random masks (reconstructions) per query image", ge=1),
    Option("keep_ratio", "float", 0.25, "share of visible patches per mask", gt=0, lt=1),
    Option("seed", "int", 0, "seed of the masks (shared by all images)"),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
    Option("topk", "float", 0.01, "image score = mean of this top share of the map", gt=0, le=1),
    Option("chunk", "int", 64, "masked copies per decoder call (memory bound)", ge=1),
    Option("arch", "dict", None, "ViTMAEConfig overrides for a random-init model (tests only, needs allow_random)",
           nullable=True),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)
#: ``reconstruct(images [B,3,H,W], noise [B,L], keep_ratio) -> (pred, target [B,L,p*p*c], masked [B,L] bool)``
Reconstructor = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def mask_noise(n_masks: int, n_patches: int, seed: int) -> torch.Tensor:
    """Seeded uniform noise ``[n_masks, n_patches]`` that defines the random masks (ViTMAE convention)."""
    if n_masks < 1:
        raise ValueError(f"maeday: n_masks must be >= 1, got {n_masks}")
    return torch.rand(n_masks, n_patches, generator=torch.Generator().manual_seed(int(seed)))


def masked_error_maps(images: torch.Tensor, reconstruct: Reconstructor, noise: torch.Tensor, keep_ratio: float,
                      patch: int, chunk: int = 64) -> torch.Tensor:
    """Per-pixel reconstruction error averaged over the masks that hid the pixel.

    Every image is reconstructed once per row of ``noise`` (the same masks for every image,
    so a score does not depend on the batch); the ``B * n_masks`` masked copies are sent
    through ``reconstruct`` ``chunk`` at a time. The error of a pixel is the channel mean of
    ``(pred - target)^2`` and is averaged only over the reconstructions in which its patch
    was masked; a patch that no mask hid (probability ``keep_ratio ** n_masks``) falls back to
    the mean error of its visible reconstructions.

    Args:
        images: ``[B, 3, H, W]`` in ``[0, 1]``, ``H`` and ``W`` multiples of ``patch``.
        reconstruct: see ``Reconstructor``.
        noise: ``[n_masks, L]`` with ``L = (H / patch) * (W / patch)``.
        keep_ratio: share of visible patches per mask.
        patch: patch side in pixels.
        chunk: masked copies per ``reconstruct`` call (bounds memory).

    Returns:
        ``[B, H, W]`` float32 error maps.
    """
    b, _, h, w = images.shape
    gh, gw = h // patch, w // patch
    n, length = noise.shape
    if length != gh * gw:
        raise ValueError(f"maeday: noise has {length} patches, images have {gh}x{gw}")
    err_masked = torch.zeros(b, length, patch * patch)
    err_visible = torch.zeros(b, length, patch * patch)
    count = torch.zeros(b, length)
    pairs = torch.arange(b * n)
    for s in range(0, b * n, max(1, int(chunk))):
        idx = pairs[s : s + chunk]
        img, row = idx // n, idx % n
        pred, target, masked = reconstruct(images[img], noise[row], keep_ratio)
        e = (pred.float() - target.float()).square().reshape(len(idx), length, patch * patch, -1).mean(-1)
        m = masked.float()
        err_masked.index_add_(0, img, e * m[..., None])
        err_visible.index_add_(0, img, e * (1.0 - m)[..., None])
        count.index_add_(0, img, m)
    hidden = count[..., None]
    avg = torch.where(hidden > 0, err_masked / hidden.clamp_min(1.0), err_visible / (n - hidden).clamp_min(1.0))
    return avg.reshape(b, gh, gw, patch, patch).permute(0, 1, 3, 2, 4).reshape(b, gh * patch, gw * patch)


@register_method("maeday")
class MAEDAY(AnomalyMethod):
    """Zero-shot anomaly maps from masked-autoencoder reconstruction errors.

    Per query image: ``n_masks`` (32) random masks each keeping ``keep_ratio`` (25 %) of the
    16x16 patches, seeded by ``seed`` and shared by all images (ViTMAE's ``noise`` argument);
    all masked copies of a batch go through the ImageNet-pretrained MAE (encoder + decoder,
    ``mae_vitb16_pretrain`` = HF ``facebook/vit-mae-base``) ``chunk`` copies per forward. The
    error of a pixel is the channel-mean squared difference between the decoder output and its
    target, averaged over the reconstructions in which the pixel was masked (visible patches
    are copies of the input, not predictions); see ``masked_error_maps``. The target space is
    the decoder's: ImageNet-normalised pixels when the checkpoint's ``norm_pix_loss`` is off
    (``facebook/vit-mae-base``'s setting and the built-in default), per-patch normalised pixels
    when it is on. Map: Gaussian blur ``sigma`` (4 px) at the working side (224, bicubic resize,
    no crop); image score = ``topk_mean`` of the map (top ``topk`` = 1 % of pixels).

    Zero-shot only: ``fit`` accepts no reference images. MAEDAY's few-shot variant (LoRA
    fine-tuning of the MAE on the K normal images, optionally ensembled with PatchCore) is not
    implemented and ``--shots K > 0`` / ``fit`` with images raise ``OptionError``. The paper's exact
    image-score rule and blur are not published in code; the choices above are fsiad's.

    Options: ``n_masks`` 32, ``keep_ratio`` 0.25, ``seed`` 0, ``sigma`` 4, ``topk`` 0.01,
    ``chunk`` 64, ``arch`` (``ViTMAEConfig`` overrides for a random-init model; tests only,
    needs ``allow_random``).
    """

    regime = "zero-shot"
    #: The few-shot variant (LoRA fine-tuning) is not implemented: K > 0 is refused up front.
    max_references = 0
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        if not 0.0 < float(self.opts["keep_ratio"]) < 1.0:
            raise ValueError(f"maeday: keep_ratio must be in (0, 1), got {self.opts['keep_ratio']}")
        self.encoder = self._build_encoder()
        if not hasattr(self.encoder, "reconstruct"):
            raise ValueError(f"maeday: encoder {self.encoder.name!r} has no decoder; use {DEFAULT_ENCODER}")

    def _build_encoder(self):
        if self.opts["arch"] is None:
            return encoder_from_config(self.config, DEFAULT_ENCODER)
        if not self.config.allow_random or self.config.weights is not None:
            raise ValueError("maeday: option 'arch' builds a random-init model and needs allow_random=True, no weights")
        from fsiad.fewshot.encoders.mae_pretrain import MAEPretrainEncoder
        from fsiad.fewshot.encoders.registry import RANDOM_SEED
        from fsiad.fewshot.encoders.weights import random_weights

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            enc = MAEPretrainEncoder(random_weights(RANDOM_SEED), device=self.config.device,
                                     precision=self.config.precision, image_size=self.config.image_size,
                                     arch=dict(self.opts["arch"]))
        return enc.to(self.config.device).eval().requires_grad_(False)

    @property
    def preprocess(self) -> Preprocess:
        return self.encoder.preprocess

    def _fit(self, images: Images) -> None:
        for batch in iter_batches(images, self.config.batch_size):
            if batch.shape[0]:
                raise OptionError(
                    "maeday: zero-shot only in fsiad (few-shot MAEDAY = LoRA fine-tuning on the normal images is "
                    "not implemented); fit() without reference images (shots 0)")

    def noise(self, n_patches: int) -> torch.Tensor:
        """The seeded mask noise ``[n_masks, n_patches]`` used for every query image."""
        return mask_noise(int(self.opts["n_masks"]), n_patches, int(self.opts["seed"]))

    def error_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unblurred) masked reconstruction error ``[N, S, S]``."""
        p = self.encoder.patch_size
        noise = self.noise((images.shape[-2] // p) * (images.shape[-1] // p))
        return masked_error_maps(images, self.encoder.reconstruct, noise, float(self.opts["keep_ratio"]), p,
                                 int(self.opts["chunk"]))

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        maps = upsample_blur(self.error_maps(images), self.preprocess.size, float(self.opts["sigma"]))
        return AnomalyResult(topk_mean(maps, float(self.opts["topk"])), maps)

    def describe(self) -> dict[str, Any]:
        space = "per-patch normalised pixels" if self.encoder.norm_pix_loss else "ImageNet-normalised pixels"
        return {**super().describe(), "encoder": self.encoder.describe(), "error_space": space,
                **{k: v for k, v in self.opts.items() if k != "arch"}}
