"""Encoder registry: names -> (factory, weight spec, description).

An encoder module registers itself at import time (no weight lookup, no network)::

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
    """Sorted names of every registered encoder."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> EncoderEntry:
    """The registry entry of ``name``; unknown names raise a ``ValueError`` listing the known ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


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


__all__ = ["EncoderEntry", "register_encoder", "encoder_names", "get_entry", "create_encoder",
           "encoder_status", "WeightInfo", "RANDOM_SEED"]
