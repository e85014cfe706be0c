"""File primitives shared by every writer in fsiad: atomic writes, output-folder locks, and the
check that an output folder is never read as input.

This module imports nothing heavy (no torch, no numpy) so that any layer may use it.

* ``atomic_path`` (a temporary file name for writers that need one), ``atomic_write`` /
  ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json``:
  write to a unique temporary file in the same folder, fsync, then ``os.replace`` onto the
  target: readers see the old file or the new one, never a half-written one, and two
  processes writing the same target never share a temporary name.
* ``OutputLock``: an advisory ``flock`` on ``OUT/.fsiad.lock``; a second run on the same
  folder fails at once with an ``OutputLockedError`` naming the holder (pid, command, start
  time). The kernel drops the lock when the holder dies (SIGKILL included), so a stale lock
  file never blocks a later run.
* ``check_out_not_input``: refuse an output folder that lies inside an input folder or
  contains one; ``is_inside`` lets collectors skip output folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from fsiad.fewshot.errors import FsiadError

LOCK_NAME = ".fsiad.lock"
#: Marker file written into every output folder fsiad creates; collectors never read from a
#: folder that holds it (a previous run's overlays are not normal references).
OUTPUT_MARKER = ".fsiad-output"


class OutputLockedError(FsiadError, RuntimeError):
    """Another fsiad run holds the output folder."""


class OutputOverlapError(FsiadError, ValueError):
    """An output folder overlaps an input folder."""


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary sibling path of ``path`` for writers that need a file name
    (safetensors, ``np.savez``, a converter, ``shutil.copyfile``); on success it replaces
    ``path``, on an exception it is removed and ``path`` is left as it was. ``suffix`` keeps
    extensions that a writer appends or checks (e.g. ``.npz``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a unique temporary sibling of ``path`` for writing; replace ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class OutputLock:
    """Advisory exclusive lock on an output folder (created if needed).

    Use as a context manager::

        with OutputLock(out, "fsiad score"):
            ...

    Raises:
        OutputLockedError: another process holds the lock (the message names it).
        OSError: the folder cannot be created or written (e.g. read-only).
    """

    def __init__(self, folder: str | Path, command: str = "fsiad") -> None:
        self.folder = Path(folder)
        self.command = command
        self._fh: IO | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fh = open(path, "a+")  # noqa: SIM115  (held open for the lock's lifetime)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise OutputLockedError(
                f"{self.folder}: in use by {holder}; wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} ({self.command}, started {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        fh.flush()
        self._fh = fh
        mark_output(self.folder)
        return self

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def hash_file(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB blocks (the one file checksum of fsiad)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_CODE_FINGERPRINT: str | None = None


def code_fingerprint() -> str:
    """sha256 over the source of the installed fsiad packages (``*.py``, by relative path): two
    runs whose code differs never share results (a resumed run would mix old and new scores).
    Computed once per process (~10 ms)."""
    global _CODE_FINGERPRINT
    if _CODE_FINGERPRINT is None:
        import hashlib
        import importlib

        h = hashlib.sha256()
        for name in ("fsiad", "fsiad.fewshot", "fsiad.pointcloud", "fsiad.prompts", "fsiad.cli"):
            try:
                paths = list(importlib.import_module(name).__path__)
            except ImportError:  # pragma: no cover - a partial install
                continue
            for root in paths:
                for f in sorted(Path(root).rglob("*.py")):
                    if "__pycache__" in f.parts:
                        continue
                    h.update(f"{name}/{f.relative_to(root).as_posix()}".encode())
                    h.update(hashlib.sha256(f.read_bytes()).digest())
        _CODE_FINGERPRINT = h.hexdigest()
    return _CODE_FINGERPRINT


def fingerprint(key: Any) -> str:
    """sha256 of a settings record (JSON, sorted keys): what makes two runs interchangeable."""
    import hashlib

    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def mark_output(folder: str | Path) -> None:
    """Write the output marker into ``folder`` (idempotent)."""
    marker = Path(folder) / OUTPUT_MARKER
    if not marker.exists():
        marker.write_text("written by fsiad; never read as input\n")


def is_output_folder(folder: str | Path) -> bool:
    return (Path(folder) / OUTPUT_MARKER).is_file()


def _resolved(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.fspath(p))))


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (symlinks resolved)."""
    p, f = _resolved(path), _resolved(folder)
    return p == f or f in p.parents


def check_out_not_input(out: str | Path, inputs: Iterable[str | Path | None], option: str = "--out") -> None:
    """Refuse an output folder that is an input, lies inside an input folder, or contains one.

    Raises:
        OutputOverlapError: names both paths and what to do.
    """
    for inp in inputs:
        if inp is None:
            continue
        if is_inside(out, inp):
            raise OutputOverlapError(
                f"{option} {out}: inside the input {inp}; fsiad would read its own outputs as images. "
                f"Choose an output folder outside the inputs")
        if Path(inp).is_dir() and is_inside(inp, out):
            raise OutputOverlapError(
                f"{option} {out}: contains the input {inp}; choose an output folder outside the inputs")
