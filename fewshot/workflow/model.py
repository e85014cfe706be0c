"""Self-describing model folders: ``fsiad fit`` writes one, ``fsiad predict`` loads it.

Layout::

    model.json   format, method name, config, encoder name + weights checksum, shots, seed,
                 reference files, threshold (value, rule, LOO scores), fsiad/torch versions
    method.json  ``AnomalyMethod.save`` metadata (config, describe)
    state.pt     the method's fitted state (memory bank / statistics / text embeddings)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from fsiad.fewshot.errors import FsiadError
from fsiad.fewshot.methods.base import AnomalyMethod
from fsiad.fewshot.workflow.thresholds import Calibration

FORMAT = "fsiad-model/1"


class ModelError(FsiadError, ValueError):
    """A model folder is missing, malformed, or does not match the weights it is loaded with."""


def encoder_identity(describe: dict[str, Any]) -> dict[str, Any]:
    """Encoder name and weights checksum from ``method.describe()`` (flat or nested ``encoder``)."""
    flat = {**describe, **describe["encoder"]} if isinstance(describe.get("encoder"), dict) else describe
    return {k: flat.get(k) for k in ("encoder", "weights_checksum", "weights_source", "weights_path")}


def save_model(method: AnomalyMethod, directory: str | Path, calibration: Calibration,
               info: dict[str, Any]) -> Path:
    """Write a fitted method and its workflow metadata (``info``: shots, seed, references, ...)."""
    import fsiad

    directory = Path(directory)
    method.save(directory)
    meta = {
        "format": FORMAT,
        "method": method.name,
        "encoder": encoder_identity(method.describe()),
        "threshold": calibration.to_dict(),
        "versions": {"fsiad": fsiad.__version__, "torch": torch.__version__},
        **info,
    }
    tmp = directory / "model.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(directory / "model.json")
    return directory


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    """``model.json`` of a model folder; raises ``ModelError`` naming the folder when invalid."""
    path = Path(directory) / "model.json"
    if not path.is_file():
        raise ModelError(f"{directory}: not an fsiad model folder (model.json missing; create one with `fsiad fit`)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported model format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_model(directory: str | Path, **overrides: Any) -> tuple[AnomalyMethod, dict[str, Any]]:
    """Rebuild the fitted method of a model folder and check its encoder weights.

    Args:
        directory: folder written by ``save_model``.
        overrides: ``MethodConfig`` fields to replace (``device``, ``batch_size``, ``weights``).

    Raises:
        ModelError: not a model folder, or the encoder weights loaded now differ from the
            ones the model was fitted with (sha256 checksum mismatch).
    """
    meta = read_model_meta(directory)
    try:
        method = AnomalyMethod.load(directory, **overrides)
    except FileNotFoundError as e:
        raise ModelError(str(e)) from None
    saved, now = meta.get("encoder") or {}, encoder_identity(method.describe())
    if saved.get("weights_checksum") != now.get("weights_checksum") or saved.get("encoder") != now.get("encoder"):
        raise ModelError(
            f"{directory}: encoder mismatch: the model was fitted with {saved.get('encoder')} weights "
            f"sha256 {saved.get('weights_checksum')}, but the weights loaded now ({now.get('weights_path')}) "
            f"are {now.get('encoder')} sha256 {now.get('weights_checksum')}; pass --weights with the original file"
        )
    return method, meta
