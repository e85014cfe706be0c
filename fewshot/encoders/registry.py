"""Encoder registry: names -> (factory, weight spec, description).

Names are found through the catalogue (``fsiad.fewshot.registry``, kind ``encoder``): it says
which module defines an encoder, and ``get_entry`` imports that module on first use (plugins
add encoders with ``fsiad.plugins`` entry points named ``encoder.<name>``). An encoder module
registers itself at import time (no weight lookup, no network)::

    register_encoder("dinov2_vits14", _make_vits14, spec, "DINOv2 ViT-S/14 (Meta)")

A factory has the signature
``factory(info: WeightInfo, *, device: str, precision: str, image_size: int | None) -> Encoder``;
``info.source == "random"`` (``info.path is None``) means: build a randomly initialised model
(the registry seeds torch around the call, so random encoders are deterministic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fsiad.fewshot.encoders.base import Encoder, WeightInfo
from fsiad.fewshot.encoders.weights import (
    WeightsNotFoundError,
    WeightSpec,
    find_weights,
    random_weights,
    resolve_weights,
    sha256_file,
)

RANDOM_SEED = 0
EncoderFactory = Callable[..., Encoder]


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    factory: EncoderFactory
    spec: WeightSpec
    description: str


_REGISTRY: dict[str, EncoderEntry] = {}


def register_encoder(name: str, factory: EncoderFactory, spec: WeightSpec, description: str = "") -> None:
    """Register (or replace) an encoder under ``name``."""
    _REGISTRY[name] = EncoderEntry(name, factory, spec, description)


def encoder_names() -> list[str]:
    """Sorted names of every encoder: the catalogue's (minus those whose module failed to
    import, see ``fsiad.fewshot.encoders.IMPORT_ERRORS``) and those registered at run time."""
    from fsiad.fewshot import registry

    _ensure_loaded()
    failed = _failed_modules()
    listed = {n for n, e in registry.entries("encoder").items() if e.module not in failed}
    return sorted(listed | set(_REGISTRY))


def get_entry(name: str) -> EncoderEntry:
    """The registry entry of ``name``, importing its module (from the catalogue) if needed.

    Raises:
        ValueError: unknown name (listing the known ones), or its module cannot be imported.
    """
    from fsiad.fewshot import registry

    if name not in _REGISTRY:
        entry = registry.entry("encoder", name)
        if entry is not None:
            try:
                registry.load("encoder", name)
            except ImportError as exc:
                raise ValueError(f"encoder {name!r} cannot be loaded from {entry.module}: "
                                 f"{type(exc).__name__}: {exc}") from None
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(encoder_names())}")
    return _REGISTRY[name]


def _failed_modules() -> set[str]:
    import sys

    errors = getattr(sys.modules.get("fsiad.fewshot.encoders"), "IMPORT_ERRORS", {})
    return {f"fsiad.fewshot.encoders.{m}" for m in errors}


def create_encoder(name: str, *, weights: str | Path | None = None, device: str = "cpu",
                   precision: str = "fp32", image_size: int | None = None,
                   allow_random: bool = False) -> Encoder:
    """Build a frozen encoder (eval mode, ``requires_grad=False``) on ``device``.

    Args:
        name: registry name (see ``encoder_names()``).
        weights: explicit weight file/directory; beats every other source.
        device: ``cpu`` | ``cuda`` | ``cuda:K``.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast).
        image_size: input side override (``None`` = the encoder's default).
        allow_random: use a random initialisation with a fixed seed (tests only; never a
            fallback: with ``False`` missing weights raise ``WeightsNotFoundError``).
    """
    entry = get_entry(name)
    if allow_random and weights is None:
        info = random_weights(RANDOM_SEED)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            enc = entry.factory(info, device=device, precision=precision, image_size=image_size)
    else:
        info = resolve_weights(entry.spec, weights)
        enc = entry.factory(info, device=device, precision=precision, image_size=image_size)
    return enc.to(device).eval().requires_grad_(False)


def encoder_from_config(config: Any, default: str, default_size: int | None = None) -> Encoder:
    """THE way a method builds its encoder from a ``MethodConfig``: ``config.encoder`` (or the
    method's ``default``) with the config's weights, device, precision and random-init flag;
    ``config.image_size`` (or ``default_size``) sets the working side. Names ``clip:ARCH/TAG``
    build any open_clip model (``create_clip_encoder``)."""
    name = config.encoder or default
    kw = {"weights": config.weights, "device": config.device, "precision": config.precision,
          "image_size": config.image_size or default_size, "allow_random": config.allow_random}
    if name.startswith("clip:"):
        from fsiad.fewshot.encoders.clip import create_clip_encoder

        arch, _, tag = name[5:].partition("/")
        return create_clip_encoder(arch, tag or None, **kw)
    return create_encoder(name, **kw)


def encoder_status(name: str) -> dict:
    """Availability of ``name``'s weights here, without loading the model or going online.

    Returns:
        ``{"name", "description", "available", "source", "path", "checksum", "howto"}``;
        ``howto`` is the resolver's message when unavailable (else ``""``).
    """
    entry = get_entry(name)
    row = {"name": name, "description": entry.description, "available": False,
           "source": None, "path": None, "checksum": None, "howto": ""}
    try:
        found = find_weights(entry.spec, allow_download=False, convert=False)
    except WeightsNotFoundError as exc:
        found, row["howto"] = None, str(exc)
    if found is None:
        row["howto"] = row["howto"] or str(WeightsNotFoundError(entry.spec, "not found here"))
        return row
    source, path = found
    row.update(available=True, source=source, path=str(path), checksum=sha256_file(path))
    return row


_loaded = False


def _ensure_loaded() -> None:
    """Import every module of ``fewshot.encoders`` once so they register themselves."""
    global _loaded
    if not _loaded:
        _loaded = True
        import fsiad.fewshot.encoders as pkg

        pkg.load_all()


__all__ = ["EncoderEntry", "register_encoder", "encoder_names", "get_entry", "create_encoder", "encoder_from_config",
           "encoder_status", "WeightInfo", "RANDOM_SEED"]
