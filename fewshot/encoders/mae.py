"""MAE ViT-B/16 encoder (``mae_vitb16``: timm ``vit_base_patch16_224.mae``; hub or local file only).

Layers: block indices ``0..11``; tokens of block ``k`` after the encoder's final LayerNorm
(same convention as ``dinov2``); ``"raw<k>"`` without it. Default: last block.
``image_embedding``: normalised CLS token. Input side: any multiple of 16 (timm's dynamic
image size interpolates the position embeddings); default 224, bicubic, ImageNet mean/std.
No PyPI package ships these weights: provide a file or download from the hub when online.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fsiad.fewshot.encoders.base import BlockEncoder, WeightInfo
from fsiad.fewshot.encoders.checkpoint import load_strict, read_state_dict
from fsiad.fewshot.encoders.registry import register_encoder
from fsiad.fewshot.encoders.weights import HFFile, WeightSpec
from fsiad.fewshot.preprocess import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmViTEncoder(BlockEncoder):
    """Patch tokens ``[N, H/16, W/16, C]`` of a timm VisionTransformer (no register tokens)."""

    patch_size = 16
    metric = "cosine"

    def __init__(self, name: str, arch: str, weights: WeightInfo, *, device: str = "cpu",
                 precision: str = "fp32", image_size: int | None = None) -> None:
        size = image_size or 224
        if size % self.patch_size:
            raise ValueError(f"{name}: image_size must be a multiple of {self.patch_size}, got {size}")
        super().__init__(Preprocess(size=size, interpolation="bicubic"), IMAGENET_MEAN, IMAGENET_STD,
                         weights, device, precision)
        import timm

        self.name = name
        self.vit = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)
        if weights.path is not None:
            sd = read_state_dict(weights.path)
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            load_strict(self.vit, sd, weights.path)
        self.depth = len(self.vit.blocks)

    def _tokens(self, images: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"{self.name}: input side must be a multiple of {self.patch_size}, got {h}x{w}")
        v, want, out = self.vit, set(blocks), {}
        x = v.norm_pre(v._pos_embed(v.patch_embed(self.normalize(images))))
        for k, blk in enumerate(v.blocks[: max(want) + 1]):
            x = blk(x)
            if k in want:
                out[k] = x
        return out

    def _patch_features(self, images: torch.Tensor, layers: Sequence[int | str]) -> list[torch.Tensor]:
        blocks = [int(str(layer).removeprefix("raw")) for layer in layers]
        toks = self._tokens(images, sorted(set(blocks)))
        n, gh, gw = images.shape[0], images.shape[-2] // 16, images.shape[-1] // 16
        skip = self.vit.num_prefix_tokens
        return [(toks[k] if isinstance(layer, str) else self.vit.norm(toks[k]))[:, skip:].reshape(n, gh, gw, -1)
                for layer, k in zip(layers, blocks, strict=True)]

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        last = len(self.vit.blocks) - 1
        with torch.inference_mode(), self.autocast():
            return self.vit.norm(self._tokens(images, [last])[last])[:, 0].float().cpu()


def _make(info: WeightInfo, *, device: str = "cpu", precision: str = "fp32",
          image_size: int | None = None) -> TimmViTEncoder:
    return TimmViTEncoder("mae_vitb16", "vit_base_patch16_224.mae", info, device=device, precision=precision,
                          image_size=image_size)


register_encoder(
    "mae_vitb16", _make,
    WeightSpec(key="mae_vitb16", filename="mae_vitb16.safetensors",
               hub=HFFile("timm/vit_base_patch16_224.mae", "model.safetensors"),
               hub_name="hf:timm/vit_base_patch16_224.mae",
               howto="accepted files: timm vit_base_patch16_224.mae state dict (.safetensors or .pth)"),
    "MAE ViT-B/16 (ImageNet self-supervised, timm)")
