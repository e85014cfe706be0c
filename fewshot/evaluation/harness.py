"""Evaluation harness: categories x shots x seeds -> results files (see ``results.py``).

One method instance per category (so encoders and their feature caches are loaded once);
``fit`` is called again for every (shots, seed) and must replace the previous state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.data import load_dataset
from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.io import image_size, read_mask
from fsiad.fewshot.data.sampling import sample_shots
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.evaluation.results import ResultsStore, shots_key
from fsiad.fewshot.fileio import OutputLock, check_out_not_input, code_fingerprint
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig, create_method, method_class
from fsiad.fewshot.methods.regime import check_shots as regime_check
from fsiad.fewshot.metrics import image_metrics, pixel_metrics
from tqdm import tqdm

log = logging.getLogger(__name__)

ALL = "all"
#: ``fsiad eval`` shot settings when none are given: each regime's natural protocol.
DEFAULT_SHOTS: dict[str, list[int | str]] = {
    "full-data": [ALL],
    "few-shot": [1, 2, 4, 8],
    "zero-shot": [0],
    "zero-shot-transductive": [0],
}


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        method: registered method name.
        dataset: dataset kind (``mvtec``, ``visa``, ``folder``, ``textile``, ``mvtec3d``, ...).
        root: dataset root (``None`` for embedded datasets).
        out: output folder of the results files.
        categories: subset of categories (``None`` = all).
        shots: shot counts; ``"all"`` = the whole normal training pool (full-data); ``None`` =
            the method's regime default (``DEFAULT_SHOTS``). A count larger than a
            category's pool is refused (results record what ran).
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
    shots: list[int | str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    method_config: MethodConfig = field(default_factory=MethodConfig)
    chunk_size: int = 32
    cache_bytes: int = 3 << 30


class PreparedBatches:
    """Re-iterable, memory-bounded view of samples prepared by a method in chunks.

    Iterating yields whatever ``method.prepare`` returns for each chunk. When the whole set
    fits in ``keep_bytes`` it is prepared once and kept; otherwise it is re-read each pass.
    """

    def __init__(self, method: AnomalyMethod, samples: Sequence[Sample], chunk: int, keep_bytes: int = 0,
                 on_images: Callable[[int], None] | None = None) -> None:
        self.method, self.samples, self.chunk = method, list(samples), chunk
        self._kept: list[tuple[Any, int]] | None = None
        self._keep_bytes = keep_bytes
        #: called with the number of images of each chunk as it is handed out (progress bars)
        self.on_images = on_images

    def __len__(self) -> int:
        return len(self.samples)

    def _chunks(self) -> Iterator[tuple[Any, int]]:
        for i in range(0, len(self.samples), self.chunk):
            part = self.samples[i : i + self.chunk]
            yield self.method.prepare(part), len(part)

    def _tick(self, n: int) -> None:
        if self.on_images is not None:
            self.on_images(n)

    def __iter__(self) -> Iterator[Any]:
        if self._kept is not None:
            for part, n in self._kept:
                yield part
                self._tick(n)
            return
        kept: list[tuple[Any, int]] | None = [] if self._keep_bytes > 0 else None
        size = 0
        for part, n in self._chunks():
            if kept is not None:
                size += _nbytes(part)
                kept = kept + [(part, n)] if size <= self._keep_bytes else None
            yield part
            self._tick(n)
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
        h, w = image_size(s.path)  # from the header: nothing decoded, bombs refused
        masks.append(read_mask(s.mask_path, (h, w), mode=s.extra.get("mask_mode", "auto"), image=s.path))
    return method.preprocess.masks(masks)


def config_fingerprint(cfg: EvalConfig, resolve_paths: bool = True) -> str:
    """Hash of everything that changes the numbers (not shots/seeds/categories, which resume).

    Paths (``root``, ``weights``, ``prompts``) are resolved, so ``data/mvtec`` and
    ``./data/../data/mvtec`` are one configuration; ``resolve_paths=False`` gives the older
    fingerprint that hashed them as spelled (still accepted when resuming).
    """
    mc = asdict(cfg.method_config)
    mc.pop("device", None)
    mc.pop("batch_size", None)
    root: Any = cfg.root
    if resolve_paths:
        root = _resolved(cfg.root)
        for key in ("weights", "prompts"):
            mc[key] = _resolved(mc.get(key))
    blob = json.dumps({"method": cfg.method, "dataset": cfg.dataset, "root": str(root), "config": mc},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolved(path: str | Path | None) -> str | None:
    return None if path is None else os.path.realpath(os.path.expanduser(os.fspath(path)))


def default_shots(method: str) -> list[int | str]:
    """The shot settings of a method's natural regime (``fsiad eval`` without ``--shots``)."""
    cls = method_class(method)
    if cls.transductive:
        return [0]
    return list(DEFAULT_SHOTS.get(cls.regime, [0]))


def check_shots(method: str, shots: Sequence[int | str]) -> None:
    """Refuse shot settings the method cannot run, before any run starts (the one rule of
    ``fsiad.fewshot.methods.regime``, applied to each count; ``all`` always has references).

    Raises:
        OptionError: names the method, its regime and the settings it accepts.
    """
    cls = method_class(method)
    default = ",".join(map(str, default_shots(method)))
    for k in shots:
        if k == ALL:
            if cls.transductive:
                regime_check(cls, 1, default)  # refused: a transductive method takes no references
            continue
        regime_check(cls, int(k), default)


def check_pools(categories: Sequence[Category], shots: Sequence[int | str]) -> None:
    """Refuse a shot count larger than a category's normal training pool (or an empty pool).

    The results record what ran, so a request that cannot be honoured is refused rather than
    silently run with fewer references.
    """
    for cat in categories:
        pool = len(cat.train)
        for k in shots:
            if k == ALL and pool == 0:
                raise DatasetError(f"--shots all: category {cat.name!r} has no normal training images")
            if k != ALL and int(k) > pool:
                raise DatasetError(
                    f"--shots {k}: category {cat.name!r} has only {pool} normal training images; "
                    f"use --shots all (= {pool} here) or counts <= {pool}")


def _resolve_shots(shots: int | str, category: Category) -> int:
    if shots == ALL:
        return len(category.train)
    return int(shots)


def evaluate(cfg: EvalConfig, progress: Callable[[str], None] | None = None,
             show_bars: bool = False) -> dict[str, Any]:
    """Run every (category, shots, seed) not yet in ``cfg.out``; return ``results.json``'s content.

    Everything that can be checked is checked before the first run: the shot settings against
    the method's regime and the categories' training pools, ``out`` against the dataset root,
    the method options, encoder and weights (the first method is built before ``out`` is
    touched), then the lock on ``out`` and the stored results (resume / merge).

    Args:
        cfg: what to evaluate (``cfg.shots=None``: the method's default, see ``default_shots``).
        progress: receives one line per finished run (default: ``logging`` at INFO).
        show_bars: tqdm bars on stderr: runs (with ETA) and the phases of the current run.

    Raises:
        OutputLockedError: another run writes to ``cfg.out``.
        OutputOverlapError: ``cfg.out`` is inside the dataset root or contains it.
        ResumeError: ``cfg.out`` holds another run's or unreadable results.
        OptionError, DatasetError: shots the method or the dataset cannot honour.
        OSError: ``cfg.out`` cannot be created or written.
    """
    say = progress or log.info
    shots = _unique([_shot_setting(k) for k in (cfg.shots if cfg.shots is not None else default_shots(cfg.method))])
    if not shots:
        raise OptionError("--shots: give at least one shot count (or 'all')")
    seeds = _unique(cfg.seeds)
    if not seeds:
        raise OptionError("--seeds: give at least one seed")
    check_shots(cfg.method, shots)
    check_out_not_input(cfg.out, [cfg.root])
    categories = load_dataset(cfg.dataset, cfg.root, cfg.categories)
    if not categories:
        raise DatasetError(f"{cfg.root}: no categories found for dataset {cfg.dataset!r}")
    check_pools(categories, shots)
    meta: dict[str, Any] = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "root": _resolved(cfg.root),
        "categories": [c.name for c in categories],
        "shots": [shots_key(s) for s in shots],
        "seeds": seeds,
        "config_fingerprint": config_fingerprint(cfg),
        "code_fingerprint": code_fingerprint(),  # rows of other code are never resumed into these
        "method_config": asdict(cfg.method_config),
    }
    # method options, encoder and weights are checked before --out is touched
    first = _build_method(cfg, categories[0])
    with OutputLock(cfg.out, "fsiad eval"):
        store = ResultsStore(cfg.out, meta, compatible_fingerprints=[config_fingerprint(cfg, resolve_paths=False)])
        plan = [
            (category, [(k, seed) for k in shots for seed in (seeds[:1] if k == 0 else seeds)
                        if not store.done(category.name, k, seed)])
            for category in categories
        ]
        for category, todo in plan:
            if not todo:
                say(f"{category.name}: all runs already in {cfg.out}, skipped")
        plan = [(c, todo) for c, todo in plan if todo]
        bars = _Bars(sum(len(todo) for _, todo in plan), enabled=show_bars)
        try:
            for category, todo in plan:
                method = first if category is categories[0] else _build_method(cfg, category)
                _run_category(cfg, store, method, category, todo, bars, say)
        finally:
            bars.close()
        if store.rows:  # nothing left to do still refreshes the files (merged meta, a deleted results.md)
            store.flush()
        return store.summary()


def _shot_setting(k: int | str) -> int | str:
    """``"all"`` or a count >= 0 (``"4"`` -> ``4``)."""
    if k == ALL:
        return ALL
    try:
        n = int(k)
    except (TypeError, ValueError):
        raise OptionError(f"--shots {k!r}: expected a count >= 0 or 'all'") from None
    if n < 0 or str(n) != str(k).strip():
        raise OptionError(f"--shots {k!r}: expected a count >= 0 or 'all'")
    return n


def _unique(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _build_method(cfg: EvalConfig, category: Category) -> AnomalyMethod:
    mc = MethodConfig(**{**asdict(cfg.method_config), "class_name": _class_name(cfg, category)})
    method = create_method(cfg.method, mc)
    _enable_caches(method, cfg.cache_bytes // 2)
    return method


def _run_category(cfg: EvalConfig, store: ResultsStore, method: AnomalyMethod, category: Category,
                  todo: list[tuple[int | str, int]], bars: _Bars, say: Callable[[str], None]) -> None:
    test = PreparedBatches(method, category.test, cfg.chunk_size, keep_bytes=cfg.cache_bytes // 2)
    labels = np.array([s.label for s in category.test], dtype=np.int64)
    masks = load_masks(method, category.test) if category.has_masks else None
    for k, seed in todo:
        bars.start_run(f"{category.name} shots={shots_key(k)} seed={seed}")
        n_shots = _resolve_shots(k, category)
        refs = sample_shots(category.train, n_shots, seed) if n_shots < len(category.train) else list(category.train)
        _seed_everything(seed)
        t0 = time.perf_counter()
        with bars.phase("fit", len(refs)) as tick:
            method.fit(PreparedBatches(method, refs, cfg.chunk_size, on_images=tick) if refs else None)
        t1 = time.perf_counter()
        with bars.phase("predict", len(category.test)) as tick:
            test.on_images = tick
            try:
                result = method.predict(test)
            finally:
                test.on_images = None
        t2 = time.perf_counter()
        with bars.phase("metrics", 2 if masks is not None else 1, unit="step") as tick:
            row: dict[str, Any] = {"category": category.name, "shots": k, "seed": seed}
            row.update(image_metrics(result.image_scores.numpy(), labels))
            tick(1)
            if masks is not None:
                if tuple(result.anomaly_maps.shape) != tuple(masks.shape):
                    raise RuntimeError(
                        f"{cfg.method}: anomaly maps {tuple(result.anomaly_maps.shape)} do not match "
                        f"masks {tuple(masks.shape)}"
                    )
                row.update(pixel_metrics(result.anomaly_maps.numpy(), masks.numpy()))
                tick(1)
        t3 = time.perf_counter()
        row.update(
            n_test=len(category.test), n_anomalous=int(labels.sum()), fit_s=round(t1 - t0, 3),
            predict_s=round(t2 - t1, 3), metrics_s=round(t3 - t2, 3),
            images_per_s=round(len(category.test) / max(t2 - t1, 1e-9), 3),
        )
        _record_method_meta(store.meta, method, k)
        store.add(row, [str(s.path) for s in refs])
        bars.end_run()
        say(
            f"{category.name} shots={k} (used {len(refs)}) seed={seed}: "
            + ", ".join(f"{m}={row[m]:.4f}" for m in ("image_auroc", "pixel_auroc", "pixel_aupro") if row.get(m) is not None)
            + f" (fit {row['fit_s']:.1f} s, predict {row['predict_s']:.1f} s, metrics {row['metrics_s']:.1f} s, "
            + f"{row['images_per_s']:.1f} img/s)"
        )


class _Bars:
    """tqdm bars on stderr: one over all runs (ETA of the benchmark), one for the current phase.

    Without a terminal (stderr to a log file) only the runs bar is kept, redrawn every few
    seconds: the phase bars' cursor movements would litter the log.
    """

    def __init__(self, total_runs: int, enabled: bool) -> None:
        self.enabled = enabled and total_runs > 0
        tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.interval = 0.1 if tty else 5.0
        self.phases = self.enabled and tty
        self.runs = tqdm(total=total_runs, unit="run", desc="eval", file=sys.stderr, disable=not self.enabled,
                         position=0, dynamic_ncols=True, mininterval=self.interval)

    def start_run(self, name: str) -> None:
        self.runs.set_description_str(name)

    def end_run(self) -> None:
        self.runs.update(1)

    @contextlib.contextmanager
    def phase(self, name: str, total: int, unit: str = "img") -> Iterator[Callable[[int], None]]:
        bar = tqdm(total=total, unit=unit, desc=f"  {name}", file=sys.stderr, disable=not self.phases,
                   position=1, leave=False, dynamic_ncols=True, mininterval=self.interval)

        def tick(n: int) -> None:
            bar.update(max(0, min(n, bar.total - bar.n)))

        try:
            yield tick
        finally:
            bar.close()

    def close(self) -> None:
        self.runs.close()


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
