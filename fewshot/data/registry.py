"""Registry of dataset readers: ``load_dataset(kind, root, categories)``.

Kinds are found through the catalogue (``fsiad.fewshot.registry``, kind ``dataset``: built-in
readers, ``mvtec3d`` from ``fsiad.pointcloud``, plugins' ``dataset.<kind>`` entry points);
the reader's module is imported on first use. ``register_dataset`` still registers a reader
at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fsiad.fewshot.data.base import Category, DatasetError

Loader = Callable[[Path | None, list[str] | None], list[Category]]
_LOADERS: dict[str, Loader] = {}


def register_dataset(kind: str, loader: Loader) -> Loader:
    """Register ``loader(root, categories) -> list[Category]`` under ``kind``."""
    _LOADERS[kind] = loader
    return loader


def dataset_kinds() -> list[str]:
    """Names of the dataset kinds: the catalogue's and those registered at run time."""
    from fsiad.fewshot import registry

    return sorted(set(_LOADERS) | set(registry.names("dataset")))


def load_dataset(kind: str, root: str | Path | None, categories: list[str] | None = None) -> list[Category]:
    """Load the categories of a dataset.

    Args:
        kind: registered kind (``mvtec``, ``visa``, ``folder``, ``textile``, ...).
        root: dataset root (``None`` only for kinds with an embedded default, e.g. textile).
        categories: subset of category names (``None`` = all, sorted by name).

    Raises:
        DatasetError: unknown kind, missing/empty root, unknown category, bad layout.
    """
    if kind not in _LOADERS:
        _load_from_catalogue(kind)
    if kind not in _LOADERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; available: {', '.join(dataset_kinds())}")
    if categories is not None:
        categories = [c.strip() for c in categories if c.strip()]
        if len(set(categories)) != len(categories):
            raise DatasetError(f"duplicate categories in {categories}")
    return _LOADERS[kind](Path(root).expanduser() if root is not None else None, categories or None)


def _load_from_catalogue(kind: str) -> None:
    """Import the reader of ``kind`` named by the catalogue and register it (no-op if unknown)."""
    from fsiad.fewshot import registry

    entry = registry.entry("dataset", kind)
    if entry is None:
        return
    try:
        loader = registry.load("dataset", kind)
    except ImportError as exc:
        raise DatasetError(f"dataset kind {kind!r} needs module {entry.module!r}: {exc}") from None
    if kind not in _LOADERS and callable(loader):
        register_dataset(kind, loader)


def select_categories(root: Path, available: list[str], wanted: list[str] | None) -> list[str]:
    """Check ``wanted`` against ``available`` (sorted); ``None`` = all."""
    if not available:
        raise DatasetError(f"{root}: no categories found")
    if wanted is None:
        return sorted(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DatasetError(
            f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(sorted(available))}"
        )
    return list(wanted)


def require_dir(path: Path, what: str = "folder") -> Path:
    """Raise a one-line DatasetError if ``path`` is not an existing directory."""
    if not path.exists():
        raise DatasetError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder")
    return path
