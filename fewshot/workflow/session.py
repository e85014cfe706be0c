"""The inspection session: fit a method on K normal references, score targets, write an output folder.

This is the library behind ``fsiad score`` / ``fsiad fit`` / ``fsiad predict`` (the commands only
parse options, call it and print) and the base of the public Python API. No click here.

Usage::

    from fsiad.fewshot.workflow.session import FittedModel, InspectionSession

    session = InspectionSession("knn", shots=4, seed=0)            # config: a MethodConfig
    results = session.score(["incoming/"], normal="parts/good", out="runs/a")   # = fit + predict
    model = session.fit("parts/good", save_to="models/a")         # save_to: optional model folder
    model = FittedModel.load("models/a", device="cuda")
    results = model.predict(["more/"])                            # in memory only (no out)
    for p in results.predictions:
        p.path, p.score, p.decision, p.anomaly_map                 # map: [S, S] float32

Rules owned here (one copy each): reference selection and the shots-versus-regime rule
(``references.py``), sample collection for ``--normal`` and TARGETS (``targets.collect_samples``,
which defers to a method's own ``collect_samples`` hook), the output folder (``outputs.py``:
lock, out-not-input check, incremental ``scores.csv``, resume, ``--overwrite``) and the content
of ``run.json``.

Output folder (when ``out`` is given; see ``outputs.py`` for the full contract): ``scores.csv``
grows chunk by chunk, so an interrupted run keeps every score so far; a rerun with the same
``out`` and the same settings (method, configuration, references, seed, threshold) resumes:
targets already in ``scores.csv`` with their map present are not scored again (``run.json``:
``resumed``). Outputs of different settings are refused unless ``overwrite=True``. The folder
is locked for the whole run, and may not overlap any input (``OutputOverlapError``).

Errors are ``FsiadError`` subclasses with one-line messages: ``OptionError`` (bad shots,
threshold rule, exclusive options), ``DatasetError`` (missing or empty inputs),
``OutputOverlapError`` / ``OutputLockedError`` / ``OutputExistsError`` (output folder),
``ModelError`` (model folders).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.fileio import code_fingerprint
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig
from fsiad.fewshot.workflow.demo import DEFAULT_DEMO_SIZE, DEMO_TARGET_SEED
from fsiad.fewshot.workflow.outputs import OutputFolder, check_output, orientation_note
from fsiad.fewshot.workflow.references import check_shots, select_references
from fsiad.fewshot.workflow.runner import ScoredImage, decision, fit_references, label_metrics, score_chunks
from fsiad.fewshot.workflow.scores_file import evidence
from fsiad.fewshot.workflow.thresholds import (
    DEFAULT_RULE,
    DEFAULT_TARGET_FPR,
    Calibration,
    ThresholdRule,
    user_threshold,
)

DEFAULT_METHOD = "knn"
DEFAULT_CHUNK_SIZE = 32
Log = Callable[[str], None]
PathLike = str | Path


def _quiet(_: str) -> None:
    pass


@dataclass
class Prediction:
    """One scored target.

    Attributes:
        path: the target file; ``name``: its output name (``maps/<name>.npy``).
        score: image anomaly score; ``decision``: ``anomalous`` / ``normal`` / ``None`` (no threshold).
        label: 0 / 1 from ``labels`` (or the demo), else ``None``.
        map_path: ``OUT/maps/<name>.npy`` when an output folder was written.
        region: ``decisions.PixelDecision`` of a flagged image (area, boxes at the original size).
        defect: defect type from the target's folder name (``good`` for normal), else ``None``.
        image_term: the part of ``score`` from an image-level term (``knn``'s global term), else ``None``.
        evidence: what carried a flag: ``image-wide`` (the score passes the threshold only with
            the image-level term: a texture-wide change the map need not localise) or
            ``region``; ``None`` when not flagged.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of this prediction."""
        d: dict[str, Any] = {"name": self.name, "path": str(self.path), "score": self.score,
                             "decision": self.decision, "label": self.label, "evidence": self.evidence,
                             "image_term": self.image_term}
        if self.region is not None:
            d.update(self.region.to_dict())
        return d

    path: Path
    name: str
    score: float
    decision: str | None
    label: int | None = None
    map_path: Path | None = None
    region: Any = None
    defect: str | None = None
    _map: np.ndarray | None = field(default=None, repr=False, compare=False)
    image_term: float | None = None
    evidence: str | None = None

    @property
    def anomaly_map(self) -> np.ndarray:
        """``[S, S]`` float32 map (kept in memory, or read from ``map_path``)."""
        if self._map is None:
            if self.map_path is None:
                raise ValueError(f"{self.path}: no anomaly map kept (predict with keep_maps=True)")
            return np.load(self.map_path)
        return self._map


@dataclass
class Results:
    """What one ``score`` / ``predict`` call produced.

    Attributes:
        predictions: scored targets in input order.
        errors: ``(path, reason)`` of targets that could not be read.
        calibration: the threshold used (``calibration.threshold`` is ``None`` for scores only).
        metrics: AUROC / AP / confusion over labelled targets (``None`` without labels).
        resumed: targets whose score was reused from an earlier run in ``out``.
        out: the output folder (``None`` = in memory only); ``record``: its run.json content.
    """

    predictions: list[Prediction]
    errors: list[tuple[Path, str]]
    calibration: Calibration
    metrics: dict[str, Any] | None
    resumed: int = 0
    out: Path | None = None
    record: dict[str, Any] | None = None
    wall_s: float = 0.0

    @property
    def threshold(self) -> float | None:
        return self.calibration.threshold

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, i: int) -> Prediction:
        return self.predictions[i]

    @property
    def flagged(self) -> list[Prediction]:
        """Predictions decided ``anomalous``, highest score first."""
        return sorted((p for p in self.predictions if p.decision == "anomalous"), key=lambda p: -p.score)

    def summary(self) -> dict[str, Any]:
        """One machine-readable summary (``--json``): counts, threshold, flagged list, metrics, outliers."""
        cal = self.calibration
        return {"n_scored": len(self.predictions), "n_flagged": len(self.flagged), "n_errors": len(self.errors),
                "threshold": cal.threshold, "pixel_threshold": cal.pixel_threshold, "threshold_source": cal.source,
                "threshold_rule": cal.rule, "target_fpr": cal.target_fpr, "expected_fpr": cal.expected_fpr,
                "threshold_description": cal.description,
                "outlier_references": cal.outliers, "warnings": cal.warnings(),
                "flagged": [p.to_dict() for p in self.flagged],
                "metrics": self.metrics, "labels_source": (self.record or {}).get("settings", {}).get("labels_source"),
                "out": str(self.out) if self.out else None,
                "report": str(self.out / "report.html") if self.out else None,
                "errors": [{"path": str(p), "reason": r} for p, r in self.errors]}

    @property
    def scores(self) -> list[float]:
        return [p.score for p in self.predictions]

    def check_any_scored(self) -> None:
        """Raise ``DatasetError`` when targets were given but none could be read."""
        if not self.predictions and self.errors:
            where = f"; see {self.out / 'errors.csv'}" if self.out else ""
            raise DatasetError(f"none of the {len(self.errors)} target(s) could be read{where}")


def as_targets(targets: PathLike | Sample | Sequence[PathLike | Sample] | None) -> list[Any]:
    """One path (``str`` / ``Path``) or sample, or a sequence of them -> a list."""
    if targets is None:
        return []
    if isinstance(targets, (str, Path, Sample)):
        return [targets]
    return list(targets)


def resolve_targets(method_cls: type, targets: Sequence[PathLike | Sample] = (), labels: PathLike | None = None,
                    demo: Any = None, demo_size: int = DEFAULT_DEMO_SIZE, folder_labels: bool = True) -> list[Sample]:
    """Targets -> samples: the demo's seeded mix, given ``Sample`` objects, or files and folders
    collected by ``targets.collect_samples`` (labelled from the ``labels`` CSV, else, with
    ``folder_labels``, from ``good/`` / ``ok/`` / ``normal/`` / ``nominal/`` and defect sub-folders).

    Raises:
        OptionError: targets with ``demo``, or no targets. DatasetError: nothing found.
    """
    from fsiad.fewshot.workflow.demo import demo_targets, load_demo
    from fsiad.fewshot.workflow.targets import collect_samples, label_from_folders, read_labels_csv

    targets = as_targets(targets)
    if demo is not None:
        if targets:
            raise OptionError("--demo picks its own targets; do not pass TARGET paths with it")
        return demo_targets(load_demo(demo) if isinstance(demo, str) else demo, demo_size)
    if not targets:
        raise OptionError("no TARGET given: pass image files or folders to score")
    if all(isinstance(t, Sample) for t in targets):
        return targets
    samples = collect_samples(method_cls, targets, read_labels_csv(labels) if labels else None)
    if labels is None and folder_labels:
        samples = label_from_folders(targets, samples)
    if not samples:
        raise DatasetError(f"no images found in {', '.join(map(str, targets))}")
    return samples


def labels_source(samples: Sequence[Sample], labels: PathLike | None, demo: Any) -> str | None:
    """Where the targets' labels came from: ``csv <path>``, ``demo``, ``folder names`` or ``None``."""
    if labels:
        return f"csv {labels}"
    if demo is not None:
        return "demo"
    if any(s.label is not None for s in samples):
        return "folder names (good/ ok/ normal/ nominal/ = normal, other sub-folders = defect types)"
    return None


def _file_stamp(path: Path) -> list[Any]:
    try:
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


@dataclass
class FittedModel:
    """A method fitted on its references, with its threshold: predicts, saves, loads.

    Attributes:
        method: the fitted ``AnomalyMethod``.
        calibration: threshold and how it was obtained.
        references: the normal references (``Sample``), in draw order.
        info: workflow metadata saved in ``model.json`` and ``run.json`` (shots, seed, normal,
            demo, threshold_rule, references, timings, chunk_size, config; ``model``/``overrides``
            when loaded).
    """

    method: AnomalyMethod
    calibration: Calibration
    references: list[Sample]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        return self.calibration.threshold

    def with_threshold(self, value: float | None) -> FittedModel:
        """The same model with a user-given threshold (``None``: unchanged)."""
        return self if value is None else replace(self, calibration=user_threshold(value))

    @classmethod
    def load(cls, directory: PathLike, *, threshold: float | None = None, **overrides: Any) -> FittedModel:
        """Load a model folder written by ``save`` (``fsiad fit``).

        Args:
            threshold: replaces the saved threshold.
            overrides: ``MethodConfig`` fields (``device``, ``batch_size``, ``weights``); ``None`` values ignored.

        Raises:
            ModelError: not a model folder, or the encoder weights differ from the fitted ones.
        """
        from fsiad.fewshot.workflow.model import load_model

        t0 = time.perf_counter()
        overrides = {k: v for k, v in overrides.items() if v is not None}
        method, meta = load_model(directory, **overrides)
        info = {k: meta.get(k) for k in ("shots", "seed", "normal", "demo", "threshold_rule", "target_fpr", "references")}
        info.update(model=str(directory), overrides=overrides, chunk_size=int(meta.get("chunk_size") or DEFAULT_CHUNK_SIZE),
                    timings={"load_s": round(time.perf_counter() - t0, 3)})
        refs = [Sample(path=Path(p), label=0) for p in meta.get("references") or []]
        model = cls(method, Calibration.from_dict(meta["threshold"]), refs, info)
        return model.with_threshold(threshold)

    def save(self, directory: PathLike) -> Path:
        """Write a model folder (``model.py``'s format), holding its lock while writing."""
        with OutputFolder(directory, "fsiad fit") as folder:
            self._save(folder)
        return Path(directory)

    def _save(self, folder: OutputFolder) -> None:
        from fsiad.fewshot.workflow.model import save_model

        keys = ("shots", "seed", "normal", "demo", "threshold_rule", "target_fpr", "references", "timings",
                "chunk_size")
        info = {k: self.info.get(k) for k in keys if k in self.info}
        save_model(self.method, folder.path, self.calibration, {**info, "config": asdict(self.method.config)})
        folder.keep()

    def predict(self, targets: Sequence[PathLike | Sample] = (), *, out: PathLike | None = None,
                labels: PathLike | None = None, demo: Any = None, demo_size: int = DEFAULT_DEMO_SIZE,
                chunk_size: int | None = None, overwrite: bool = False, keep_maps: bool | None = None,
                progress: bool = False, log: Log = _quiet, run_info: dict[str, Any] | None = None,
                folder_labels: bool = True) -> Results:
        """Score ``targets`` (image files, folders, or ``Sample`` objects); write ``out`` if given.

        Args:
            targets: files and folders (searched recursively; fsiad output folders skipped).
            out: output folder (see the module docstring: lock, incremental scores.csv, resume).
            labels: CSV ``path,label`` for metrics. demo/demo_size: score the demo's target mix.
            chunk_size: targets loaded at a time (default: the model's, else 32).
            overwrite: replace the outputs of a run with different settings in ``out``.
            keep_maps: keep maps in memory (default: only when ``out`` is ``None``).
            progress: progress bars on stderr. log: receives progress and warning lines.
            run_info: extra ``run.json`` settings (e.g. ``command``, ``argv``).
            folder_labels: without ``labels``, label targets from folder names (``targets.py``).

        Raises:
            OutputOverlapError, OutputLockedError, OutputExistsError, DatasetError, OptionError.
        """
        t0 = time.perf_counter()
        targets = as_targets(targets)
        inputs = [*[t for t in targets if not isinstance(t, Sample)], labels, self.info.get("model")]
        if out is not None:
            check_output(out, inputs)
        samples = resolve_targets(type(self.method), targets, labels, demo, demo_size, folder_labels)
        folder = OutputFolder(out, "fsiad predict") if out is not None else contextlib.nullcontext()
        with folder as held:
            return self._run(samples, held, targets=targets, labels=labels, demo=demo, demo_size=demo_size,
                             chunk_size=chunk_size, overwrite=overwrite, keep_maps=keep_maps, progress=progress,
                             log=log, run_info={"command": "predict", **(run_info or {}),
                                                "labels_source": labels_source(samples, labels, demo)}, t_start=t0)

    # -- internals --------------------------------------------------------------------------
    def _pixel_decisions(self, images: Sequence[ScoredImage], folder: OutputFolder | None,
                         maps: dict[str, np.ndarray]) -> None:
        """Defect mask, area and boxes of each flagged image at its original size (``masks/<name>.png``)."""
        from fsiad.fewshot.workflow import decisions, render

        cal = self.calibration
        pix = cal.pixel_threshold if cal.pixel_threshold is not None else cal.threshold
        if cal.threshold is None or pix is None:
            return
        for im in images:
            if decision(im.score, cal.threshold) != "anomalous":
                continue
            amap = maps.get(im.name)
            if amap is None:
                if folder is None:
                    continue
                amap = np.load(folder.map_path(im.name))
            try:
                size = decisions.image_size(im.path)
            except (OSError, ValueError):
                size = amap.shape
            mask = decisions.defect_mask(amap, size, pix, self.method.preprocess)
            im.region = decisions.describe_mask(mask)
            if folder is not None:
                folder.mask_path(im.name).parent.mkdir(exist_ok=True)
                render.save_png(decisions.mask_png(mask), folder.mask_path(im.name))

    def _identity(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Settings that make two runs' scores interchangeable (the resume fingerprint)."""
        from fsiad.fewshot.workflow.model import encoder_identity

        m = self.method
        enc = encoder_identity(m.describe())
        key = {"method": m.name,
               "config": {k: v for k, v in asdict(m.config).items() if k not in ("device", "batch_size", "weights")},
               "encoder": {"encoder": enc.get("encoder"), "weights_checksum": enc.get("weights_checksum")},
               "references": [_file_stamp(Path(r.path)) for r in self.references],
               "seed": self.info.get("seed"), "threshold": self.calibration.threshold}
        if m.transductive:  # every score depends on the whole set of targets
            key["targets"] = [str(Path(s.path).resolve()) for s in samples]
        return key

    def _settings(self, samples: Sequence[Sample], targets: Sequence[Any], labels: Any, demo: Any, demo_size: int,
                  chunk: int, overlap: int, run_info: dict[str, Any]) -> dict[str, Any]:
        """``run.json``'s ``settings`` (the one builder for score and predict)."""
        info = self.info
        return {**run_info, "method": self.method.name,
                **{k: info.get(k) for k in ("shots", "seed", "normal", "demo", "threshold_rule", "references")},
                **({"model": info["model"], "overrides": info.get("overrides")} if "model" in info else {}),
                "target_fpr": info.get("target_fpr"),
                "timings": info.get("timings", {}), "targets_also_references": overlap,
                "targets": [str(t.path if isinstance(t, Sample) else t) for t in targets], "n_targets": len(samples),
                "labels": str(labels) if labels else None, "demo_size": demo_size if demo else None,
                "demo_target_seed": DEMO_TARGET_SEED if demo else None, "chunk_size": chunk,
                "config": asdict(self.method.config)}

    def _run(self, samples: list[Sample], folder: OutputFolder | None, *, targets: Sequence[Any], labels: Any,
             demo: Any, demo_size: int, chunk_size: int | None, overwrite: bool, keep_maps: bool | None,
             progress: bool, log: Log, run_info: dict[str, Any], t_start: float) -> Results:
        from fsiad.fewshot.workflow.targets import output_names

        chunk = chunk_size or int(self.info.get("chunk_size") or DEFAULT_CHUNK_SIZE)
        keep = folder is None if keep_maps is None else keep_maps
        thr = self.calibration.threshold
        for line in self.calibration.warnings():
            log(line)
        note = orientation_note(self.method.describe())
        if note:
            log(f"{self.method.name}: {note}")
        ref_paths = {Path(r.path).resolve() for r in self.references}
        overlap = sum(Path(s.path).resolve() in ref_paths for s in samples)
        if overlap:
            log(f"warning: {overlap} target(s) are also reference images (their scores are not a fair test)")
        names = output_names([Path(s.path) for s in samples])
        index = {n: i for i, n in enumerate(names)}
        images: list[ScoredImage | None] = [None] * len(samples)
        maps: dict[str, np.ndarray] = {}
        lo, hi = math.inf, -math.inf
        reused: dict[Path, float] = {}
        if folder is not None:
            reused = folder.start(self._identity(samples), [(Path(s.path), n) for s, n in zip(samples, names, strict=True)],
                                  overwrite, code=code_fingerprint())
            if self.method.transductive and len(reused) < len(samples):
                reused = {}  # a transductive score depends on the whole set: rescore it all
            for i, s in enumerate(samples):
                score = reused.get(Path(s.path).resolve())
                if score is not None:
                    images[i] = ScoredImage(Path(s.path), names[i], score, s.label, s.defect,
                                            image_term=folder.reused_terms.get(Path(s.path).resolve()))
                    amap = np.load(folder.map_path(names[i]))
                    lo, hi = min(lo, float(amap.min())), max(hi, float(amap.max()))
                    if keep:
                        maps[names[i]] = amap
            folder.append([im for im in images if im is not None], thr)
            if reused:
                log(f"resuming: {len(reused)} target(s) already scored in {folder.path} with the same settings")
        todo = [i for i, im in enumerate(images) if im is None]
        errors: list[tuple[Path, str]] = []
        t_pred = time.perf_counter()
        for scored, errs in score_chunks(self.method, [samples[i] for i in todo], [names[i] for i in todo],
                                         chunk, int(self.info.get("seed") or 0), progress, done=len(reused)):
            for im, amap in scored:
                if folder is not None:
                    folder.write_map(im.name, amap)
                if keep:
                    maps[im.name] = amap
                lo, hi = min(lo, float(amap.min())), max(hi, float(amap.max()))
                images[index[im.name]] = im
            if folder is not None:
                folder.append([im for im, _ in scored], thr)
            errors.extend(errs)
        predict_s = time.perf_counter() - t_pred
        done = [im for im in images if im is not None]
        self._pixel_decisions(done, folder, maps)
        n_new = len(done) - len(reused)
        record = None
        if folder is not None:
            settings = self._settings(samples, targets, labels, demo, demo_size, chunk, overlap, run_info)
            extra = {"resumed": len(reused), "n_rescored": n_new, "predict_s": round(predict_s, 3),
                     "images_per_s": round(n_new / predict_s, 3) if n_new and predict_s > 0 else None,
                     "wall_s": round(time.perf_counter() - t_start, 3)}
            record = folder.finish(self.method, done, errors, self.calibration, settings,
                                   [r for r in self.references if Path(r.path).is_file()], (lo, hi),
                                   progress=progress, extra=extra)
        preds = [Prediction(im.path, im.name, im.score, decision(im.score, thr), im.label,
                            folder.map_path(im.name) if folder is not None else None, im.region, im.defect,
                            maps.get(im.name), image_term=im.image_term,
                            evidence=evidence(im.score, im.image_term, thr))
                 for im in done]
        return Results(preds, errors, self.calibration, label_metrics(done, thr, self.info.get("target_fpr")), len(reused),
                       folder.path if folder is not None else None, record, round(time.perf_counter() - t_start, 3))


@dataclass
class InspectionSession:
    """Settings of an inspection: which method, how many references, which threshold.

    Attributes:
        method: registered method name (``fsiad methods``).
        config: ``MethodConfig`` (encoder, device, image size, options, ...).
        shots: K normal references (0 for zero-shot and transductive methods).
        seed: seed of the reference draw (and of stochastic methods).
        threshold: user-given decision threshold; ``None`` = leave-one-out calibration.
        threshold_rule: ``tail`` (robust tail fit at ``target_fpr``, clearly odd references left out),
            ``max`` or ``mean+<k>std`` over the leave-one-out scores (``thresholds.py``).
        target_fpr: false-alarm rate the ``tail`` rule aims at.
        progress: progress bars on stderr. log: receives progress and warning lines.
    """

    method: str = DEFAULT_METHOD
    config: MethodConfig = field(default_factory=MethodConfig)
    shots: int = 4
    seed: int = 0
    threshold: float | None = None
    threshold_rule: str | ThresholdRule = DEFAULT_RULE
    target_fpr: float = DEFAULT_TARGET_FPR
    progress: bool = False
    log: Log = _quiet

    def rule(self) -> ThresholdRule:
        """The parsed threshold rule (``OptionError`` when invalid)."""
        if not 0.0 < float(self.target_fpr) < 0.5:
            raise OptionError(f"--target-fpr {self.target_fpr}: must be between 0 and 0.5 (e.g. 0.05)")
        if isinstance(self.threshold_rule, ThresholdRule):
            return self.threshold_rule
        try:
            return ThresholdRule.parse(self.threshold_rule)
        except ValueError as e:
            raise OptionError(f"--threshold-rule: {e}") from None

    def method_class(self) -> type[AnomalyMethod]:
        from fsiad.fewshot.methods import method_class

        return method_class(self.method)

    def references(self, normal: PathLike | None = None, demo: Any = None) -> list[Sample]:
        """The K references drawn from ``normal`` (a folder) or the demo (name or ``Category``)."""
        return select_references(self.method_class(), self.shots, self.seed, normal, _demo(demo))

    def fit(self, normal: PathLike | None = None, *, demo: Any = None, save_to: PathLike | None = None,
            chunk_size: int = DEFAULT_CHUNK_SIZE) -> FittedModel:
        """Draw the references, calibrate the threshold, fit; save a model folder if ``save_to``.

        ``chunk_size`` is stored with the model (its default for ``predict``).
        """
        demo_cat = _demo(demo)
        rule = self.rule()
        if save_to is not None:
            check_output(save_to, [normal])
        refs = select_references(self.method_class(), self.shots, self.seed, normal, demo_cat)
        folder = OutputFolder(save_to, "fsiad fit") if save_to is not None else contextlib.nullcontext()
        with folder as held:
            model = self._fit(refs, normal, demo_cat, rule)
            model.info["chunk_size"] = chunk_size
            if held is not None:
                model._save(held)
        return model

    def score(self, targets: Sequence[PathLike | Sample] = (), *, normal: PathLike | None = None, demo: Any = None,
              out: PathLike | None = None, labels: PathLike | None = None, demo_size: int = DEFAULT_DEMO_SIZE,
              chunk_size: int | None = None, overwrite: bool = False, keep_maps: bool | None = None,
              run_info: dict[str, Any] | None = None, folder_labels: bool = True) -> Results:
        """``fit`` on ``normal`` (or the demo) then ``FittedModel.predict`` on ``targets``, in one go.

        Inputs and the output folder are checked before anything is loaded; ``out`` is locked
        from before the fit to the end of the run.
        """
        t0 = time.perf_counter()
        cls = self.method_class()
        demo_cat = _demo(demo)
        rule = self.rule()
        targets = as_targets(targets)
        check_shots(cls, self.shots)
        if out is not None:
            check_output(out, [normal, *[t for t in targets if not isinstance(t, Sample)], labels])
        samples = resolve_targets(cls, targets, labels, demo_cat, demo_size, folder_labels)
        refs = select_references(cls, self.shots, self.seed, normal, demo_cat)
        folder = OutputFolder(out, "fsiad score") if out is not None else contextlib.nullcontext()
        with folder as held:
            model = self._fit(refs, normal, demo_cat, rule)
            return model._run(samples, held, targets=targets, labels=labels, demo=demo_cat, demo_size=demo_size,
                              chunk_size=chunk_size, overwrite=overwrite, keep_maps=keep_maps,
                              progress=self.progress, log=self.log,
                              run_info={"command": "score", **(run_info or {}),
                                        "labels_source": labels_source(samples, labels, demo_cat)},
                              t_start=t0)

    def _fit(self, refs: list[Sample], normal: PathLike | None, demo: Any, rule: ThresholdRule) -> FittedModel:
        from fsiad.fewshot.methods import create_method

        cfg = replace(self.config, options=dict(self.config.options))
        if demo is not None and cfg.class_name == "object":
            cfg.class_name = demo.name
        self.log(f"loading {self.method} ...")
        t0 = time.perf_counter()
        m = create_method(self.method, cfg)
        load_s = time.perf_counter() - t0
        self.log(f"fitting on {len(refs)} reference(s) (seed {self.seed}) and calibrating the threshold ...")
        calibration, timings = fit_references(m, refs, self.seed, rule, self.threshold, float(self.target_fpr))
        info = {"shots": self.shots, "seed": self.seed, "normal": str(normal) if normal else None,
                "demo": demo.name if demo is not None else None, "threshold_rule": str(rule),
                "target_fpr": float(self.target_fpr),
                "references": [str(r.path) for r in refs], "timings": {"load_s": round(load_s, 3), **timings}}
        return FittedModel(m, calibration, list(refs), info)


def _demo(demo: Any) -> Any:
    """A demo name -> its ``Category`` (loaded once); a ``Category`` or ``None`` unchanged."""
    if isinstance(demo, str):
        from fsiad.fewshot.workflow.demo import load_demo

        return load_demo(demo)
    return demo

