"""Evaluation harness: categories x shots x seeds -> results files (see ``results.py``).

One method instance per category (so encoders and their feature caches are loaded once);
``fit`` is called again for every (shots, seed) and must replace the previous state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.data import load_dataset
from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.io import read_mask
from fsiad.fewshot.data.sampling import sample_shots
from fsiad.fewshot.evaluation.results import ResultsStore, shots_key
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig, create_method
from fsiad.fewshot.metrics import image_metrics, pixel_metrics
from PIL import Image

log = logging.getLogger(__name__)

ALL = "all"


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        method: registered method name.
        dataset: dataset kind (``mvtec``, ``visa``, ``folder``, ``textile``, ``mvtec3d``, ...).
        root: dataset root (``None`` for embedded datasets).
        out: output folder of the results files.
        categories: subset of categories (``None`` = all).
        shots: shot counts; ``"all"`` = the whole normal training pool (full-data).
        seeds: seeds of the reference sampling (zero-shot and full-data runs use the seeds too:
            they seed coresets / random projections; zero-shot runs use only the first seed).
        method_config: options passed to the method.
        chunk_size: images loaded and preprocessed at a time.
        cache_bytes: in-memory budget for preprocessed test images and encoder features.
    """

    method: str
    dataset: str
    root: Path | None
    out: Path
    categories: list[str] | None = None
    shots: list[int | str] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    method_config: MethodConfig = field(default_factory=MethodConfig)
    chunk_size: int = 32
    cache_bytes: int = 3 << 30


class PreparedBatches:
    """Re-iterable, memory-bounded view of samples prepared by a method in chunks.

    Iterating yields whatever ``method.prepare`` returns for each chunk. When the whole set
    fits in ``keep_bytes`` it is prepared once and kept; otherwise it is re-read each pass.
    """

    def __init__(self, method: AnomalyMethod, samples: Sequence[Sample], chunk: int, keep_bytes: int = 0) -> None:
        self.method, self.samples, self.chunk = method, list(samples), chunk
        self._kept: list[Any] | None = None
        self._keep_bytes = keep_bytes

    def __len__(self) -> int:
        return len(self.samples)

    def _chunks(self) -> Iterator[Any]:
        for i in range(0, len(self.samples), self.chunk):
            yield self.method.prepare(self.samples[i : i + self.chunk])

    def __iter__(self) -> Iterator[Any]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[Any] | None = [] if self._keep_bytes > 0 else None
        size = 0
        for part in self._chunks():
            if kept is not None:
                size += _nbytes(part)
                kept = kept + [part] if size <= self._keep_bytes else None
            yield part
        if kept is not None:
            self._kept = kept


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_nbytes(v) for v in vars(obj).values())
    return 0


def load_masks(method: AnomalyMethod, samples: Sequence[Sample]) -> torch.Tensor:
    """Ground-truth masks of ``samples`` through the method's geometry -> bool ``[N, S, S]``."""
    masks: list[np.ndarray | None] = []
    for s in samples:
        if s.mask_path is None:
            masks.append(None)
            continue
        try:
            with Image.open(s.path) as im:
                w, h = im.size
        except OSError as e:
            raise DatasetError(f"{s.path}: cannot read image size ({e})") from e
        masks.append(read_mask(s.mask_path, (h, w), mode=s.extra.get("mask_mode", "auto"), image=s.path))
    return method.preprocess.masks(masks)


def config_fingerprint(cfg: EvalConfig) -> str:
    """Hash of everything that changes the numbers (not shots/seeds/categories, which resume)."""
    mc = asdict(cfg.method_config)
    mc.pop("device", None)
    mc.pop("batch_size", None)
    blob = json.dumps({"method": cfg.method, "dataset": cfg.dataset, "root": str(cfg.root), "config": mc},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolve_shots(shots: int | str, category: Category) -> int:
    if shots == ALL:
        return len(category.train)
    return int(shots)


def evaluate(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every (category, shots, seed) not yet in ``cfg.out``; return ``results.json``'s content."""
    say = progress or log.info
    categories = load_dataset(cfg.dataset, cfg.root, cfg.categories)
    if not categories:
        raise DatasetError(f"{cfg.root}: no categories found for dataset {cfg.dataset!r}")
    meta: dict[str, Any] = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "root": str(cfg.root) if cfg.root else None,
        "categories": [c.name for c in categories],
        "shots": [shots_key(s) for s in cfg.shots],
        "seeds": list(cfg.seeds),
        "config_fingerprint": config_fingerprint(cfg),
        "method_config": asdict(cfg.method_config),
    }
    store = ResultsStore(cfg.out, meta)
    for category in categories:
        todo = [
            (k, seed)
            for k in cfg.shots
            for seed in (cfg.seeds[:1] if k in (0, "0") else cfg.seeds)
            if not store.done(category.name, k, seed)
        ]
        if not todo:
            say(f"{category.name}: all runs already in {cfg.out}, skipped")
            continue
        mc = MethodConfig(**{**asdict(cfg.method_config), "class_name": _class_name(cfg, category)})
        method = create_method(cfg.method, mc)
        _enable_caches(method, cfg.cache_bytes // 2)
        test = PreparedBatches(method, category.test, cfg.chunk_size, keep_bytes=cfg.cache_bytes // 2)
        labels = np.array([s.label for s in category.test], dtype=np.int64)
        masks = load_masks(method, category.test) if category.has_masks else None
        for k, seed in todo:
            n_shots = _resolve_shots(k, category)
            refs = sample_shots(category.train, n_shots, seed) if n_shots < len(category.train) else list(category.train)
            _seed_everything(seed)
            t0 = time.perf_counter()
            method.fit(PreparedBatches(method, refs, cfg.chunk_size) if refs else None)
            t1 = time.perf_counter()
            result = method.predict(test)
            t2 = time.perf_counter()
            row: dict[str, Any] = {"category": category.name, "shots": k, "seed": seed}
            row.update(image_metrics(result.image_scores.numpy(), labels))
            if masks is not None:
                if tuple(result.anomaly_maps.shape) != tuple(masks.shape):
                    raise RuntimeError(
                        f"{cfg.method}: anomaly maps {tuple(result.anomaly_maps.shape)} do not match "
                        f"masks {tuple(masks.shape)}"
                    )
                row.update(pixel_metrics(result.anomaly_maps.numpy(), masks.numpy()))
            row.update(
                n_test=len(category.test), n_anomalous=int(labels.sum()), fit_s=round(t1 - t0, 3),
                predict_s=round(t2 - t1, 3), images_per_s=round(len(category.test) / max(t2 - t1, 1e-9), 3),
            )
            _record_method_meta(store.meta, method, k)
            store.add(row, [str(s.path) for s in refs])
            say(
                f"{category.name} shots={k} seed={seed}: "
                + ", ".join(f"{m}={row[m]:.4f}" for m in ("image_auroc", "pixel_auroc", "pixel_aupro") if row.get(m) is not None)
                + f" ({row['images_per_s']:.1f} img/s)"
            )
    return store.summary()


def _class_name(cfg: EvalConfig, category: Category) -> str:
    default = "object"
    if cfg.method_config.class_name and cfg.method_config.class_name != default:
        return cfg.method_config.class_name
    return category.name


def _enable_caches(method: AnomalyMethod, max_bytes: int) -> None:
    for enc in method.encoders():
        enc.enable_cache(max_bytes)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _record_method_meta(meta: dict[str, Any], method: AnomalyMethod, shots: int | str) -> None:
    d = method.describe()
    pre = d.get("preprocess") or method.preprocess.describe()
    meta["regime_by_shots"] = {**meta.get("regime_by_shots", {}), shots_key(shots): d.get("regime", method.regime)}
    meta["regime"] = ", ".join(sorted(set(meta["regime_by_shots"].values())))
    meta["method_description"] = d
    flat = {**d, **d["encoder"]} if isinstance(d.get("encoder"), dict) else d
    for key in ("encoder", "weights_source", "weights_path", "weights_checksum", "precision", "device"):
        if key in flat:
            meta[key] = flat[key]
    meta["image_size"] = pre.get("size")
    meta["resize"] = pre.get("resize") or pre.get("size")
    meta["crop"] = pre.get("crop")
    meta["interpolation"] = pre.get("interpolation")
    meta["mask_interpolation"] = pre.get("mask_interpolation", "nearest")
    meta["metric_resolution"] = pre.get("metric_resolution")
    meta["aupro"] = "official MVTec definition, 8-connected regions, FPR limit 0.3, normalised by 0.3"
