"""The export bundle format: what ``fsiad export`` writes and the torch-free runner reads.

Layout of a bundle folder::

    bundle.json        format, fsiad version, method, opset, input geometry and preprocessing,
                       scoring settings, threshold, and the sha256 of every other file
    features.onnx      encoder + feature extraction: float32 [N, 3, S, S] in [0, 1] ->
                       features [N, h, w, C] (knn: one output per memory member; patchcore)
                       or [N, h*w, d] (padim)
    memory_<i>.npy     knn: memory bank of member i [M, C] float32 (cosine: rows L2-normalised);
                       grid = sum over members of weight * (distance - loc) / scale
    global_memory.npy  knn with the image-level term: the references' mean features [V, C];
                       score += unit * (nearest distance of the image's mean feature / mean - 1)
    memory.npy         patchcore: coreset memory bank [M, C] float32
    mean.npy, chol_inv.npy   padim: per-position mean [P, d] and inverse Cholesky factor [P, d, d]

Arrays are plain ``.npy`` files read with ``allow_pickle=False``. ``read_bundle`` checks every
recorded sha256 before anything is parsed; a changed file is refused with one line.
Imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fsiad.fewshot.errors import FsiadError, UnsafeFileError
from fsiad.fewshot.fileio import hash_file as sha256_file  # noqa: F401  (re-exported for the runner)

FORMAT = "fsiad-bundle/1"
BUNDLE_FILE = "bundle.json"
GRAPH_FILE = "features.onnx"
#: methods whose inference is a fixed graph + arrays (subclasses of these classes are accepted too)
EXPORTABLE = ("knn", "patchcore", "padim")


class BundleError(FsiadError, ValueError):
    """A bundle folder is missing, malformed or damaged."""


class UnsafeBundleError(BundleError, UnsafeFileError):
    """A bundle file does not match the checksum recorded in ``bundle.json``."""


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``bundle.json`` (``fsiad predict`` dispatches on it)."""
    return (Path(path) / BUNDLE_FILE).is_file()


def read_bundle(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """``bundle.json`` of a bundle, every listed file's sha256 checked (``verify``).

    Raises:
        BundleError: not a bundle, bad JSON, unsupported format, a file missing or outside the folder.
        UnsafeBundleError: a file's sha256 differs from the recorded one.
    """
    directory = Path(directory)
    path = directory / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: not an fsiad bundle ({BUNDLE_FILE} missing; create one with `fsiad export`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable ({type(e).__name__}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise BundleError(f"{path}: unsupported bundle format {found!r} (expected {FORMAT}); export the model again")
    files = meta.get("files")
    if not isinstance(files, dict) or GRAPH_FILE not in files:
        raise BundleError(f"{path}: no 'files' checksums (or no {GRAPH_FILE}); export the model again")
    for name, digest in files.items():
        f = directory / str(name)
        if Path(name).is_absolute() or ".." in Path(name).parts or not f.is_file():
            raise BundleError(f"{path}: listed file {name!r} is missing or outside the bundle; export the model again")
        if verify:
            now = sha256_file(f)
            if now != digest:
                raise UnsafeBundleError(f"{f}: checksum mismatch (sha256 {now}, {BUNDLE_FILE} records {digest}): "
                                        "the bundle was changed or damaged; export the model again")
    return meta
