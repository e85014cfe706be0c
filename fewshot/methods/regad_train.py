"""Meta-training of RegAD's registration network across categories (leave the target out).

``train_regad(TrainConfig(...))`` gathers the normal training images of many categories (a
dataset's ``train/good`` folders, minus the held-out target, plus synthetic categories from
``fewshot.data.synthetic``), encodes them ONCE with the frozen encoder, then trains the STNs
and the Siamese heads (``regad_net.RegistrationNet``) on (query, K supports of the same
category) pairs with the symmetric negative-cosine loss. Fixed schedule (no model selection):
the last epoch is the result. ``tune_encoder=True`` trains the paper's STN-encoder instead
(``regad_net.CascadeRegistration``): the frozen stem and the stages before the first feature
layer are encoded once, the later stages are fine-tuned (``encoder_lr``) with an STN after each
feature stage feeding the next, so every step runs those stages forward and backward. A
validation split of the TRAINING categories (``val_fraction`` of each category's images, never
the target) gives a validation loss per epoch for the curve.

Checkpoint = ``OUT.safetensors`` (network tensors ``net.*``, SGD momentum ``optim.*``; header
metadata tags the format) + ``OUT.json`` (sha256 of the tensors file, encoder name + weights
sha256, layers, grids, the training data, the held-out target, the schedule and the loss per
epoch). Both are written atomically after every epoch; ``resume=True`` continues an interrupted
run (per-epoch seeds: resumed and uninterrupted runs are identical).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from fsiad.fewshot.errors import FsiadError

FORMAT = "fsiad-regad-checkpoint"
VERSION = 1


class TrainError(FsiadError, ValueError):
    """Bad training input (no categories left, bad output path, mismatching resume)."""


class CheckpointError(FsiadError, ValueError):
    """A RegAD checkpoint that is malformed, incomplete or does not match its metadata."""


@dataclass
class TrainConfig:
    """Meta-training settings (defaults: the schedule measured to fit 30 min on 2 CPU cores).

    Attributes:
        out: checkpoint path (``*.safetensors``; metadata next to it as ``*.json``).
        dataset, root, categories: real training data (``root=None``: synthetic only).
        exclude: held-out categories (the target); never read.
        synthetic: number of synthetic categories mixed in (texture / object alternating).
        images_per_category: normal images used per category (first ones, sorted).
        shots: supports per query (K).
        epochs, batch_size, lr, momentum: SGD schedule with cosine decay (per epoch).
        val_fraction: share of each training category's images kept for the validation loss.
        tune_encoder: the paper's STN-encoder (``regad_net.CascadeRegistration``, CNN encoders):
            the stages from the first feature layer on are fine-tuned at ``encoder_lr`` and each
            STN's warped output feeds the next stage; the stages before it are frozen and cached.
        encoder_lr: SGD learning rate of the fine-tuned encoder stages (paper: 1e-4).
        augment_pairs: every query and support image of a training batch gets its own random
            pose (rotation up to +-30 degrees, shift up to 0.1 of the half-side): a registration
            signal where the categories have none (not in the paper; validation pairs are not
            augmented). With ``tune_encoder`` the image is posed, and given a random exposure
            (gain 0.7-1.3, offset +-0.1), before the frozen stages; on the frozen encoder the
            pose warps its cached feature maps (one transform for all stages of an image), as
            the test-time support augmentation turns the supports the STNs must register back.
        identity_prior: weight of ``regad_net.mean_transform_penalty`` added to the loss (not in
            the paper): a transform common to the whole batch is penalised, each image's own
            deviation from it is not (0 = the paper's loss).
    """

    out: str
    dataset: str = "mvtec"
    root: str | None = None
    categories: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    synthetic: int = 0
    images_per_category: int = 48
    encoder: str = "tf_efficientnet_lite0"
    layers: list[str | int] | None = None
    image_size: int = 224
    stn_mode: str = "rotation"
    shots: int = 4
    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    allow_random: bool = False
    tune_encoder: bool = False
    encoder_lr: float = 1e-4
    augment_pairs: bool = False
    identity_prior: float = 0.0


def sidecar(path: str | Path) -> Path:
    """``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


# -- data --------------------------------------------------------------------------------------
def synthetic_names(n: int) -> list[str]:
    """``n`` synthetic category names: ``texture_s0``, ``object_s1``, ``texture_s2``, ..."""
    return [f"{'texture' if i % 2 == 0 else 'object'}_s{i}" for i in range(n)]


def gather_images(cfg: TrainConfig) -> dict[str, list[Any]]:
    """``{category: [image source, ...]}``: real ``train/good`` paths and synthetic arrays.

    The held-out categories are removed BEFORE anything is read.
    """
    from fsiad.fewshot.data import load_dataset
    from fsiad.fewshot.data.synthetic import render_category

    exclude = set(cfg.exclude)
    pools: dict[str, list[Any]] = {}
    if cfg.root is not None:
        wanted = [c for c in cfg.categories if c not in exclude] if cfg.categories else None
        if cfg.categories and not wanted:
            raise TrainError(f"every category in --categories is excluded ({', '.join(cfg.categories)})")
        for cat in load_dataset(cfg.dataset, cfg.root, wanted):
            if cat.name in exclude:
                continue
            paths = sorted(s.path for s in cat.train)[: cfg.images_per_category]
            if len(paths) >= cfg.shots + 1:
                pools[cat.name] = paths
    elif cfg.categories:
        raise TrainError("--categories needs --root (the dataset's folder)")
    for name in synthetic_names(cfg.synthetic):
        if name in exclude:
            continue
        parts = render_category(name, cfg.image_size, cfg.images_per_category, 0, 0, seed=cfg.seed)
        pools[f"synthetic/{name}"] = [img for img, _ in parts["train"]]
    if not pools:
        raise TrainError("no training categories left (give --root with categories other than the target, "
                         f"or --synthetic N); each needs at least shots + 1 = {cfg.shots + 1} normal images")
    return pools


def pool_batches(items: Sequence[Any], size: int, batch: int = 16):
    """Prepared ``[B, 3, size, size]`` image batches of a pool (paths are read, arrays taken as they are)."""
    from fsiad.fewshot.data.io import read_image
    from fsiad.fewshot.preprocess import Preprocess

    pre = Preprocess(size, interpolation="bicubic")
    for i in range(0, len(items), batch):
        yield pre.images([read_image(x) if isinstance(x, (str, Path)) else x for x in items[i : i + batch]])


def encode_pools(pools: dict[str, list[Any]], encoder: Any, layers: Sequence[Any], size: int,
                 batch: int = 16) -> dict[str, list[torch.Tensor]]:
    """Frozen per-stage features ``[N, C, h, w]`` of every pool image (encoded once)."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, items in pools.items():
        per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
        for imgs in pool_batches(items, size, batch):
            for slot, f in zip(per_layer, encoder.patch_features(imgs, list(layers)), strict=True):
                slot.append(f.permute(0, 3, 1, 2).contiguous())
        out[name] = [torch.cat(s) for s in per_layer]
    return out


def split_pools(feats: dict[str, list[torch.Tensor]], val_fraction: float, shots: int
                ) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Per category: the last ``val_fraction`` of images are validation queries."""
    train, val = {}, {}
    for name, layers in feats.items():
        n = layers[0].shape[0]
        n_val = min(int(round(n * val_fraction)), n - shots - 1)
        train[name] = [f[: n - n_val] for f in layers]
        if n_val > 0:
            val[name] = [f[n - n_val :] for f in layers]
    return train, val


def episodes(pools: dict[str, list[torch.Tensor]], shots: int, generator: torch.Generator
             ) -> list[tuple[str, int, list[int]]]:
    """Every image of every category once as query, with ``shots`` other images as supports; shuffled."""
    items = []
    for name, layers in pools.items():
        n = layers[0].shape[0]
        for q in range(n):
            others = torch.randperm(n - 1, generator=generator)[:shots]
            items.append((name, q, [int(i) + (int(i) >= q) for i in others]))
    order = torch.randperm(len(items), generator=generator)
    return [items[int(i)] for i in order]


def make_batch(pools: dict[str, list[torch.Tensor]], batch: Sequence[tuple[str, int, list[int]]],
               supports_from: dict[str, list[torch.Tensor]] | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Stack query features and grouped support features (per stage)."""
    sup = supports_from or pools
    n_layers = len(next(iter(pools.values())))
    query = [torch.stack([pools[c][layer][q] for c, q, _ in batch]) for layer in range(n_layers)]
    support = [torch.stack([sup[c][layer][s] for c, _, ss in batch for s in ss]) for layer in range(n_layers)]
    return query, support


def val_episodes(val: dict[str, list[torch.Tensor]], train: dict[str, list[torch.Tensor]], shots: int,
                 generator: torch.Generator) -> list[tuple[str, int, list[int]]]:
    items = []
    for name, layers in val.items():
        n_train = train[name][0].shape[0]
        for q in range(layers[0].shape[0]):
            items.append((name, q, [int(i) for i in torch.randperm(n_train, generator=generator)[:shots]]))
    return items


# -- checkpoint ----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``path`` (safetensors) then its JSON sidecar (with the tensors' sha256), atomically."""
    import hashlib

    from fsiad.fewshot.fileio import atomic_write_bytes, atomic_write_json
    from safetensors.torch import save

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if optimizer is not None:
        for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{i}"] = buf.detach().cpu().contiguous()
    data = save(tensors, metadata={"format": FORMAT, "version": str(VERSION)})
    meta = {**meta, "format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(path, data)
    atomic_write_json(sidecar(path), meta)
    return meta


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a RegAD checkpoint (its safetensors header carries the format tag)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is "not a RegAD checkpoint"
        return False


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """``(metadata, tensors, WeightInfo)``; the sha256 recorded in the sidecar is checked BEFORE parsing.

    The file is located through the weight resolver (explicit file); nothing is unpickled.

    Raises:
        CheckpointError: missing/malformed sidecar, checksum mismatch, unreadable tensors.
    """
    from fsiad.fewshot.encoders.weights import WeightSpec, resolve_weights
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar(path)
    try:
        meta = json.loads(side.read_text())
    except OSError:
        raise CheckpointError(f"{path}: RegAD checkpoint without its metadata file {side}") from None
    except ValueError as e:
        raise CheckpointError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{side}: not a RegAD checkpoint metadata file (format {FORMAT!r} expected)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{side}: checkpoint version {meta.get('version')!r}, this fsiad reads {VERSION}")
    info = resolve_weights(WeightSpec(key="regad", filename=path.name), path, allow_download=False)
    if info.checksum != meta.get("sha256"):
        raise CheckpointError(f"{path}: sha256 {info.checksum} differs from the one recorded in {side} "
                              f"({meta.get('sha256')}); the checkpoint is incomplete or was modified")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise CheckpointError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    return meta, tensors, info


def cascade_stages(encoder: Any, layers: Sequence[Any]) -> list[tuple[str, torch.nn.Module]]:
    """Copies of ``encoder``'s stages up to the last of ``layers`` (the shared encoder stays untouched)."""
    import copy

    if not hasattr(encoder, "stage_modules"):
        raise TrainError(f"--tune-encoder needs a CNN encoder with stages (ResNet / EfficientNet); "
                         f"{encoder.name} has none")
    stages = encoder.stage_modules()
    names = [n for n, _ in stages]
    last = max(names.index(str(x)) for x in layers)
    return [(n, copy.deepcopy(m)) for n, m in stages[: last + 1]]


def build_net(meta: dict[str, Any], encoder: Any = None):
    """The network a checkpoint describes (a cascade needs the ``encoder`` its stages come from)."""
    from fsiad.fewshot.methods.regad_net import CascadeRegistration, RegistrationNet

    try:
        cascade = meta.get("cascade")
        if cascade:
            if encoder is None:
                raise ValueError("a fine-tuned-encoder checkpoint needs its encoder")
            return CascadeRegistration(cascade_stages(encoder, meta["layers"]), meta["layers"], meta["channels"],
                                       meta["grids"], meta.get("stn_mode", "rotation_scale"),
                                       int(cascade["trainable_from"]))
        return RegistrationNet(meta["channels"], meta["grids"], meta.get("stn_mode", "rotation_scale"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"RegAD checkpoint metadata lacks/has a bad network description ({e})") from None


def load_net(meta: dict[str, Any], tensors: dict[str, torch.Tensor], encoder: Any = None):
    """The network of a checkpoint (strict: every tensor must fit)."""
    net = build_net(meta, encoder)
    state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"RegAD checkpoint tensors do not fit the network ({first})") from None
    return net.eval()


# -- training ------------------------------------------------------------------------------------
def default_layers(encoder: Any) -> list[Any]:
    from fsiad.fewshot.methods.regad import DEFAULT_LAYERS

    for layers in DEFAULT_LAYERS.values():
        if all(x in encoder.layers for x in layers):
            return list(layers)
    return list(encoder.default_layers)


def _describe_cfg(cfg: TrainConfig) -> dict[str, Any]:
    keep = ("dataset", "root", "categories", "exclude", "synthetic", "images_per_category", "shots", "epochs",
            "batch_size", "lr", "momentum", "val_fraction", "seed", "stn_mode", "image_size")
    d = asdict(cfg)
    if cfg.tune_encoder:  # recorded only when on: checkpoints of the frozen variant keep their config
        keep = (*keep, "tune_encoder", "encoder_lr")
    if cfg.augment_pairs:
        keep = (*keep, "augment_pairs")
    if cfg.identity_prior:
        keep = (*keep, "identity_prior")
    if d["root"] is not None:
        d["root"] = str(Path(d["root"]).expanduser().resolve())
    return {k: d[k] for k in keep}


def _cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def train_regad(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = None,
                batch_hook: Callable[[list[str]], None] | None = None, resume: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Meta-train the registration network; returns the checkpoint metadata.

    The checkpoint's folder is locked for the whole run (``fileio.OutputLock``): a second
    training into the same folder is refused in one line naming the holder.

    Args:
        cfg: settings (``TrainConfig``).
        progress: tqdm bar on stderr (steps, with the running loss).
        log: receives one line per epoch.
        batch_hook: called with the category names of every training batch (tests).
        resume: continue the run recorded in ``cfg.out`` (same settings required).
        overwrite: replace an existing checkpoint instead of refusing.
    """
    out = Path(cfg.out).expanduser()
    if out.suffix != ".safetensors":
        raise TrainError(f"--out {cfg.out}: the checkpoint must be a .safetensors file")
    if out.is_dir():
        raise TrainError(f"--out {cfg.out}: a folder; give a .safetensors file name")
    for name, value, low in (("shots", cfg.shots, 1), ("epochs", cfg.epochs, 1), ("batch_size", cfg.batch_size, 1),
                             ("images_per_category", cfg.images_per_category, 2)):
        if value < low:
            raise TrainError(f"{name} must be >= {low}, got {value}")
    if not cfg.lr > 0 or not 0 <= cfg.val_fraction < 1 or cfg.synthetic < 0 or cfg.identity_prior < 0:
        raise TrainError("lr must be > 0, val_fraction in [0, 1), synthetic >= 0, identity_prior >= 0")
    from fsiad.fewshot.fileio import OutputLock

    with OutputLock(out.parent, "fsiad train regad"):
        return _train_locked(cfg, out, progress=progress, log=log, batch_hook=batch_hook, resume=resume,
                             overwrite=overwrite)


def _train_locked(cfg: TrainConfig, out: Path, *, progress: bool, log: Callable[[str], None] | None,
                  batch_hook: Callable[[list[str]], None] | None, resume: bool, overwrite: bool) -> dict[str, Any]:
    import sys

    from fsiad.fewshot.encoders import create_encoder
    from fsiad.fewshot.methods.regad_net import RegistrationNet
    from tqdm import tqdm

    previous = None
    if out.exists() or sidecar(out).exists():
        if resume:
            previous = read_checkpoint(out)
            if previous[0].get("training", {}).get("config") != _describe_cfg(cfg):
                raise TrainError(f"--resume: {out} was trained with other settings; use the same options or --overwrite")
        elif not overwrite:
            raise TrainError(f"--out {cfg.out} exists; pass --resume to continue it or --overwrite to replace it")
    elif resume:
        raise TrainError(f"--resume: no checkpoint at {cfg.out}")

    torch.manual_seed(cfg.seed)
    pools = gather_images(cfg)
    encoder = create_encoder(cfg.encoder, device=cfg.device, image_size=cfg.image_size,
                             allow_random=cfg.allow_random)
    layers = list(cfg.layers) if cfg.layers else default_layers(encoder)
    t0 = time.perf_counter()
    if cfg.tune_encoder:
        net, feats, channels, grids = _cascade_setup(cfg, pools, encoder, layers)
    else:
        feats = encode_pools(pools, encoder, layers, cfg.image_size)
        first = next(iter(feats.values()))
        channels = [int(f.shape[1]) for f in first]
        grids = [[int(f.shape[2]), int(f.shape[3])] for f in first]
        net = RegistrationNet(channels, grids, cfg.stn_mode)
    encode_s = time.perf_counter() - t0
    train, val = split_pools(feats, cfg.val_fraction, cfg.shots)
    params = list(net.parameters())
    if cfg.tune_encoder:  # fine-tuned stages at the paper's small rate, fresh STNs and heads at lr
        enc_ids = {id(p) for p in net.stages.parameters()}
        groups = [{"params": [p for p in params if id(p) not in enc_ids], "lr": cfg.lr, "base_lr": cfg.lr},
                  {"params": [p for p in params if id(p) in enc_ids and p.requires_grad], "lr": cfg.encoder_lr,
                   "base_lr": cfg.encoder_lr}]
        params = [p for g in groups for p in g["params"]]
    else:
        groups = [{"params": params, "lr": cfg.lr, "base_lr": cfg.lr}]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    meta: dict[str, Any] = {
        "encoder": {k: encoder.describe()[k] for k in ("encoder", "weights_source", "weights_checksum")},
        "layers": layers, "channels": channels, "grids": grids, "image_size": cfg.image_size,
        "stn_mode": cfg.stn_mode,
        **({"cascade": {"trainable_from": net.trainable_from, "stages": net.names}} if cfg.tune_encoder else {}),
        "training": {"config": _describe_cfg(cfg), "held_out": sorted(cfg.exclude),
                     "categories": {k: int(v[0].shape[0]) for k, v in feats.items()},
                     "val_images": {k: int(v[0].shape[0]) for k, v in val.items()},
                     "encode_seconds": round(encode_s, 1)},
        "epochs_done": 0, "curve": [],
    }
    if previous is not None:
        pmeta, tensors, _ = previous
        if pmeta.get("encoder") != meta["encoder"] or pmeta.get("layers") != layers:
            raise TrainError(f"--resume: {out} was trained with another encoder or layers")
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        for i, p in enumerate(params):
            if f"optim.{i}" in tensors:
                optimizer.state[p]["momentum_buffer"] = tensors[f"optim.{i}"].clone()
        meta["epochs_done"], meta["curve"] = int(pmeta.get("epochs_done", 0)), list(pmeta.get("curve", []))
        meta["training"]["encode_seconds"] = pmeta["training"].get("encode_seconds")
    # the cascade's pools hold images when augmented (posed before the frozen prefix); the frozen
    # variant's augmentation poses its cached feature maps
    images_cached = cfg.tune_encoder and cfg.augment_pairs
    pose_features = cfg.augment_pairs and not cfg.tune_encoder
    steps_per_epoch = math.ceil(sum(v[0].shape[0] for v in train.values()) / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=meta["epochs_done"] * steps_per_epoch, unit="step",
               desc="train regad", file=sys.stderr, disable=not progress or sys.stderr is None, dynamic_ncols=True)
    try:
        for epoch in range(meta["epochs_done"], cfg.epochs):
            t_epoch = time.perf_counter()
            lr = _cosine_lr(cfg.lr, epoch, cfg.epochs)
            for g in optimizer.param_groups:
                g["lr"] = _cosine_lr(g["base_lr"], epoch, cfg.epochs)
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            items = episodes(train, cfg.shots, gen)
            net.train()
            total, count = 0.0, 0
            for b in range(0, len(items), cfg.batch_size):
                chunk = items[b : b + cfg.batch_size]
                if len(chunk) < 2:  # BatchNorm needs 2+ samples
                    continue
                if batch_hook is not None:
                    batch_hook([c for c, _, _ in chunk])
                query, support = make_batch(train, chunk)
                if pose_features:
                    query, support = augment_feature_pose(query, gen), augment_feature_pose(support, gen)
                loss = _loss(net, query, support, cfg.shots, _pair_inputs(encoder, net, gen) if images_cached else None,
                             cfg.identity_prior)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not (torch.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in params)):
                    # a diverged STN would hand non-finite grids to grid_sample next step (a crash)
                    raise TrainError(f"training diverged in epoch {epoch + 1} (non-finite loss or weights); "
                                     "lower --lr or --identity-prior; the checkpoint keeps the last finished epoch")
                total += float(loss.detach()) * len(chunk)
                count += len(chunk)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / max(count, 1):.4f}")
            row = {"epoch": epoch + 1, "lr": lr, "loss": total / max(count, 1)}
            if val:
                row["val_loss"] = validation_loss(net, val, train, cfg,
                                                  _pair_inputs(encoder, net, None) if images_cached else None)
            row["seconds"] = round(time.perf_counter() - t_epoch, 1)
            meta["curve"].append(row)
            meta["epochs_done"] = epoch + 1
            meta = save_checkpoint(out, net, optimizer, meta)
            if log is not None:
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}"
                    + (f", val {row['val_loss']:.4f}" if "val_loss" in row else "") + f" ({row['seconds']} s)")
    finally:
        bar.close()
    return meta


@torch.no_grad()
def validation_loss(net: Any, val: dict[str, list[torch.Tensor]], train: dict[str, list[torch.Tensor]],
                    cfg: TrainConfig, inputs: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Mean loss on validation queries of the training categories (eval-mode BN; fixed supports)."""
    net.eval()
    items = val_episodes(val, train, cfg.shots, torch.Generator().manual_seed(cfg.seed + 7))
    total, count = 0.0, 0
    for b in range(0, len(items), cfg.batch_size):
        chunk = items[b : b + cfg.batch_size]
        query, support = make_batch(val, chunk, supports_from=train)
        total += float(_loss(net, query, support, cfg.shots, inputs, cfg.identity_prior)) * len(chunk)
        count += len(chunk)
    net.train()
    return total / max(count, 1)


def _loss(net: Any, query: list[torch.Tensor], support: list[torch.Tensor], shots: int,
          inputs: Callable[[torch.Tensor], torch.Tensor] | None = None, prior: float = 0.0) -> torch.Tensor:
    """The registration loss of a batch (a cascade reads one cached tensor per image: its prefix
    map, or with ``inputs`` the image that ``inputs`` turns into one)."""
    if hasattr(net, "prefix"):
        q, s = (query[0], support[0]) if inputs is None else (inputs(query[0]), inputs(support[0]))
        return net.loss(q, s, shots, prior)
    return net.loss(query, support, shots, prior)


def random_pose(n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 2, 3]`` affine maps: a turn of up to +-30 degrees and a shift of up to 0.1 of the half-side."""
    a = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(30)
    t = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.1
    return torch.stack([torch.cos(a), -torch.sin(a), t[:, 0], torch.sin(a), torch.cos(a), t[:, 1]], 1).view(n, 2, 3)


def augment_feature_pose(maps: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Per-stage feature maps ``[N, C, h, w]`` of N images, each image warped by its own
    ``random_pose`` (the same one at every stage; bilinear, reflection padding)."""
    from fsiad.fewshot.methods.regad_net import warp

    theta = random_pose(maps[0].shape[0], generator)
    return [warp(m, theta.to(m.device)) for m in maps]


def augment_pose_exposure(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each ``[N, 3, S, S]`` image in [0, 1] posed by ``random_pose`` (bilinear, reflection
    padding), then gain 0.7-1.3 and offset +-0.1, clamped."""
    from fsiad.fewshot.methods.regad_net import warp

    n = images.shape[0]
    x = warp(images, random_pose(n, generator).to(images.device))
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.3
    offset = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    return (x * gain.to(x) + offset.to(x)).clamp(0, 1)


def _pair_inputs(encoder: Any, net: Any, generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cached images -> frozen-prefix maps, augmented (``augment_pose_exposure``) when a generator is given."""
    def run(images: torch.Tensor) -> torch.Tensor:
        x = images if generator is None else augment_pose_exposure(images, generator)
        with torch.no_grad():
            return net.prefix(encoder.stem(x))
    return run


def _cascade_setup(cfg: TrainConfig, pools: dict[str, list[Any]], encoder: Any, layers: Sequence[Any]):
    """(cascade net, cached frozen-prefix maps (or images, with ``augment_pairs``) per category as
    one-entry lists, channels, grids)."""
    from fsiad.fewshot.methods.regad_net import CascadeRegistration

    stages = cascade_stages(encoder, layers)
    start = [n for n, _ in stages].index(str(layers[0]))
    first = encoder.patch_features(next(pool_batches(next(iter(pools.values())), cfg.image_size, 1)), list(layers))
    channels = [int(f.shape[-1]) for f in first]
    grids = [[int(f.shape[1]), int(f.shape[2])] for f in first]  # the stage copies have the encoder's shapes
    net = CascadeRegistration(stages, [str(x) for x in layers], channels, grids, cfg.stn_mode, start)
    feats: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for name, items in pools.items():
            maps = [imgs if cfg.augment_pairs else net.prefix(encoder.stem(imgs)).cpu()
                    for imgs in pool_batches(items, cfg.image_size)]
            feats[name] = [torch.cat(maps)]
    return net.to(encoder.device), feats, channels, grids
