"""Shared helpers for the encoder tests (engineer A)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ONNX_REL = "models/vit_s_focus.onnx"
LITE0_REL = "models/efficientnet-lite0-57934424.pth"


def package_path(module: str, rel: str) -> Path:
    """Path of a packaged weight file, or skip the test with an explicit reason."""
    spec = importlib.util.find_spec(module)
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / rel
        if p.is_file():
            return p
    pytest.skip(f"package {module} with {rel} is not installed (scripts/setup.sh installs it)")


@pytest.fixture(name="fsiad_home")
def fsiad_home_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``FSIAD_HOME`` in ``tmp_path``, empty hub caches, every hub offline."""
    monkeypatch.setenv("FSIAD_HOME", str(tmp_path / "fsiad"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FSIAD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    try:  # the hub cache path is read from constants at call time: isolate it as well
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    except ImportError:
        pass
    return tmp_path / "fsiad"
