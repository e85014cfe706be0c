"""Batch scoring on Ray Data: ``fsiad predict --engine ray [--address ADDR] [--num-actors N]``.

Pipeline::

    targets (folders, globs, list files, CSV / Parquet column ``path``)  -> expand_targets (driver)
    -> skip what OUT already holds (same model + threshold fingerprint, row + map present)
    -> ray.data.from_items([{path, name}]) -> map_batches(ScoreActor, ActorPoolStrategy(size=N))
       each actor loads the model ONCE (a bundle with onnxruntime, or a model folder with torch),
       reads and scores its batch, writes maps/<name>.npy and overlays/<name>.png itself
    -> the driver streams the result rows: scores.csv appended + fsynced, and one Parquet part
       per batch under parquet/ (incremental); at the end scores.csv in input order,
       scores.parquet, errors.csv and run.json (``folder.LightOutput``).

An interrupted run keeps every row whose map was written; a rerun with the same model and OUT
scores only the rest. Workers write OUT directly: on a multi-node cluster OUT and the targets
must be on a filesystem every node sees (NFS, a mounted bucket) and fsiad installed on every
node. Overlays use a fixed colour scale per run (0 .. 2 x threshold, anomalous = upper half;
without a threshold each image's own range), since workers cannot know the run's min..max.

Ray is optional (``pip install 'fsiad[ray]'``); without it ``--engine ray`` is one line saying so.
"""

from __future__ import annotations

import csv
import glob
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.export.bundle import is_bundle, sha256_file
from fsiad.fewshot.export.folder import LightOutput, Row, write_map, write_overlay

INSTALL_HINT = "pip install 'fsiad[ray]'"
DEFAULT_BATCH = 16
_GLOB = set("*?[")


def require_ray() -> Any:
    """``import ray`` or a one-line ``OptionError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OptionError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


# -- targets ------------------------------------------------------------------------------------
def _column(path: Path) -> list[str]:
    """The ``path`` column (else the first column) of a CSV or Parquet file, relative to its folder."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        col = "path" if "path" in table.column_names else table.column_names[0]
        values = [str(v) for v in table.column(col).to_pylist() if v]
    else:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            idx = header.index("path") if "path" in header else 0
            values = [r[idx] for r in reader if len(r) > idx and r[idx].strip()]
    return [v if Path(v).is_absolute() else str(path.parent / v) for v in values]


def expand_targets(targets: Sequence[str | Path]) -> list[Path]:
    """Folders (recursive), globs (``**`` allowed), ``.txt``/``.lst`` list files (one path a line),
    ``.csv``/``.parquet`` files (column ``path``) and image files -> image paths, first occurrence kept."""
    from fsiad.fewshot.data.base import DatasetError
    from fsiad.fewshot.data.io import is_image_file
    from fsiad.fewshot.workflow.targets import collect_images

    out: list[Path] = []
    for t in map(str, targets):
        p = Path(t)
        suffix = p.suffix.lower()
        if _GLOB & set(t) and not p.exists():
            hits = sorted(Path(h) for h in glob.glob(t, recursive=True))
            out.extend(collect_images([h for h in hits if h.is_dir() or is_image_file(h)]))
        elif p.is_file() and suffix in (".txt", ".lst"):
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            out.extend(Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines)
        elif p.is_file() and suffix in (".csv", ".parquet"):
            out.extend(map(Path, _column(p)))
        else:
            out.extend(collect_images([p]))
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise DatasetError(f"no images found in {', '.join(map(str, targets))}")
    return unique


# -- the model on a worker ----------------------------------------------------------------------
def model_identity(model: str | Path) -> tuple[dict[str, Any], float | None]:
    """``(resume fingerprint key, threshold)`` of a bundle or a model folder, without loading it."""
    import json

    model = Path(model)
    if is_bundle(model):
        meta = json.loads((model / "bundle.json").read_text())
        thr = (meta.get("threshold") or {}).get("threshold")
        return {"engine": "onnxruntime", "bundle": sha256_file(model / "bundle.json"), "threshold": thr}, thr
    from fsiad.fewshot.workflow.model import read_model_meta

    meta = read_model_meta(model)
    thr = (meta.get("threshold") or {}).get("threshold")
    state = model / "state.safetensors"
    return {"engine": "torch", "model": sha256_file(model / "model.json"),
            "state": sha256_file(state) if state.is_file() else None, "threshold": thr}, thr


class _TorchScorer:
    def __init__(self, model: str, device: str | None, threads: int) -> None:
        import torch
        from fsiad.fewshot.workflow.model import load_model

        torch.set_num_threads(max(1, threads))
        self.method, _ = load_model(model, device=device or "cpu")
        p = self.method.preprocess
        self.geometry = (p.size, p.resize, p.interpolation)

    def score(self, paths: list[str]) -> tuple[list[int], list[tuple[int, str]], np.ndarray, np.ndarray, list]:
        """As ``workflow.runner.score_chunks``: each target prepared alone, readable ones predicted together."""
        import torch
        from fsiad.fewshot.data.base import Sample

        parts, ok, errors = [], [], []
        for i, p in enumerate(paths):
            try:
                parts.append(self.method.prepare([Sample(path=Path(p))]))
                ok.append(i)
            except (OSError, ValueError) as e:
                errors.append((i, str(e).removeprefix(f"{p}: ")))
        if not ok:
            return ok, errors, np.zeros(0), np.zeros(0), []
        if all(isinstance(x, torch.Tensor) for x in parts):
            batch = torch.cat(parts)
        else:  # e.g. knn's native-geometry batches: prepare the readable ones together
            batch = self.method.prepare([Sample(path=Path(paths[i])) for i in ok])
        r = self.method.predict(batch)
        return ok, errors, r.image_scores.float().numpy(), r.anomaly_maps.float().numpy(), \
            [_view(paths[i], *self.geometry) for i in ok]


def _view(path: str, size: int, resize: int | None, interpolation: str) -> np.ndarray:
    """The image as the model sees it (resize + centre crop), ``SxSx3`` uint8, for the overlay."""
    from fsiad.fewshot.data.io import read_image
    from fsiad.fewshot.export.scoring import resize_crop

    x = resize_crop(read_image(path), size, resize, interpolation)
    return (x.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


class _BundleScorer:
    def __init__(self, model: str, device: str | None, threads: int) -> None:
        from fsiad.fewshot.export.runner import BundleModel

        self.model = BundleModel.load(model, device=device, threads=max(1, threads))

    def score(self, paths: list[str]) -> tuple[list[int], list[tuple[int, str]], np.ndarray, np.ndarray, list]:
        from fsiad.fewshot.data.io import read_image

        x, ok, errors = [], [], []
        for i, p in enumerate(paths):
            try:
                x.append(self.model.preprocess(read_image(p)))
                ok.append(i)
            except (OSError, ValueError) as e:
                errors.append((i, str(e).removeprefix(f"{p}: ")))
        if not ok:
            return ok, errors, np.zeros(0), np.zeros(0), []
        batch = np.stack(x)
        scores, maps = self.model.score_tensors(batch)
        views = [(b.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8) for b in batch]
        return ok, errors, scores, maps, views


class ScoreActor:
    """Ray Data class UDF: loads the model once, scores batches of ``{path, name}`` rows, writes maps."""

    def __init__(self, model: str, out: str, threshold: float | None, device: str | None = None,
                 threads: int = 1) -> None:
        self.out = Path(out)
        self.threshold = threshold
        cls = _BundleScorer if is_bundle(model) else _TorchScorer
        self.scorer = cls(model, device, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, names = [str(p) for p in batch["path"]], [str(n) for n in batch["name"]]
        ok, errors, scores, maps, views = self.scorer.score(paths)
        score = np.full(len(paths), np.nan)
        error = [""] * len(paths)
        for i, why in errors:
            error[i] = why or "unreadable"
        (self.out / "overlays").mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(ok):
            amap = maps[j]
            write_map(self.out / "maps" / f"{names[i]}.npy", amap)
            hi = 2.0 * self.threshold if self.threshold else float(amap.max())
            lo = 0.0 if self.threshold else float(amap.min())
            write_overlay(self.out / "overlays" / f"{names[i]}.png", views[j], amap, lo, hi)
            score[i] = float(scores[j])
        return {"path": np.array(paths, dtype=object), "name": np.array(names, dtype=object),
                "score": score, "error": np.array(error, dtype=object)}


# -- driver ---------------------------------------------------------------------------------------
def _gpus_per_actor(ray: Any, device: str | None) -> float:
    if device == "cpu":
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def predict_ray(model: str | Path, targets: Sequence[str | Path], out: str | Path, *, labels: str | Path | None = None,
                address: str | None = None, num_actors: int | None = None, batch_size: int | None = None,
                device: str | None = None, overwrite: bool = False, progress: bool = False,
                log: Callable[[str], None] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Score ``targets`` with ``model`` (bundle or model folder) on Ray into ``out``; returns ``run.json``'s content.

    ``address``: an existing cluster (``ray://host:10001`` or ``host:6379``; ``auto`` = the
    local node's cluster); ``None`` starts (or reuses) a local Ray. ``num_actors`` defaults to
    the cluster's CPUs (GPUs when a GPU per actor is used). ``stop_after``: stop after that many
    new rows (tests: a simulated interruption, raises ``KeyboardInterrupt``).
    """
    ray = require_ray()
    from fsiad.fewshot.fileio import check_out_not_input
    from fsiad.fewshot.workflow.targets import output_names, read_labels_csv

    log = log or (lambda _line: None)
    t0 = time.perf_counter()
    if not targets:
        raise OptionError("no TARGET given: pass image files, folders, globs or list files to score")
    model, out = Path(model), Path(out)
    check_out_not_input(out, [*[t for t in targets if not (_GLOB & set(str(t)))], labels, model])
    key, threshold = model_identity(model)
    paths = expand_targets(targets)
    names = output_names(paths)
    label_of = read_labels_csv(labels) if labels else {}
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                 logging_level="ERROR")
    gpus = _gpus_per_actor(ray, device)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_actors = num_actors or max(1, int(ray.cluster_resources().get("GPU", 0)) if gpus else cpus)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    if not progress:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows: dict[str, Row] = {}
    errors: dict[str, tuple[str, str]] = {}
    with LightOutput(out, "fsiad predict --engine ray", threshold) as folder:
        reused = folder.start(key, [(str(p), n) for p, n in zip(paths, names, strict=True)], overwrite)
        rows.update(reused)
        if reused:
            log(f"resuming: {len(reused)} target(s) already scored in {out} with the same model")
        parts = out / "parquet"
        parts.mkdir(exist_ok=True)
        for f in parts.glob("part-*.parquet"):
            f.unlink()
        todo = [{"path": str(p), "name": n} for p, n in zip(paths, names, strict=True) if n not in reused]
        t_pred = time.perf_counter()
        n_new = 0
        if todo:
            log(f"scoring {len(todo)} image(s) on Ray with {n_actors} actor(s)"
                + (f", {gpus:g} GPU each" if gpus else "") + " ...")
            bs = max(1, min(batch_size or DEFAULT_BATCH, -(-len(todo) // n_actors)))
            blocks = max(1, min(len(todo), max(2 * n_actors, -(-len(todo) // bs))))
            ds = ray.data.from_items(todo, override_num_blocks=blocks)
            scored = ds.map_batches(
                ScoreActor, batch_size=bs, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=0 if gpus else 1, num_gpus=gpus,
                fn_constructor_kwargs={"model": str(model.resolve()), "out": str(out.resolve()), "threshold": threshold,
                                       "device": "cuda" if gpus else device, "threads": 1})
            stream = scored.iter_batches(batch_size=None, batch_format="numpy")
            try:
                n_new = _collect(stream, folder, rows, errors, parts, label_of, threshold, len(paths), stop_after,
                                 log if progress else None)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # an interrupted run stops its actors before the lock is released
        predict_s = time.perf_counter() - t_pred
        ordered = [rows[n] for n in names if n in rows]
        record = {"settings": {"command": "predict", "engine": "ray", "model": str(model), "address": address,
                               "num_actors": n_actors, "gpus_per_actor": gpus, "batch_size": batch_size or DEFAULT_BATCH,
                               "targets": [str(t) for t in targets], "n_targets": len(paths),
                               "labels": str(labels) if labels else None, "fingerprint_key": key},
                  "resumed": len(reused), "n_rescored": n_new, "predict_s": round(predict_s, 3),
                  "images_per_s": round(n_new / predict_s, 3) if n_new and predict_s > 0 else None,
                  "overlay_colour_scale": "0 .. 2 x threshold" if threshold else "each image's own min..max",
                  "wall_s": round(time.perf_counter() - t0, 3)}
        record = folder.finish(ordered, [errors[n] for n in names if n in errors], record, parquet=True)
        for f in parts.glob("part-*.parquet"):
            f.unlink()
        parts.rmdir()
        return record


def _collect(stream: Any, folder: LightOutput, rows: dict[str, Row], errors: dict[str, tuple[str, str]], parts: Path,
             label_of: dict[Path, int], threshold: float | None, total: int, stop_after: int | None,
             log: Callable[[str], None] | None) -> int:
    """Append each result batch to scores.csv and a Parquet part; returns the number of new rows."""
    n_new = 0
    for k, batch in enumerate(stream):
        new = []
        for p, n, s, e in zip(batch["path"], batch["name"], batch["score"], batch["error"], strict=True):
            if e:
                errors[str(n)] = (str(p), str(e))
            else:
                new.append(Row(str(p), str(n), float(s), label_of.get(Path(p).resolve())))
        folder.append(new)
        if new:
            _write_part(parts / f"part-{k:06d}.parquet", new, threshold)
        rows.update((r.name, r) for r in new)
        n_new += len(new)
        if log is not None:
            log(f"scoring: {len(rows)}/{total}")
        if stop_after is not None and n_new >= stop_after:
            raise KeyboardInterrupt(f"stopped after {n_new} new rows (stop_after)")
    return n_new


def _write_part(path: Path, rows: list[Row], threshold: float | None) -> None:
    from fsiad.fewshot.export.folder import write_parquet

    write_parquet(path, rows, threshold)
    os.utime(path)
