"""Shared fixtures for the CLIP / WinCLIP / prompts tests: a tiny random-init open_clip model.

The tiny architecture keeps the real WinCLIP geometry (240 px, patch 16 -> 15x15 grid) with a
2-block, 64-wide tower so that loop-based references stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from fsiad.fewshot.encoders.clip import CLIPEncoder, create_clip_encoder

TINY_ARCH = "fsiad-tiny-clip-test"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_arch(tmp_dir: Path) -> str:
    """Make ``TINY_ARCH`` known to open_clip (idempotent) and return its name."""
    if TINY_ARCH not in open_clip.list_models():
        path = Path(tmp_dir) / f"{TINY_ARCH}.json"
        path.write_text(json.dumps(TINY_CFG))
        open_clip.add_model_config(path)
    return TINY_ARCH


def tiny_encoder(tmp_dir: Path, **kw) -> CLIPEncoder:
    """Random-init tiny CLIP encoder (fixed seed: identical weights on every call)."""
    return create_clip_encoder(register_tiny_arch(tmp_dir), allow_random=True, **kw)


@pytest.fixture(name="fsiad_home")
def fsiad_home_fixture(tmp_path, monkeypatch) -> Path:
    """Isolated ``$FSIAD_HOME`` (text-embedding cache, weights cache)."""
    home = tmp_path / "fsiad-home"
    monkeypatch.setenv("FSIAD_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(name="tiny")
def tiny_fixture(fsiad_home, tmp_path_factory) -> CLIPEncoder:
    return tiny_encoder(tmp_path_factory.mktemp("arch"))


def images(n: int, seed: int = 0, side: int = 240) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g)
