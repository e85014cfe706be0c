"""Shared encoder layer (CLIP, DINOv2, CNN backbones). See ``base.Encoder``.

Every module of this package is imported on first use of the package (``pkgutil``), so an
encoder module only has to call ``register_encoder`` at import time. A module whose optional
dependencies are missing is skipped (its import error is kept in ``IMPORT_ERRORS``).
"""

from __future__ import annotations

import importlib
import pkgutil

from fsiad.fewshot.encoders.base import Encoder, WeightInfo
from fsiad.fewshot.encoders.registry import (
    create_encoder,
    encoder_names,
    encoder_status,
    get_entry,
    register_encoder,
)
from fsiad.fewshot.encoders.weights import WeightsNotFoundError, WeightSpec, resolve_weights

IMPORT_ERRORS: dict[str, str] = {}
_CORE = {"base", "cache", "registry", "weights"}


def load_all() -> None:
    """Import every encoder module of the package (idempotent)."""
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name in _CORE or mod.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{mod.name}")
        except ImportError as exc:  # optional dependency missing: report, do not break the package
            IMPORT_ERRORS[mod.name] = f"{type(exc).__name__}: {exc}"


load_all()

__all__ = ["Encoder", "WeightInfo", "WeightSpec", "WeightsNotFoundError", "resolve_weights",
           "register_encoder", "create_encoder", "encoder_names", "encoder_status", "get_entry",
           "IMPORT_ERRORS"]
