"""MAE ViT-B/16 *with its decoder* (``mae_vitb16_pretrain``: HF ``ViTMAEForPreTraining``).

This is the reconstruction model used by MAEDAY; ``mae_vitb16`` (``mae.py``) is the
encoder-only timm model used for patch features. Besides the ``Encoder`` interface (patch
tokens of the unmasked encoder), it offers ``reconstruct(images, noise, keep_ratio)``: one
masked reconstruction per row of ``noise`` (ViTMAE keeps the patches with the smallest noise).

Architecture: ``ViTMAEConfig()`` defaults = ``facebook/vit-mae-base`` (ViT-B/16 encoder, 8-block
512-wide decoder, 224 px), buildable offline; when the weights sit next to a ``config.json``
of ``model_type`` ``vit_mae`` (HF snapshot) that configuration is used instead (e.g. its
``norm_pix_loss``). Weights: HF ``model.safetensors`` / ``pytorch_model.bin`` of
``ViTMAEForPreTraining`` (strict load; transformers-4.x key names, as in the hub files, are
renamed by ``legacy_vitmae_keys``; the hub download also fetches ``config.json``). Input: bicubic square resize, ImageNet mean/std; other
sides than the config's (multiples of 16) interpolate the position embeddings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from fsiad.fewshot.encoders.base import BlockEncoder, WeightInfo
from fsiad.fewshot.encoders.checkpoint import load_strict, read_state_dict
from fsiad.fewshot.encoders.registry import register_encoder
from fsiad.fewshot.encoders.weights import HFFile, HubSources, WeightSpec
from fsiad.fewshot.preprocess import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_REPO = "facebook/vit-mae-base"


#: transformers 4.x ViTMAE key names -> the current module names (applied in order)
_LEGACY_RENAMES = (
    (re.compile(r"^vit\.encoder\.layer\."), "vit.layers."),
    (re.compile(r"attention\.attention\.(query|key|value)\."), None),
    (re.compile(r"attention\.output\.dense\."), "attention.o_proj."),
    (re.compile(r"intermediate\.dense\."), "mlp.fc1."),
    (re.compile(r"(?<!attention\.)output\.dense\."), "mlp.fc2."),
)


def legacy_vitmae_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers-4.x ``ViTMAEForPreTraining`` keys (``vit.encoder.layer.N.attention.attention.query``,
    ``intermediate.dense``, ...) to the current ones (``vit.layers.N.attention.q_proj``, ``mlp.fc1``, ...)."""
    if not any(".attention.attention." in k or k.startswith("vit.encoder.layer.") for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        for pattern, repl in _LEGACY_RENAMES:
            if repl is None:
                k = pattern.sub(lambda m: f"attention.{m[1][0]}_proj.", k)
            else:
                k = pattern.sub(repl, k)
        out[k] = v
    return out


class _HubWithConfig:
    """``facebook/vit-mae-base`` weights from the HF cache/hub, plus its ``config.json`` when downloading."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.files = HubSources(HFFile(repo, "model.safetensors"), HFFile(repo, "pytorch_model.bin"))

    def __repr__(self) -> str:
        return repr(self.files)

    def __call__(self, local_only: bool) -> str | None:
        got = self.files(local_only)
        if got and not local_only and not (Path(got).parent / "config.json").is_file():
            HFFile(self.repo, "config.json")(False)  # same snapshot folder: norm_pix_loss etc.
        return got


def _config_next_to(path: str | None) -> dict[str, Any]:
    """The ``config.json`` of a HF snapshot holding ``path`` (``{}`` when absent or not ViTMAE)."""
    if path is None:
        return {}
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cfg}: unreadable config.json ({exc})") from exc
    return data if data.get("model_type") == "vit_mae" else {}


class MAEPretrainEncoder(BlockEncoder):
    """ViTMAE encoder + decoder.

    Args:
        weights: ``WeightInfo`` (``path=None`` = random init, the caller seeds torch).
        arch: ``ViTMAEConfig`` overrides (e.g. a tiny model in tests); beat a snapshot config.
        image_size: working side (multiple of the patch size); default the config's.
    """

    metric = "cosine"

    def __init__(self, weights: WeightInfo, *, device: str = "cpu", precision: str = "fp32",
                 image_size: int | None = None, arch: dict[str, Any] | None = None,
                 name: str = "mae_vitb16_pretrain") -> None:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        fields = {k: v for k, v in _config_next_to(weights.path).items()
                  if k in ViTMAEConfig().to_dict() and not k.startswith("_")}
        config = ViTMAEConfig(**{**fields, **(arch or {})})
        self.patch_size = int(config.patch_size)
        size = image_size or int(config.image_size)
        if size % self.patch_size:
            raise ValueError(f"{name}: image_size must be a multiple of {self.patch_size}, got {size}")
        super().__init__(Preprocess(size=size, interpolation="bicubic"), IMAGENET_MEAN, IMAGENET_STD,
                         weights, device, precision)
        self.name = name
        self.model = ViTMAEForPreTraining(config)
        if weights.path is not None:
            load_strict(self.model, legacy_vitmae_keys(read_state_dict(weights.path)), weights.path)
        self.depth = int(config.num_hidden_layers)

    @property
    def config(self):
        return self.model.config

    @property
    def norm_pix_loss(self) -> bool:
        """True when the decoder predicts per-patch normalised pixels."""
        return bool(self.config.norm_pix_loss)

    def _check_side(self, images: torch.Tensor) -> tuple[int, int]:
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"{self.name}: input side must be a multiple of {self.patch_size}, got {h}x{w}")
        return h // self.patch_size, w // self.patch_size

    def _interp(self, images: torch.Tensor) -> bool:
        return tuple(images.shape[-2:]) != (self.config.image_size, self.config.image_size)

    # -- Encoder interface (no masking) --------------------------------------------------
    def _tokens(self, images: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
        vit = self.model.vit
        emb = vit.embeddings
        x = self.normalize(images)
        t = emb.patch_embeddings(x)
        pos = emb.interpolate_pos_encoding(t, *x.shape[-2:]) if self._interp(images) else emb.position_embeddings
        t = t + pos[:, 1:]
        t = torch.cat([(emb.cls_token + pos[:, :1]).expand(t.shape[0], -1, -1), t], dim=1)
        out, want = {}, set(blocks)
        for k, layer in enumerate(vit.layers[: max(want) + 1]):
            t = layer(t)
            if k in want:
                out[k] = t
        return out

    def _patch_features(self, images: torch.Tensor, layers: Sequence[int | str]) -> list[torch.Tensor]:
        gh, gw = self._check_side(images)
        blocks = [int(str(layer).removeprefix("raw")) for layer in layers]
        toks = self._tokens(images, sorted(set(blocks)))
        norm = self.model.vit.layernorm
        return [(toks[k] if isinstance(layer, str) else norm(toks[k]))[:, 1:].reshape(images.shape[0], gh, gw, -1)
                for layer, k in zip(layers, blocks, strict=True)]

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        self._check_side(images)
        last = int(self.config.num_hidden_layers) - 1
        with torch.inference_mode(), self.autocast():
            return self.model.vit.layernorm(self._tokens(images, [last])[last])[:, 0].float().cpu()

    # -- masked reconstruction ------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, 3, H, W]`` -> decoder targets ``[B, L, p*p*3]``.

        Layout of the last axis: ``(py, px, channel)`` as ViTMAE; per-patch normalised
        (mean 0, variance 1) when ``norm_pix_loss`` is on.
        """
        target = self.model.patchify(images, interpolate_pos_encoding=True)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor,
                    keep_ratio: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One masked reconstruction per image.

        Args:
            images: ``[B, 3, H, W]`` in ``[0, 1]``.
            noise: ``[B, L]``; the ``int(L * keep_ratio)`` patches with the smallest noise are kept.
            keep_ratio: share of visible patches.

        Returns:
            ``(pred, target, masked)``: ``[B, L, p*p*3]`` decoder output, ``[B, L, p*p*3]``
            target in the same space, ``[B, L]`` bool (True = patch was masked), float32 on CPU.
        """
        gh, gw = self._check_side(images)
        if noise.shape != (images.shape[0], gh * gw):
            raise ValueError(f"{self.name}: noise must be [{images.shape[0]}, {gh * gw}], got {tuple(noise.shape)}")
        x = self.normalize(images)
        old = self.config.mask_ratio
        self.config.mask_ratio = 1.0 - float(keep_ratio)
        try:
            with torch.inference_mode(), self.autocast():
                out = self.model(pixel_values=x, noise=noise.to(x.device), interpolate_pos_encoding=self._interp(images))
                target = self.patchify(x)
        finally:
            self.config.mask_ratio = old
        return out.logits.float().cpu(), target.float().cpu(), out.mask.cpu() > 0.5


def _make(info: WeightInfo, *, device: str = "cpu", precision: str = "fp32",
          image_size: int | None = None) -> MAEPretrainEncoder:
    return MAEPretrainEncoder(info, device=device, precision=precision, image_size=image_size)


register_encoder(
    "mae_vitb16_pretrain", _make,
    WeightSpec(key="mae_vitb16_pretrain", filename="mae_vitb16_pretrain.safetensors",
               hub=_HubWithConfig(HF_REPO),
               hub_name=f"hf:{HF_REPO}",
               howto=f"accepted files: a HF ViTMAEForPreTraining state dict ({HF_REPO} model.safetensors or "
                     "pytorch_model.bin) or its snapshot directory (its config.json is then used)"),
    "MAE ViT-B/16 with decoder (ImageNet, HF facebook/vit-mae-base; MAEDAY)")
