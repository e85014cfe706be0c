"""The method protocol every fsiad method implements, and the name registry.

Vocabulary follows scikit-learn: ``fit`` on normal references (zero images allowed for
zero-shot methods), ``predict`` on query images. Images are float tensors
``[N, 3, S, S]`` in ``[0, 1]`` produced by ``method.preprocess``; both ``fit`` and
``predict`` also accept an iterable of such batches (memory-bounded full-data fits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.errors import FsiadError
from fsiad.fewshot.methods.options import Option, resolve, untyped
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult

Images = torch.Tensor | Iterable[torch.Tensor]
REGIMES = ("zero-shot", "zero-shot-transductive", "few-shot", "full-data")


@dataclass
class MethodConfig:
    """Options common to all methods (method-specific ones go in ``options``).

    Attributes:
        encoder: encoder name (``None`` = the method's default).
        weights: explicit weight file for the encoder (resolver's first source).
        device: ``auto`` (default: CUDA, else MPS, else CPU), ``cpu``, ``cuda[:i]`` or ``mps``;
            resolved on construction (an unavailable device raises ``OptionError``).
        precision: ``auto`` (default: bf16 on CUDA, else fp32), ``fp32``, ``bf16`` or ``fp16``
            (autocast for the encoder forward).
        image_size: working side (``None`` = the method/encoder default).
        class_name: object name used by text prompts.
        prompts: prompt file (YAML) for prompt-based methods.
        allow_random: random-init encoder weights (tests only; never a silent fallback).
        batch_size: images per encoder forward.
        options: method-specific hyperparameters.
    """

    encoder: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    image_size: int | None = None
    class_name: str = "object"
    prompts: str | None = None
    allow_random: bool = False
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "auto" (and explicit devices) resolve once, here: every encoder and method sees a
        # concrete device that exists on this machine (fsiad.fewshot.device).
        from fsiad.fewshot.device import resolve_device, resolve_precision

        self.device = resolve_device(self.device)
        self.precision = resolve_precision(self.precision, self.device)


def iter_batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield ``[B, 3, S, S]`` batches from a tensor or an iterable of tensors."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        for i in range(0, images.shape[0], batch_size):
            yield images[i : i + batch_size]
    else:
        for batch in images:
            yield from iter_batches(batch, batch_size)


class AnomalyMethod(ABC):
    """Base class: subclasses implement ``_fit`` and ``_predict_batch`` (or override ``predict``).

    Subclasses that keep state needed after ``fit`` implement ``get_state`` / ``set_state``
    (tensors only) so that ``save`` / ``load`` round-trip exactly.
    """

    name: ClassVar[str] = ""
    regime: ClassVar[str] = "few-shot"
    #: True when predict must see the whole unlabeled query set at once (MuSc-style).
    transductive: ClassVar[bool] = False
    #: the method's ``-o KEY=VALUE`` options (see ``fewshot.methods.options``); ``None`` = undeclared
    options: ClassVar[tuple[Option, ...] | None] = None

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config or MethodConfig()
        self.fitted = False

    def resolve_options(self, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every declared option's value: ``config.options`` checked and typed against ``options``.

        ``defaults`` (legacy, for methods without a declaration): untyped ``{name: default}``;
        only unknown keys are rejected then.

        Raises:
            OptionError: unknown key (``-o KEY``) or bad value (``-o KEY=VALUE``), one line.
        """
        decl = type(self).options
        if decl is None:
            if defaults is None:
                raise TypeError(f"{type(self).__name__} declares no options; pass defaults or set options")
            decl = untyped(defaults)
        return resolve(decl, self.config.options, self.name or type(self).__name__)

    # -- contract -----------------------------------------------------------------------
    @property
    @abstractmethod
    def preprocess(self) -> Preprocess:
        """Geometry of the tensors this method expects (and of its maps)."""

    @abstractmethod
    def _fit(self, images: Images) -> None:
        """Build the normal model from reference images (possibly none)."""

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        raise NotImplementedError

    @property
    def lighting_invariant(self) -> bool:
        """Whether small image-wide lighting changes (gain, gamma) of a normal part are normal to
        this method as fitted. The threshold calibration adds such views of the references to the
        normal samples only when they are; a method that scores image-wide shifts as defects
        (knn's global term) says ``False``."""
        return True

    def defect_region(self, image: torch.Tensor) -> torch.Tensor | None:
        """Where synthetic defects belong on ``image`` ``[3, H, W]`` (float): a bool ``[H, W]``
        mask, or ``None`` (the default: anywhere). A method that has found the part on a plain
        background (knn's alignment) plants them on the part, as real defects are."""
        return None

    @property
    def normal_log_spread(self) -> float | None:
        """Typical log-scale (sigma of log scores) of normal image scores across parts, for
        methods whose scores have a part-independent meaning; the threshold calibration pools
        the scale it measures on a few references with it (``thresholds.tail_fit``). ``None``
        (the default): no such prior; the measured scale alone."""
        return None

    def prepare(self, samples: Sequence[Sample]) -> Any:
        """Load and preprocess dataset samples into what ``fit`` / ``predict`` take.

        Default: RGB images through ``self.preprocess`` -> ``[N, 3, S, S]``. Multi-modal
        methods (RGB-D) override this and accept their own batch type in fit/predict.
        """
        from fsiad.fewshot.data.io import read_image

        return self.preprocess.images([read_image(s.path) for s in samples])

    def fit(self, images: Images | None = None) -> AnomalyMethod:
        """Fit on normal reference images ``[K, 3, S, S]`` (``None`` / empty = zero-shot)."""
        if images is None:
            images = torch.empty(0, 3, self.preprocess.size, self.preprocess.size)
        self._fit(images)
        self.fitted = True
        return self

    def predict(self, images: Images) -> AnomalyResult:
        """Score query images; returns ``AnomalyResult`` with maps ``[N, S, S]``."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        parts = [self._predict_batch(b) for b in iter_batches(images, self.config.batch_size)]
        if not parts:
            s = self.preprocess.size
            return AnomalyResult(torch.empty(0), torch.empty(0, s, s))
        return AnomalyResult.concat(parts)

    def encoders(self) -> list[Any]:
        """The ``Encoder`` instances this method holds as attributes (for feature caches)."""
        from fsiad.fewshot.encoders.base import Encoder

        return [v for v in vars(self).values() if isinstance(v, Encoder)]

    def describe(self) -> dict[str, Any]:
        """Metadata for results files (encoder, weights source/checksum, protocol)."""
        return {"method": self.name, "regime": self.regime, "preprocess": self.preprocess.describe()}

    # -- persistence --------------------------------------------------------------------
    def get_state(self) -> dict[str, torch.Tensor]:
        """Tensors needed to predict after ``fit`` (memory bank, statistics, ...)."""
        return {}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise NotImplementedError(f"{self.name} does not implement set_state")

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``state.safetensors`` and ``method.json`` (name, config, description, state sha256).

        No pickled objects: the state is a safetensors file whose sha256 ``load`` checks before
        parsing it. See ``fsiad.fewshot.workflow.model.write_method_folder``.
        """
        from fsiad.fewshot.workflow.model import write_method_folder

        return write_method_folder(self, directory, extra)

    @staticmethod
    def load(directory: str | Path, **overrides: Any) -> AnomalyMethod:
        """Rebuild a fitted method saved with ``save``; ``overrides`` replace config fields.

        Safe with folders from anyone: nothing is unpickled, checksums of the state and of the
        encoder weights are checked before either is read, and ``method.json`` cannot point to
        files outside the folder unless the caller passes them (``weights=``). Malformed files
        raise ``ModelError`` (one line naming the file). See
        ``fsiad.fewshot.workflow.model.read_method_folder``.
        """
        from fsiad.fewshot.workflow.model import read_method_folder

        return read_method_folder(directory, **overrides)


_REGISTRY: dict[str, type[AnomalyMethod]] = {}


class UnknownMethodError(FsiadError, KeyError):
    """``--method NAME`` names no method of the catalogue (``fsiad.fewshot.registry``) or registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_method(name: str) -> Callable[[type[AnomalyMethod]], type[AnomalyMethod]]:
    """Class decorator: make a method available by ``name`` to the CLI and harness.

    Built-in and plugin methods are found through the catalogue (``fsiad.fewshot.registry``)
    without this; it serves methods defined at run time (tests, notebooks).
    """

    def deco(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def method_names() -> list[str]:
    """Every method name: the catalogue's (no import) and those registered at run time."""
    from fsiad.fewshot import registry

    return sorted(set(registry.names("method")) | set(_REGISTRY))


def method_class(name: str) -> type[AnomalyMethod]:
    """The class of method ``name``; imports only the module that defines it.

    Raises:
        UnknownMethodError: no such method (the message lists the available ones).
        MethodImportError: the method's module needs a package that is not installed.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    from fsiad.fewshot import registry

    entry = registry.entry("method", name)
    if entry is None:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    try:
        cls = registry.load("method", name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "fsiad" and entry.source == "builtin":
            raise
        raise MethodImportError(f"method {name!r} cannot be loaded from {entry.module}: {exc} "
                                f"(install the missing package)") from exc
    if not (isinstance(cls, type) and issubclass(cls, AnomalyMethod)):
        raise TypeError(f"method {name!r}: {entry.target} is not an AnomalyMethod subclass")
    if _REGISTRY.get(name) is not cls:
        register_method(name)(cls)
    return cls


class MethodImportError(FsiadError, ImportError):
    """A method's module (or a package it needs) cannot be imported."""


def create_method(name: str, config: MethodConfig | None = None) -> AnomalyMethod:
    """Instantiate a method by name (see ``method_class``)."""
    return method_class(name)(config)
