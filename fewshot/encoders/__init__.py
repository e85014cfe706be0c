"""Shared encoder layer (CLIP, DINOv2, CNN backbones). See ``base.Encoder``.

Encoder modules are imported on demand: the catalogue (``fsiad.fewshot.registry``) says which
module defines an encoder and ``get_entry``/``create_encoder`` import only that one, so using
DINOv2 never imports open_clip or transformers. ``encoder_names()`` / ``load_all()`` import
every module (a module whose optional dependencies are missing is skipped; its import error
is kept in ``IMPORT_ERRORS``).
"""

from __future__ import annotations

import importlib
import pkgutil

from fsiad.fewshot.encoders.base import Encoder, WeightInfo
from fsiad.fewshot.encoders.registry import (
    create_encoder,
    encoder_from_config,
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


__all__ = ["Encoder", "WeightInfo", "WeightSpec", "WeightsNotFoundError", "resolve_weights",
           "register_encoder", "create_encoder", "encoder_from_config", "encoder_names", "encoder_status", "get_entry",
           "IMPORT_ERRORS"]
