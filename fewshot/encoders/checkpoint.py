"""Reading weight files into state dicts and loading them strictly (clear one-line errors)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

_DIR_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
                   "open_clip_model.safetensors")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / torch file, or of the model file inside a hub snapshot dir.

    Torch checkpoints wrapping the weights in ``state_dict`` / ``model`` / ``module`` are unwrapped.
    """
    path = Path(path)
    if path.is_dir():
        for name in _DIR_CANDIDATES:
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise ValueError(f"{path}: no model file ({', '.join(_DIR_CANDIDATES)}) in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure: name the file
        raise ValueError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
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
        raise ValueError(f"{source}: weights do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
