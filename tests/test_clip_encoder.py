"""CLIP encoder: window (masked-token) encoding, patch features, text cache, weights."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch
from fsiad.fewshot.encoders import WeightsNotFoundError, create_encoder, encoder_names
from fsiad.fewshot.encoders.clip import CLIP_MODELS, create_clip_encoder, text_cache_dir

from tests.clip_helpers import (  # noqa: F401 - fixtures
    fsiad_home_fixture,
    images,
    register_tiny_arch,
    tiny_encoder,
    tiny_fixture,
)


def _reference_window(enc, image: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """One window, written from open_clip's modules: CLS + chosen tokens after pos-embedding."""
    v = enc.model.visual
    x = (image[None] - enc.mean) / enc.std
    x = v.conv1(x).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.view(1, 1, -1), x], 1) + v.positional_embedding
    seq = x[:, [0] + [i + 1 for i in idx]]
    y = v.ln_post(v.transformer(v.ln_pre(seq)))
    return (y[:, 0] @ v.proj)[0]


@torch.inference_mode()
def test_window_embeddings_match_one_window_at_a_time(tiny):
    x = images(2, seed=1)
    g = torch.Generator().manual_seed(3)
    # arbitrary (non-contiguous, unsorted) subsets of 5 patches, plus real 2x2 windows
    rand = torch.stack([torch.randperm(225, generator=g)[:5] for _ in range(7)])
    tiny.chunk_tokens = 6 * 3  # force several chunks (3 sequences of 6 tokens each)
    got = tiny.window_embeddings(x, rand)
    assert got.shape == (2, 7, tiny.embed_dim)
    for n in range(2):
        for w in range(rand.shape[0]):
            ref = _reference_window(tiny, x[n], rand[w].tolist())
            torch.testing.assert_close(got[n, w], ref, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_full_window_equals_plain_forward(tiny):
    x = images(2, seed=2)
    all_patches = torch.arange(225)[None]
    win = tiny.window_embeddings(x, all_patches)[:, 0]
    plain = tiny.model.encode_image(tiny.normalize(x))
    torch.testing.assert_close(win, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny.image_embedding(x), plain, atol=1e-5, rtol=0)
    # the block re-implementation (fast path) is what ran; open_clip's own blocks agree
    assert tiny._plain_blocks
    tiny._plain_blocks = False
    torch.testing.assert_close(tiny.window_embeddings(x, all_patches)[:, 0], win, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_patch_features_match_open_clip_intermediates(tiny):
    x = images(1, seed=4)
    feats = tiny.patch_features(x, [0, 1])
    out = tiny.model.visual.forward_intermediates(tiny.normalize(x), indices=[0, 1], output_fmt="NLC")
    for f, ref in zip(feats, out["image_intermediates"], strict=True):
        assert f.shape == (1, 15, 15, 64)
        torch.testing.assert_close(f.reshape(1, 225, 64), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown layers"):
        tiny.patch_features(x, [5])


def test_bad_inputs_are_one_line_errors(tiny):
    with pytest.raises(ValueError, match=r"images must be \[N, 3, 240, 240\]"):
        tiny.image_embedding(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match="window indices"):
        tiny.window_embeddings(images(1), torch.tensor([[0, 225]]))


def test_bf16_window_embeddings_close_to_fp32(fsiad_home, tmp_path):
    fp32 = tiny_encoder(tmp_path)
    bf16 = tiny_encoder(tmp_path, precision="bf16")
    x, w = images(1, seed=5), torch.tensor([[0, 1, 15, 16], [100, 101, 115, 116]])
    a, b = fp32.window_embeddings(x, w), bf16.window_embeddings(x, w)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99


def test_text_embedding_matches_open_clip_and_is_cached_on_disk(tiny, fsiad_home, tmp_path, monkeypatch):
    prompts = ["a photo of a flawless bottle.", "a photo of a damaged bottle."]
    emb = tiny.text_embedding(prompts)
    with torch.inference_mode():
        ref = tiny.model.encode_text(tiny.tokenizer(prompts))
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=0)
    assert len(list(text_cache_dir().glob("*.safetensors"))) == 1
    assert str(text_cache_dir()).startswith(str(fsiad_home))

    fresh = tiny_encoder(tmp_path)  # new process-equivalent: empty memory memo

    def boom(_prompts):
        raise AssertionError("should have been read from the disk cache")

    monkeypatch.setattr(fresh, "_encode_text", boom)
    torch.testing.assert_close(fresh.text_embedding(prompts), emb)
    # an edited prompt text is a different key: recomputed, new cache entry
    monkeypatch.undo()
    monkeypatch.setenv("FSIAD_HOME", str(fsiad_home))
    edited = fresh.text_embedding(["a photo of a flawless bottle!", prompts[1]])
    assert not torch.allclose(edited[0], emb[0])
    assert len(list(text_cache_dir().glob("*.safetensors"))) == 2


def test_registry_names_and_unavailable_weights_fail_fast(fsiad_home):
    names = set(encoder_names())
    assert set(CLIP_MODELS) <= names
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as err:
        create_encoder("clip_vitb16plus_240")
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "clip_vitb16plus_240" in msg and "laion400m_e31" in msg and "--weights" in msg
    with pytest.raises(WeightsNotFoundError, match="file not found"):
        create_encoder("clip_vitb16_openai", weights=str(fsiad_home / "missing.pt"))


def test_local_checkpoint_by_path(fsiad_home, tmp_path):
    arch = register_tiny_arch(tmp_path)
    src = tiny_encoder(tmp_path)
    with torch.no_grad():
        src.model.visual.proj.mul_(2.0)  # differ from the seeded random init
    ckpt = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), ckpt)
    enc = create_clip_encoder(arch, weights=ckpt)
    assert enc.weights.source == "file" and len(enc.weights.checksum) == 64
    x = images(1, seed=6)
    torch.testing.assert_close(enc.image_embedding(x), src.image_embedding(x))
    bad = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a checkpoint of open_clip"):
        create_clip_encoder(arch, weights=bad)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.pt: not a checkpoint of open_clip"):
        create_clip_encoder(arch, weights=text)


@pytest.mark.filterwarnings("ignore")
def test_torchscript_checkpoint_like_openai_files(fsiad_home, tmp_path):
    arch = register_tiny_arch(tmp_path)
    src = tiny_encoder(tmp_path)
    with torch.no_grad():
        src.model.visual.proj.mul_(-1.0)
    ckpt = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(src.model), ckpt)
    enc = create_clip_encoder(arch, weights=ckpt)
    x = images(1, seed=8)
    torch.testing.assert_close(enc.image_embedding(x), src.image_embedding(x))


def test_non_vit_tower_rejected(fsiad_home):
    assert "RN50" in open_clip.list_models()
    with pytest.raises(ValueError, match="VisionTransformer"):
        create_clip_encoder({"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
                             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                          "layers": 1}}, allow_random=True)


@pytest.mark.slow
@torch.inference_mode()
def test_real_architectures_random_init(fsiad_home):
    enc = create_encoder("clip_vitb16plus_240", allow_random=True)
    assert enc.grid == (15, 15) and enc.embed_dim == 640 and enc.preprocess.size == 240
    x = images(1, seed=7)
    windows = torch.tensor([[0, 1, 15, 16], [223, 224, 208, 209], [3, 77, 150, 200]])
    got = enc.window_embeddings(x, windows)
    for w in range(3):
        torch.testing.assert_close(got[0, w], _reference_window(enc, x[0], windows[w].tolist()), atol=1e-5, rtol=0)
    openai = create_encoder("clip_vitb16_openai", allow_random=True)
    assert type(openai.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert openai.grid == (14, 14) and openai.preprocess.size == 224
