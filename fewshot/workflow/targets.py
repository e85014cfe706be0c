"""Target discovery: image files and folders -> ordered samples with unique output names.

Labels come from a ``path,label`` CSV (``read_labels_csv``) or, without one, from folder names
(``label_from_folders``): in a target folder that has a sub-folder named ``good``, ``ok``,
``normal`` or ``nominal`` (any case), images under that sub-folder are normal and images under
its other sub-folders are anomalous, the sub-folder's name being the defect type (MVTec layout:
``test/good``, ``test/crack``, ...). Images directly in the target folder stay unlabelled, and a
folder without a normal-named sub-folder labels nothing (``line1/``, ``line2/`` are not defects).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.data.io import is_image_file
from fsiad.fewshot.fileio import OUTPUT_MARKER, is_output_folder


def collect_images(targets: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a de-duplicated list of image files.

    Files named explicitly are kept whatever their extension (so that an unreadable file is
    reported rather than silently dropped); folders contribute their visible files with an
    image extension (``fewshot.data.io.IMAGE_EXTENSIONS``), sorted. Hidden folders and fsiad
    output folders (holding the ``.fsiad-output`` marker) are never descended into, so the
    overlays of an earlier run are never read back as images.
    Order: the order of ``targets``, each folder sorted; duplicates keep their first place.

    Raises:
        DatasetError: a target does not exist, or is itself an fsiad output folder.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for target in targets:
        path = Path(target)
        if path.is_dir():
            if is_output_folder(path):
                raise DatasetError(f"{path}: an fsiad output folder (it holds {OUTPUT_MARKER}); "
                                   "fsiad never reads its own outputs as images")
            found = _walk_images(path)
        elif path.is_file():
            found = [path]
        elif path.is_symlink():
            raise DatasetError(f"{path}: a symbolic link to nothing (broken, or a loop of links); fix the link")
        else:
            raise DatasetError(f"{path}: no such file or folder")
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def _walk_images(root: Path) -> list[Path]:
    """Image files below ``root``, sorted, skipping hidden folders and fsiad output folders.

    Symbolic links to folders are followed; a link that leads back to a folder already walked
    (a loop, or a second way into the same folder) is not walked twice and is reported as a
    warning on the ``fsiad`` logger.
    """
    import logging

    log = logging.getLogger("fsiad.targets")
    found: list[Path] = []
    visited = {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        base = Path(folder)
        keep = []
        for d in dirs:
            sub = base / d
            if d.startswith(".") or is_output_folder(sub):
                continue
            real = os.path.realpath(sub)
            if real in visited:
                log.warning("%s: skipped (a link back to %s, already read)", sub, real)
                continue
            visited.add(real)
            keep.append(d)
        dirs[:] = keep
        found.extend(p for p in (base / f for f in files) if is_image_file(p))
    return sorted(found)


def collect_samples(method_cls: type, paths: Sequence[str | Path], labels: dict[Path, int] | None = None,
                    normal: bool = False) -> list[Sample]:
    """The ONE collection of ``--normal`` references and TARGETS: paths -> samples for ``method_cls``.

    A method class for multi-modal inputs may define ``collect_samples(paths, labels)``
    (a classmethod or staticmethod returning ``list[Sample]``, e.g. RGB-D pairs of ``rgb/`` and
    ``xyz/``); otherwise image files are collected with ``collect_images``. Samples that lie
    in an fsiad output folder are dropped either way.

    Args:
        method_cls: the method class (``fsiad.fewshot.methods.method_class(name)``).
        paths: files and folders as given by the user.
        labels: resolved path -> 0/1 (``read_labels_csv``), or ``None``.
        normal: the paths are normal references: every sample is labelled 0.

    Raises:
        DatasetError: a path does not exist or is an fsiad output folder.
    """
    hook = getattr(method_cls, "collect_samples", None)
    if hook is not None:
        for p in map(Path, paths):
            if p.is_dir() and is_output_folder(p):
                raise DatasetError(f"{p}: an fsiad output folder (it holds {OUTPUT_MARKER}); "
                                   "fsiad never reads its own outputs as images")
        cache: dict[Path, bool] = {}
        samples = [s for s in hook(list(paths), labels) if not _in_output_folder(Path(s.path), cache)]
    else:
        samples = make_samples(collect_images(paths), labels)
    if normal:
        samples = [replace(s, label=0, defect="good") for s in samples]
    return samples


def _in_output_folder(path: Path, cache: dict[Path, bool]) -> bool:
    """Whether a folder above ``path`` holds the output marker (``cache``: folder -> answer)."""
    for parent in path.resolve().parents:
        if parent not in cache:
            cache[parent] = is_output_folder(parent)
        if cache[parent]:
            return True
    return False


def output_names(paths: Sequence[Path]) -> list[str]:
    """Unique, filesystem-safe names for per-image outputs (``maps/<name>.npy``).

    A name is the path relative to the deepest folder common to all targets, extension
    dropped, folders joined with ``__``: targets ``good/a.png`` and ``bad/a.png`` give
    ``good__a`` and ``bad__a``; files of a single folder keep their stem. Names that still
    clash (``a.png`` and ``a.jpg``) get ``-2``, ``-3``, ... in input order.
    """
    if not paths:
        return []
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    names = ["__".join(_safe(q) for q in r.relative_to(common).with_suffix("").parts) for r in resolved]
    taken: set[str] = set(names)  # every plain name stays reserved for its first holder
    seen: set[str] = set()
    unique: list[str] = []
    for n in names:
        cand, k = n, 1
        while n in seen and (cand == n or cand in taken):
            k += 1
            cand = f"{n}-{k}"
        seen.add(n)
        taken.add(cand)
        unique.append(cand)
    return unique


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"


def read_labels_csv(path: str | Path) -> dict[Path, int]:
    """Read ``path,label`` rows (label ``0``/``1`` or ``normal``/``anomalous``/``good``).

    Relative image paths are taken relative to the CSV's folder. Returns resolved path -> label.

    Raises:
        DatasetError: missing columns or an unknown label, naming the CSV and row.
    """
    path = Path(path)
    words = {"0": 0, "1": 1, "normal": 0, "good": 0, "ok": 0, "anomalous": 1, "anomaly": 1, "defect": 1, "ng": 1}
    out: dict[Path, int] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected a header with columns 'path' and 'label'")
        for row_no, row in enumerate(reader, start=2):
            label = words.get(str(row["label"]).strip().lower())
            if label is None:
                raise DatasetError(f"{path}: row {row_no}: unknown label {row['label']!r} (use 0/1 or normal/anomalous)")
            p = Path(row["path"])
            out[(p if p.is_absolute() else path.parent / p).resolve()] = label
    return out


def make_samples(paths: Sequence[Path], labels: dict[Path, int] | None = None) -> list[Sample]:
    """Samples for target images, labelled where ``labels`` (resolved path -> 0/1) knows them."""
    labels = labels or {}
    out = []
    for p in paths:
        label = labels.get(p.resolve())
        out.append(Sample(path=p, label=label, defect="good" if label == 0 else ("unknown" if label is None else "anomalous")))
    return out


NORMAL_FOLDERS = ("good", "ok", "normal", "nominal")


def label_from_folders(roots: Sequence[str | Path], samples: Sequence[Sample]) -> list[Sample]:
    """Label unlabelled ``samples`` from the sub-folder of a target ``root`` they lie in (module docstring)."""
    bases = []
    for r in map(Path, roots):
        if r.is_dir() and any(d.is_dir() and d.name.lower() in NORMAL_FOLDERS for d in r.iterdir()):
            bases.append(r.resolve())
    if not bases:
        return list(samples)
    out = []
    for s in samples:
        p = Path(s.path).resolve()
        for base in bases:
            if s.label is None and base in p.parents and len(p.relative_to(base).parts) >= 2:
                sub = p.relative_to(base).parts[0]
                normal = sub.lower() in NORMAL_FOLDERS
                s = replace(s, label=0 if normal else 1, defect="good" if normal else sub)
                break
        out.append(s)
    return out
