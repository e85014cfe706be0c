"""CLIP encoder fast paths: the CLS-only last block of pooled forwards (windows, crops)."""

from __future__ import annotations

import torch
from fsiad.fewshot.encoders.clip import _block_forward, _block_forward_cls

from tests.clip_helpers import fsiad_home_fixture, images, tiny_fixture  # noqa: F401 - fixtures


@torch.inference_mode()
def test_cls_only_last_block_equals_the_cls_row_of_the_full_block(tiny):
    x = torch.randn(5, 11, 64, generator=torch.Generator().manual_seed(0))
    block = tiny.visual.transformer.resblocks[-1]
    full = _block_forward(block, x)
    got = _block_forward_cls(block, x)
    assert got.shape == (5, 1, 64)
    torch.testing.assert_close(got[:, 0], full[:, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(got[:, 0], x[:, 0])  # the block did something


@torch.inference_mode()
def test_pooled_fast_path_equals_the_full_forward_and_open_clip(tiny):
    x = images(3, seed=4)
    assert tiny._cls_last  # plain blocks + CLS pooling: the fast path is what runs
    seq = tiny.embed_tokens(x)
    fast = tiny._encode_pooled(seq)
    full = tiny._encode_sequences(seq)[0]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny.image_embedding(x), tiny.model.encode_image(tiny.normalize(x)), atol=1e-5, rtol=0)
    windows = torch.tensor([[0, 1, 15, 16], [100, 101, 115, 116]])
    win_fast = tiny.window_embeddings(x, windows)
    tiny._cls_last = False
    torch.testing.assert_close(win_fast, tiny.window_embeddings(x, windows), atol=1e-5, rtol=0)
