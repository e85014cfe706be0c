"""CLIP checkpoints: where open_clip weights are found (resolver spec, hub caches) and how a
checkpoint is read into an open_clip model without unpickling anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
import torch
from fsiad.fewshot.encoders.base import WeightInfo
from fsiad.fewshot.encoders.checkpoint import WeightsFileError, is_torchscript_archive, read_state_dict
from fsiad.fewshot.encoders.weights import WeightSpec
from fsiad.fewshot.errors import UnsafeFileError


def hub_finder(arch: str, tag: str):
    """``hub(local_only)`` for open_clip pretrained tags: HF cache / open_clip URL cache."""

    def hub(local_only: bool) -> str | None:
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not cfg:
            return None
        if cfg.get("hf_hub"):
            repo, _, fname = cfg["hf_hub"].partition("/")
            try:
                from huggingface_hub import try_to_load_from_cache

                for name in ([fname] if fname else []) + ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
                    hit = try_to_load_from_cache(repo, name)
                    if isinstance(hit, str):
                        return hit
            except ImportError:
                pass
        url = cfg.get("url") or ""
        if url:
            cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)
            if cached.is_file():
                return str(cached)
        if local_only:
            return None
        return open_clip.pretrained.download_pretrained(cfg)

    return hub


def clip_weight_spec(arch: str, tag: str | None, key: str | None = None) -> WeightSpec:
    """Resolver spec for an open_clip ``arch`` / ``tag`` (hub step only with a known tag)."""
    key = key or f"clip:{arch}/{tag or 'none'}"
    fname = f"open_clip_{arch}_{tag or 'custom'}.pt".replace("/", "_")
    hub = hub_finder(arch, tag) if tag and open_clip.get_pretrained_cfg(arch, tag) else None
    hub_name = f"open_clip {arch} / {tag}" if hub else None
    howto = (f"or download the open_clip checkpoint of {arch} / {tag} on a connected machine "
             f"(open_clip.create_model('{arch}', pretrained='{tag}')) and copy it to the cache path")
    return WeightSpec(key=key, filename=fname, hub=hub, hub_name=hub_name, howto=howto)


def build_model(arch: str | dict, info: WeightInfo, quick_gelu: bool, image_size: int | None,
           tag: str | None = None) -> torch.nn.Module:
    if isinstance(arch, dict):
        if info.path is not None:
            raise ValueError("a custom open_clip config can only be random-initialised")
        return open_clip.CLIP(**arch)
    kw = {"force_quick_gelu": quick_gelu} if quick_gelu else {}
    if image_size is not None:
        kw["force_image_size"] = image_size
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    norm = {k: tag_cfg[k] for k in ("mean", "std") if tag_cfg.get(k)}
    if norm:  # the tag's normalisation (pretrained=None would leave open_clip's defaults)
        kw["force_preprocess_cfg"] = norm
    model = open_clip.create_model(arch, pretrained=None, **kw)
    if info.path is not None:
        path = Path(info.path)
        if path.is_dir():
            files = sorted([*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.pt"), *path.glob("*.pth")])
            if not files:
                raise WeightsFileError(f"{path}: no checkpoint file (*.safetensors, *.bin, *.pt) in this directory")
            path = files[0]
        load_checkpoint(model, path, arch)
    return model


def load_checkpoint(model: torch.nn.Module, path: Path, arch: str) -> None:
    """Load an open_clip checkpoint into ``model`` without unpickling Python objects.

    A TorchScript archive (OpenAI's original files), recognised only by torch's exact check
    ``is_torchscript_archive``, is read with ``torch.jit.load``; anything else goes through
    ``read_state_dict`` (safetensors, or ``torch.load(weights_only=True)``). No file-name
    heuristic is involved: a zip with a member ``x/notconstants.pkl`` is an ordinary torch
    file and is refused by the restricted loader when it holds anything but tensors. The
    state dict is then adapted as ``open_clip.load_checkpoint`` does (3rd-party key names,
    old text-tower layout, ``logit_scale`` shape, position-embedding resize).

    Raises:
        UnsafeFileError: the file holds Python objects beyond tensors (nothing ran).
        WeightsFileError: unreadable file or keys/shapes that do not fit ``arch``.
    """
    from open_clip import factory as ocf

    script = is_torchscript_archive(path)
    try:
        if script:
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                sd.pop(key, None)
        else:
            sd = read_state_dict(path)
        if sd and next(iter(sd)).startswith("module"):
            sd = {k[7:]: v for k, v in sd.items()}
        sd = ocf.convert_state_dict(model, sd)
        if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
            sd = ocf.convert_to_custom_text_state_dict(sd)
        for key in ("logit_scale", "logit_bias"):
            own = getattr(model, key, None)
            if key in sd and own is not None and own.ndim != sd[key].ndim:
                sd[key] = sd[key].reshape(own.shape)
        if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None and "logit_scale" in sd:
            sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
        ocf.resize_pos_embed(sd, model)
        ocf.resize_text_pos_embed(sd, model)
        keys = model.load_state_dict(sd, strict=not script)
    except UnsafeFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable / mismatching file -> one-line error
        first = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, WeightsFileError) and first.startswith(f"{path}: "):
            first = first[len(f"{path}: "):]
        raise WeightsFileError(f"{path}: not a checkpoint of open_clip {arch}: {type(exc).__name__}: {first}") from None
    if script:  # scripted modules also carry non-persistent buffers such as the text attn_mask
        bad = list(keys.missing_keys) + [k for k in keys.unexpected_keys if k != "attn_mask"]
        if bad:
            raise WeightsFileError(f"{path}: not a checkpoint of open_clip {arch}: mismatching keys {bad[:5]}")
