"""Fit on references, score targets, write per-image outputs, scores.csv, errors.csv, report, run.json.

Output folder layout::

    scores.csv      path, name, score, decision, label   (input order; decision empty without threshold)
    errors.csv      path, reason                          (targets that could not be read)
    maps/<name>.npy raw anomaly map [S, S] float32 at the method's working resolution
    overlays/<name>.png  map over the preprocessed input (colour scale = min..max of the run's maps)
    report.html     self-contained report (see ``report.py``)
    run.json        settings, method description, references, threshold rule, metrics, timings
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.methods.base import AnomalyMethod
from fsiad.fewshot.workflow import render
from fsiad.fewshot.workflow.report import ReportWriter, histogram_svg
from fsiad.fewshot.workflow.targets import output_names
from fsiad.fewshot.workflow.thresholds import (
    Calibration,
    ThresholdRule,
    calibrate_loo,
    feature_cache,
    user_threshold,
)
from tqdm import tqdm

THUMB_SIDE = 160
#: Errors a single unreadable target may raise; anything else is a bug and propagates.
READ_ERRORS = (DatasetError, OSError, ValueError)


@dataclass
class ScoredImage:
    """One scored target."""

    path: Path
    name: str
    score: float
    label: int | None = None


@dataclass
class ScoreRun:
    """What ``score_targets`` produced (maps are on disk, not here)."""

    images: list[ScoredImage] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)
    map_min: float = float("inf")
    map_max: float = float("-inf")
    predict_s: float = 0.0


def decision(score: float, threshold: float | None) -> str | None:
    """``anomalous`` when ``score >= threshold``, ``normal`` below, ``None`` without threshold."""
    if threshold is None:
        return None
    return "anomalous" if score >= threshold else "normal"


def fit_references(method: AnomalyMethod, refs: Sequence[Sample], seed: int = 0,
                   rule: ThresholdRule | None = None, threshold: float | None = None
                   ) -> tuple[Calibration, dict[str, float]]:
    """Calibrate the threshold (user value, or leave-one-out on ``refs``) then fit on all ``refs``.

    Encoder features of the references are cached for the calibration and the final fit
    (each reference encoded once); targets are scored later without the cache.

    Returns:
        ``(calibration, {"calibrate_s", "fit_s"})``; ``method`` is fitted on every reference.

    Raises:
        DatasetError: a reference image cannot be read (names the file).
    """
    t0 = time.perf_counter()
    with feature_cache(method):
        if threshold is not None:
            cal = user_threshold(threshold)
        else:
            cal = calibrate_loo(method, refs, rule or ThresholdRule(), seed)
        t1 = time.perf_counter()
        torch.manual_seed(seed)
        method.fit(method.prepare(list(refs)) if refs else None)
    return cal, {"calibrate_s": round(t1 - t0, 3), "fit_s": round(time.perf_counter() - t1, 3)}


def _prepare_readable(method: AnomalyMethod, samples: Sequence[Sample]) -> tuple[Any, list[int], list[tuple[Path, str]]]:
    """Prepare each sample on its own, so one unreadable file does not stop the others."""
    parts, ok, errors = [], [], []
    for i, s in enumerate(samples):
        try:
            parts.append(method.prepare([s]))
            ok.append(i)
        except READ_ERRORS as e:
            errors.append((s.path, _reason(e, s.path)))
    if not ok:
        return None, ok, errors
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts), ok, errors
    return method.prepare([samples[i] for i in ok]), ok, errors  # non-tensor batches: prepare together


def _reason(err: Exception, path: Path) -> str:
    text = str(err).strip() or type(err).__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def score_targets(method: AnomalyMethod, samples: Sequence[Sample], out: Path, names: Sequence[str] | None = None,
                  chunk_size: int = 32, seed: int = 0, progress: bool = True) -> ScoreRun:
    """Score ``samples`` with a fitted method, writing ``out/maps/<name>.npy``.

    Non-transductive methods see chunks of ``chunk_size`` images (bounded memory);
    transductive ones see all readable targets in one ``predict`` call.
    """
    names = list(names) if names is not None else output_names([s.path for s in samples])
    (out / "maps").mkdir(parents=True, exist_ok=True)
    run = ScoreRun()
    step = len(samples) if method.transductive else max(1, chunk_size)
    torch.manual_seed(seed)
    bar = tqdm(total=len(samples), unit="img", desc="scoring", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            batch, ok, errors = _prepare_readable(method, chunk)
            run.errors.extend(errors)
            if ok:
                t0 = time.perf_counter()
                result = method.predict(batch)
                run.predict_s += time.perf_counter() - t0
                maps = result.anomaly_maps.detach().cpu().float().numpy()
                for j, i in enumerate(ok):
                    s, name = chunk[i], names[start + i]
                    np.save(out / "maps" / f"{name}.npy", maps[j])
                    run.images.append(ScoredImage(s.path, name, float(result.image_scores[j]), s.label))
                run.map_min = min(run.map_min, float(maps.min()))
                run.map_max = max(run.map_max, float(maps.max()))
            bar.update(len(chunk))
    finally:
        bar.close()
    return run


def display_image(method: AnomalyMethod, path: Path) -> np.ndarray:
    """The RGB image as the method sees it (resize + crop), ``SxSx3`` uint8."""
    from fsiad.fewshot.data.io import read_image

    return render.tensor_to_uint8(method.preprocess.images([read_image(path)])[0])


def _thumb_or_empty(method: AnomalyMethod, path: Path) -> str:
    try:
        return render.png_base64(display_image(method, path), 96)
    except READ_ERRORS:  # a reference moved or changed since the model was fitted
        return ""


def label_metrics(images: Sequence[ScoredImage], threshold: float | None) -> dict[str, Any] | None:
    """AUROC / AP over labelled images (both classes needed) and the confusion at the threshold."""
    lab = [(im.score, im.label) for im in images if im.label is not None]
    if not lab:
        return None
    scores = np.array([s for s, _ in lab], dtype=np.float64)
    labels = np.array([y for _, y in lab], dtype=np.int64)
    out: dict[str, Any] = {"n_labelled": int(labels.size), "n_anomalous": int(labels.sum())}
    if 0 < labels.sum() < labels.size:
        from fsiad.fewshot.metrics import image_metrics

        m = image_metrics(scores, labels)
        out.update({"image_auroc": m["image_auroc"], "image_ap": m["image_ap"]})
    else:
        out["note"] = "AUROC / AP need both normal and anomalous labelled images"
    if threshold is not None:
        pred = scores >= threshold
        tp, fp = int((pred & (labels == 1)).sum()), int((pred & (labels == 0)).sum())
        fn, tn = int((~pred & (labels == 1)).sum()), int((~pred & (labels == 0)).sum())
        out.update(threshold=threshold, true_positives=tp, false_positives=fp, true_negatives=tn, false_negatives=fn,
                   recall=round(tp / max(tp + fn, 1), 4), false_positive_rate=round(fp / max(fp + tn, 1), 4),
                   accuracy=round((tp + tn) / labels.size, 4))
    return out


def write_outputs(method: AnomalyMethod, run: ScoreRun, out: Path, calibration: Calibration,
                  settings: dict[str, Any], references: Sequence[Sample], title: str = "fsiad inspection report",
                  progress: bool = True, t_start: float | None = None) -> dict[str, Any]:
    """Write scores.csv, errors.csv, overlays, report.html and run.json; return run.json's content.

    ``t_start`` (``time.perf_counter()`` at the start of the command) adds the total wall time.
    """
    t_out = time.perf_counter()
    thr = calibration.threshold
    with (out / "scores.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "name", "score", "decision", "label"])
        for im in run.images:
            w.writerow([str(im.path), im.name, repr(im.score), decision(im.score, thr) or "",
                        "" if im.label is None else im.label])
    errors_csv = out / "errors.csv"
    if run.errors:
        with errors_csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "reason"])
            w.writerows([str(p), r] for p, r in run.errors)
    elif errors_csv.exists():
        errors_csv.unlink()
    metrics = label_metrics(run.images, thr)
    lo, hi = (run.map_min, run.map_max) if run.images else (0.0, 0.0)
    refs_b64 = [(str(r.path), _thumb_or_empty(method, r.path)) for r in references]
    summary = {
        "images scored": len(run.images),
        "targets not scored": len(run.errors),
        "method": method.name,
        "references": len(references),
        "threshold": "none (scores only)" if thr is None else f"{thr:.6g} ({calibration.source})",
    }
    if metrics and "image_auroc" in metrics:
        summary["image AUROC"] = f"{metrics['image_auroc']:.4f}"
    (out / "overlays").mkdir(exist_ok=True)
    report = ReportWriter(out / "report.html")
    report.header(title, summary, calibration.description, metrics,
                  histogram_svg([im.score for im in run.images], [im.label for im in run.images], thr),
                  {**settings, "map colour scale": [lo, hi]}, refs_b64,
                  [(str(p), r) for p, r in run.errors], len(run.images))
    ranked = sorted(run.images, key=lambda im: -im.score)
    for rank, im in enumerate(tqdm(ranked, unit="img", desc="report", disable=not progress, file=sys.stderr), 1):
        base = display_image(method, im.path)
        ov = render.overlay(base, np.load(out / "maps" / f"{im.name}.npy"), lo, hi)
        render.save_png(ov, out / "overlays" / f"{im.name}.png")
        both = np.concatenate([base, np.full((base.shape[0], 4, 3), 255, np.uint8), ov], axis=1)
        report.card(rank, im.name, str(im.path), im.score, decision(im.score, thr), im.label,
                    render.png_base64(both, 2 * THUMB_SIDE))
    report.close()
    record = {
        "settings": settings,
        "method": method.describe(),
        "references": [str(r.path) for r in references],
        "threshold": calibration.to_dict(),
        "decision_rule": "anomalous when score >= threshold",
        "map_colour_scale": {"min": lo, "max": hi, "rule": "min and max over all maps of this run"},
        "n_scored": len(run.images),
        "n_errors": len(run.errors),
        "errors": [{"path": str(p), "reason": r} for p, r in run.errors],
        "metrics": metrics,
        "predict_s": round(run.predict_s, 3),
        "images_per_s": round(len(run.images) / run.predict_s, 3) if run.predict_s > 0 else None,
        "outputs_s": round(time.perf_counter() - t_out, 3),
        "wall_s": None if t_start is None else round(time.perf_counter() - t_start, 3),
        "outputs": {"scores": "scores.csv", "maps": "maps/", "overlays": "overlays/", "report": "report.html",
                    "errors": "errors.csv" if run.errors else None},
    }
    (out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    return record
