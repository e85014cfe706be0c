"""The CLIP text-embedding cache: ``$FSIAD_HOME/text-embeddings/<key>.safetensors``.

Entries are keyed by the model identity, the weights checksum and the exact prompt texts (so an
edited prompt file never reuses a stale entry); they hold one tensor and nothing else, so a
foreign or corrupt entry is simply recomputed. Writes are atomic (unique temporary name).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from fsiad.fewshot.encoders.weights import fsiad_home
from fsiad.fewshot.fileio import atomic_path


def text_cache_dir() -> Path:
    """On-disk text-embedding cache ``$FSIAD_HOME/text-embeddings``."""
    return fsiad_home() / "text-embeddings"


def text_cache_key(model_id: str, weights_checksum: str | None, prompts: Sequence[str]) -> str:
    """sha256 of the model identity, the weights checksum and the prompt texts."""
    payload = json.dumps({"model": model_id, "weights": weights_checksum, "prompts": list(prompts)})
    return hashlib.sha256(payload.encode()).hexdigest()


def read_text_cache(path: Path) -> torch.Tensor | None:
    """The tensor of a text-cache entry (safetensors, key ``embedding``), ``None`` if absent/unreadable."""
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        emb = load_file(str(path)).get("embedding")
    except Exception:  # noqa: BLE001 - corrupt or foreign entry: recompute and overwrite
        return None
    return emb.float() if isinstance(emb, torch.Tensor) and emb.ndim == 2 else None


def write_text_cache(t: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"embedding": t.detach().cpu().contiguous()}, str(tmp))
    except OSError:
        pass  # read-only cache location: embeddings stay correct, only not persisted
