"""Reading weight files into state dicts and loading them strictly (clear one-line errors).

Safety: nothing fsiad reads is unpickled as arbitrary Python. ``.safetensors`` files are read
with ``safetensors``; every other torch file with ``torch.load(..., weights_only=True)``, whose
restricted unpickler only rebuilds tensors and plain containers and refuses anything else (a
crafted file that would run code on load is reported as ``UnsafeFileError``, nothing runs).
TorchScript archives (OpenAI's original CLIP files) are recognised only by torch's own exact
structure check (``is_torchscript_archive``) and read with ``torch.jit.load``, whose C++
deserialiser does not execute Python; no file-name heuristic decides how a file is loaded.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from fsiad.fewshot.errors import FsiadError, UnsafeFileError
from torch import nn

_DIR_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
                   "open_clip_model.safetensors")


class WeightsFileError(FsiadError, ValueError):
    """A weight file that cannot be read or does not hold a state dict of tensors (names the file)."""


def is_refusal(exc: BaseException) -> bool:
    """True when ``torch.load(weights_only=True)`` refused Python objects (globals/classes) in the file."""
    text = str(exc)
    return "Weights only load failed" in text and ("Unsupported global" in text or "Unsupported class" in text)


def _load_failure(exc: BaseException) -> str:
    """The informative line of a torch/safetensors load failure (torch's weights-only error is long)."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)\s*$", text, re.MULTILINE | re.DOTALL)
    if "Weights only load failed" in text and m:
        return f"not a torch state dict ({' '.join(m.group(1).split())[:120]})"
    return f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0]}"


def unsafe_message(path: str | Path) -> str:
    """One-line refusal for a file holding Python objects beyond tensors."""
    return (f"{path}: refused: the file holds Python objects beyond tensors (loading it could run code); "
            "use a .safetensors file or a plain tensor state dict from a trusted source")


def is_torchscript_archive(path: str | Path) -> bool:
    """True only for a TorchScript zip archive, by torch's own exact check.

    ``torch.serialization._is_torchscript_zip`` (what ``torch.load`` itself uses to dispatch to
    ``torch.jit.load``) looks for the record ``constants.pkl`` at the archive root, i.e. a zip
    whose members all share one top folder ``<root>/`` and hold exactly ``<root>/constants.pkl``.
    Where that private helper is missing the same structure is checked with ``zipfile``. A
    member merely ending in ``constants.pkl`` (``x/notconstants.pkl``, ``a/b/constants.pkl``)
    does not qualify.
    """
    path = Path(path)
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        check = getattr(torch.serialization, "_is_torchscript_zip", None)
        opener = getattr(torch.serialization, "_open_zipfile_reader", None)
        if check is not None and opener is not None:
            with open(path, "rb") as fh, opener(fh) as reader:
                return bool(check(reader))
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        return len(roots) == 1 and f"{roots.pop()}/constants.pkl" in names
    except Exception:  # noqa: BLE001 - anything unreadable is simply not TorchScript
        return False


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / torch file, or of the model file inside a hub snapshot dir.

    Torch checkpoints wrapping the weights in ``state_dict`` / ``model`` / ``module`` are unwrapped.
    Torch files are read with ``weights_only=True`` only (see the module docstring).

    Raises:
        UnsafeFileError: the file holds Python objects a tensor loader refuses (nothing ran).
        WeightsFileError: unreadable file, or not a state dict of tensors.
    """
    path = Path(path)
    if path.is_dir():
        for name in _DIR_CANDIDATES:
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise WeightsFileError(f"{path}: no model file ({', '.join(_DIR_CANDIDATES)}) in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix != ".safetensors" and is_torchscript_archive(path):
        raise WeightsFileError(f"{path}: a TorchScript archive, not a state dict; this encoder needs a "
                               ".safetensors file or a torch state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure: name the file
        if is_refusal(exc):
            raise UnsafeFileError(unsafe_message(path)) from None
        raise WeightsFileError(f"{path}: cannot read weights ({_load_failure(exc)})") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"{path}: not a state dict of tensors")
    return sd


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str,
                ignore: Iterable[str] = ()) -> None:
    """``model.load_state_dict(sd)`` requiring every key and shape to match.

    Args:
        ignore: keys of ``sd`` that may be absent from the model (dropped before loading).
    """
    drop = set(ignore)
    sd = {k: v for k, v in sd.items() if k not in drop}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        raise WeightsFileError(f"{source}: weights do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
