"""Compute of the inspection workflow: fit on references, score targets chunk by chunk, label metrics.

Files are written by ``outputs.py`` (the output folder contract) and orchestrated by
``session.py``; this module touches no output folder.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.methods.base import AnomalyMethod
from fsiad.fewshot.workflow import render
from fsiad.fewshot.workflow.scores_file import decision  # noqa: F401  (re-exported)
from fsiad.fewshot.workflow.thresholds import (
    DEFAULT_TARGET_FPR,
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
    defect: str | None = None
    region: Any = None  # decisions.PixelDecision of a flagged image (None: not flagged / no pixel threshold)
    image_term: float | None = None  # the score's image-level part (AnomalyResult.image_terms), None: no such term


def fit_references(method: AnomalyMethod, refs: Sequence[Sample], seed: int = 0,
                   rule: ThresholdRule | None = None, threshold: float | None = None,
                   target_fpr: float = DEFAULT_TARGET_FPR) -> tuple[Calibration, dict[str, float]]:
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
        freeze = getattr(method, "frozen_configuration", None)
        if threshold is None and refs and freeze is not None:
            # A self-configuring method chooses its configuration on all K references first;
            # the leave-one-out refits then score with that configuration (not one chosen on
            # K-1), and the full fit's state is restored afterwards.
            torch.manual_seed(seed)
            method.fit(method.prepare(list(refs)))
            t1 = time.perf_counter()
            state = method.get_state()
            with freeze():
                cal = calibrate_loo(method, refs, rule or ThresholdRule(), seed, target_fpr)
            method.set_state(state)
            method.fitted = True
            return cal, {"calibrate_s": round(time.perf_counter() - t1, 3), "fit_s": round(t1 - t0, 3)}
        if threshold is not None:
            cal = user_threshold(threshold)
        else:
            cal = calibrate_loo(method, refs, rule or ThresholdRule(), seed, target_fpr)
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


def score_chunks(method: AnomalyMethod, samples: Sequence[Sample], names: Sequence[str], chunk_size: int = 32,
                 seed: int = 0, progress: bool = True, done: int = 0
                 ) -> Iterator[tuple[list[tuple[ScoredImage, np.ndarray]], list[tuple[Path, str]]]]:
    """Score ``samples`` with a fitted method; yield ``(scored, errors)`` after each chunk.

    ``scored`` pairs each readable target with its ``[S, S]`` float32 map; ``errors`` lists
    ``(path, reason)`` of the chunk's unreadable targets. Non-transductive methods see chunks of
    ``chunk_size`` images (bounded memory); transductive ones see all targets in one call.
    ``done``: targets already scored elsewhere (the progress bar starts there).
    """
    step = len(samples) if method.transductive else max(1, chunk_size)
    torch.manual_seed(seed)
    bar = tqdm(total=done + len(samples), initial=done, unit="img", desc="scoring", disable=not progress,
               file=sys.stderr)
    try:
        for start in range(0, len(samples), max(step, 1)):
            chunk = samples[start : start + step]
            batch, ok, errors = _prepare_readable(method, chunk)
            scored = []
            if ok:
                result = method.predict(batch)
                maps = result.anomaly_maps.detach().cpu().float().numpy()
                terms = result.image_terms
                for j, i in enumerate(ok):
                    s = chunk[i]
                    scored.append((ScoredImage(s.path, names[start + i], float(result.image_scores[j]), s.label,
                                               s.defect, image_term=None if terms is None else float(terms[j])),
                                   np.ascontiguousarray(maps[j])))
            bar.update(len(chunk))
            yield scored, errors
    finally:
        bar.close()


def display_image(method: AnomalyMethod, path: Path) -> np.ndarray:
    """The RGB image as the method sees it (resize + crop), ``SxSx3`` uint8."""
    from fsiad.fewshot.data.io import read_image

    return render.tensor_to_uint8(method.preprocess.images([read_image(path)])[0])


def _thumb_or_empty(method: AnomalyMethod, path: Path) -> str:
    try:
        return render.png_base64(display_image(method, path), 96)
    except READ_ERRORS:  # a reference moved or changed since the model was fitted
        return ""


def labelled_thresholds(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> dict[str, Any]:
    """``label_metrics``' ``from_labels``: ``operating_points`` at ``target_fpr`` with the counts behind it."""
    from fsiad.fewshot.metrics import operating_points

    n_normal = int((labels == 0).sum())
    out: dict[str, Any] = {"target_fpr": target_fpr, "n_normal": n_normal, "n_anomalous": int(labels.sum()),
                           **operating_points(scores, labels, target_fpr)}
    if n_normal * target_fpr < 1:
        out["note"] = (f"{n_normal} labelled normal image(s) cannot show a false-alarm rate as small as "
                       f"{target_fpr:g} (one false alarm is {1 / n_normal:.2g}); label at least "
                       f"{math.ceil(1 / target_fpr - 1e-9)} normal parts")
    return out


def label_metrics(images: Sequence[ScoredImage], threshold: float | None,
                  target_fpr: float | None = None) -> dict[str, Any] | None:
    """AUROC / AP over labelled images (both classes needed), the confusion at the threshold and
    the thresholds these labels support (``from_labels``: the lowest one at or below
    ``target_fpr`` false alarms (``None``: the default target), and the F1-max one;
    ``metrics.operating_points``).
    They are chosen on the same images, so their rates are optimistic for new parts; fewer than
    ``1 / target_fpr`` labelled normals cannot show a rate that small (``from_labels.note``)."""
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
        out["from_labels"] = labelled_thresholds(scores, labels, target_fpr or DEFAULT_TARGET_FPR)
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
