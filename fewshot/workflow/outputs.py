"""The output folder of ``fsiad score`` / ``fsiad predict`` (and of ``InspectionSession``): its contract.

Files of an output folder ``OUT``::

    .fsiad-output        marker: fsiad never reads images from this folder (``collect_images`` skips it)
    .fsiad.lock          advisory lock held for the whole run (``fileio.OutputLock``); a second run
                         on the same folder fails at once, naming the holder (pid, command, start)
    .fsiad-run.json      the run's identity: settings fingerprint, the settings themselves, status
    scores.csv           ``SCORE_FIELDS``; rows are appended and flushed after each chunk of targets
                         (area and box columns empty), then rewritten in input order when the run ends
    maps/<name>.npy      raw anomaly map [S, S] float32, written (atomically) before its row
    masks/<name>.png     defect mask of each flagged image at the image's own size (255 = defect)
    overlays/<name>.png  map over the original image at its own size (``render.ColourScale``: one
                         scale for the run, anchored to the pixel threshold)
    thumbs/<name>.jpg    small original | overlay | defect contour strip, linked from the report
    errors.csv           path, reason of targets that could not be read (only when there are some)
    report.html          report (``report.py``): links thumbs/ and overlays/, embeds no image
    run.json             settings, method, references, threshold (rule, inputs, expected
                         false-alarm rate, outlier references), flagged list, metrics, timings

Rules:

* Every run removes ``report.html``, ``run.json``, ``errors.csv``, masks, thumbnails and overlays when it
  starts, and writes them again only when it finishes: a summary file always describes the
  ``scores.csv`` next to it. An interrupted run leaves ``scores.csv`` with every target scored
  so far (and their maps), and no summary.
* Resume: a run with the same settings fingerprint as the folder's (method, configuration,
  encoder weights, references and their file sizes/mtimes, seed, threshold; for transductive
  methods also the targets) reuses every row of ``scores.csv`` whose target is among this
  run's targets and whose map exists; only the others are scored. ``run.json`` records
  ``resumed: N``. Rows and maps of targets no longer given are dropped.
* A folder holding the outputs of a run with different settings (or outputs without a
  fingerprint, from an older fsiad) is refused with ``OutputExistsError`` unless
  ``overwrite=True`` (``--overwrite``), which clears its per-image outputs first: rows of two
  settings are never mixed.
* All files are written through unique temporary names and replaced atomically
  (``fileio.atomic_write*``), so readers see whole files only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.errors import FsiadError
from fsiad.fewshot.fileio import (
    LOCK_NAME,
    OUTPUT_MARKER,
    OutputLock,
    OutputOverlapError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    check_out_not_input,
    fingerprint,
    is_inside,
)
from fsiad.fewshot.methods.base import AnomalyMethod
from fsiad.fewshot.workflow import render
from fsiad.fewshot.workflow.report import ReportWriter, histogram_svg, labels_threshold
from fsiad.fewshot.workflow.runner import READ_ERRORS, ScoredImage, decision, display_image, label_metrics
from fsiad.fewshot.workflow.scores_file import SCORE_FIELDS, evidence, read_score_rows
from fsiad.fewshot.workflow.thresholds import Calibration
from tqdm import tqdm

STATE_NAME = ".fsiad-run.json"
RENDERED = ("overlays", "masks", "thumbs")
THUMB_HEIGHT = 96
#: Files that summarise a whole run: removed when a run starts, written when it finishes.
SUMMARY_FILES = ("report.html", "run.json", "errors.csv")


class OutputExistsError(FsiadError, ValueError):
    """The output folder holds the outputs of a run with different settings."""


def _score_row(im: ScoredImage, threshold: float | None) -> list[str]:
    from fsiad.fewshot.workflow.decisions import boxes_text

    r = im.region
    region = ["", "", "", "", ""] if r is None else [str(r.width), str(r.height), str(r.area_px), f"{r.area_pct:g}",
                                                     boxes_text(r.boxes)]
    defect = "" if im.label is None else (im.defect or "")
    return [str(im.path), im.name, repr(im.score), decision(im.score, threshold) or "",
            "" if im.label is None else str(im.label), defect, *region,
            "" if im.image_term is None else repr(im.image_term)]


def orientation_note(described: dict[str, Any]) -> str | None:
    """What a method's description says about rotating the images (knn's ``alignment``), when
    it rotated them; else ``None``. Console and report show it."""
    alignment = described.get("alignment") or {}
    if not alignment.get("active"):
        return None
    return str(alignment.get("reason") or "every image is rotated to the part's principal axis")


class OutputFolder:
    """One run's hold on an output folder (see the module docstring for the contract).

    Use::

        with OutputFolder(out, "fsiad score") as folder:      # lock (OutputLockedError if held)
            reused = folder.start(key, [(path, name), ...], overwrite=False)
            folder.append([...], threshold)                   # after each chunk (maps first)
            record = folder.finish(...)                       # summary files

    If the run fails before ``start`` in a folder it created, the folder is removed again.
    """

    def __init__(self, path: str | Path, command: str = "fsiad") -> None:
        self.path = Path(path)
        self.command = command
        self._lock = OutputLock(self.path, command)
        self._created = not self.path.exists()
        self._started = False
        self._csv: Any = None
        #: image-level score parts of the targets ``start`` reuses (``scores.csv``'s ``image_term``)
        self.reused_terms: dict[Path, float | None] = {}

    # -- lock ---------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        self._lock.acquire()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._close_csv()
        self._lock.release()
        if exc_type is not None and self._created and not self._started:
            for name in (LOCK_NAME, OUTPUT_MARKER):
                (self.path / name).unlink(missing_ok=True)
            try:
                self.path.rmdir()  # only when empty: nothing of the user's is removed
            except OSError:
                pass

    def keep(self) -> None:
        """Mark the folder as used (it stays even if the run fails later)."""
        self._started = True

    @property
    def maps(self) -> Path:
        return self.path / "maps"

    def map_path(self, name: str) -> Path:
        return self.maps / f"{name}.npy"

    def mask_path(self, name: str) -> Path:
        return self.path / "masks" / f"{name}.png"

    # -- start ----------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / STATE_NAME).read_text())
        except (OSError, ValueError):
            return None

    def _old_rows(self) -> list[dict[str, str]]:
        return read_score_rows(self.path / "scores.csv")

    def _has_outputs(self) -> bool:
        files = ("scores.csv", *SUMMARY_FILES)
        return any((self.path / f).exists() for f in files) or any(self.maps.glob("*.npy"))

    def start(self, key: dict[str, Any], targets: Sequence[tuple[Path, str]], overwrite: bool = False,
              code: str | None = None) -> dict[Path, float]:
        """Claim the folder for a run with settings ``key`` over ``targets`` (path, output name).

        ``code`` (``fileio.code_fingerprint``): rows of a run with the same settings but other
        code (an upgrade, an edit) are not reused, they are scored again (no error: the folder
        holds this command's outputs).

        Returns:
            resolved target path -> score, for the targets whose row and map from an earlier
            run with the same settings and code are reused (their maps now carry this run's names).

        Raises:
            OutputExistsError: the folder holds outputs of different settings and not ``overwrite``.
        """
        fp = fingerprint(key)
        state = self.read_state()
        same = state is not None and state.get("fingerprint") == fp
        if not same and self._has_outputs() and not overwrite:
            raise OutputExistsError(
                f"{self.path}: holds the outputs of a run with different settings ({_changed(state, key)}); "
                "pass --overwrite to replace them, or choose another --out")
        for f in SUMMARY_FILES:
            (self.path / f).unlink(missing_ok=True)
        for sub in RENDERED:
            shutil.rmtree(self.path / sub, ignore_errors=True)
        wanted = {p.resolve(): name for p, name in targets}
        reuse: dict[Path, tuple[str, float]] = {}
        self.reused_terms = {}
        if same and state is not None and state.get("code") == code:
            for row in self._old_rows():
                rp = Path(row["path"]).resolve()
                if rp in wanted and rp not in reuse and self.map_path(row["name"]).is_file():
                    try:
                        reuse[rp] = (row["name"], float(row["score"]))
                        term = row.get("image_term") or ""
                        self.reused_terms[rp] = float(term) if term else None
                    except ValueError:
                        continue
        self._arrange_maps({rp: (old, wanted[rp]) for rp, (old, _) in reuse.items()})
        atomic_write_json(self.path / STATE_NAME, {"fingerprint": fp, "code": code, "status": "running",
                                                   "command": self.command,
                                                   "started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": key})
        with atomic_write(self.path / "scores.csv", "w", newline="") as fh:
            csv.writer(fh).writerow(SCORE_FIELDS)
        self._csv = (self.path / "scores.csv").open("a", newline="")
        self._started = True
        return {rp: score for rp, (_, score) in reuse.items()}

    def _arrange_maps(self, keep: dict[Path, tuple[str, str]]) -> None:
        """Keep the maps of ``keep`` (old name -> new name), delete every other map file."""
        self.maps.mkdir(parents=True, exist_ok=True)
        for f in self.maps.glob(".resume-*.npy.tmp"):  # left by a run killed while arranging
            f.unlink()
        moved = []
        for i, (old, new) in enumerate(keep.values()):
            tmp = self.maps / f".resume-{i}.npy.tmp"
            os.replace(self.map_path(old), tmp)
            moved.append((tmp, new))
        for f in self.maps.iterdir():
            if f.is_file() and (f.suffix == ".npy" or (f.name.startswith(".") and f.suffix == ".tmp")) and \
                    not f.name.startswith(".resume-"):
                f.unlink()
        for tmp, new in moved:
            os.replace(tmp, self.map_path(new))

    # -- during the run ---------------------------------------------------------------------
    def write_map(self, name: str, amap: np.ndarray) -> Path:
        """``maps/<name>.npy`` (atomic)."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(amap, dtype=np.float32))
        path = self.map_path(name)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def append(self, images: Sequence[ScoredImage], threshold: float | None) -> None:
        """Append rows to ``scores.csv`` and flush them to disk (write their maps first)."""
        if not images:
            return
        w = csv.writer(self._csv)
        for im in images:
            w.writerow(_score_row(im, threshold))
        self._csv.flush()
        os.fsync(self._csv.fileno())

    def _close_csv(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    # -- end ------------------------------------------------------------------------------
    def finish(self, method: AnomalyMethod, images: Sequence[ScoredImage], errors: Sequence[tuple[Path, str]],
               calibration: Calibration, settings: dict[str, Any], references: Sequence[Sample],
               map_range: tuple[float, float], title: str = "fsiad inspection report", progress: bool = True,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rewrite scores.csv in input order; write errors.csv, overlays, thumbs, report.html, run.json.

        Returns run.json's content (``extra`` entries are added to it: timings, ``resumed``).
        """
        t_out = time.perf_counter()
        self._close_csv()
        out, thr = self.path, calibration.threshold
        with atomic_write(out / "scores.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(SCORE_FIELDS)
            w.writerows(_score_row(im, thr) for im in images)
        if errors:
            with atomic_write(out / "errors.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "reason"])
                w.writerows([str(p), r] for p, r in errors)
        metrics = label_metrics(images, thr, settings.get("target_fpr"))
        scale = colour_scale(calibration, map_range if images else (0.0, 0.0))
        flagged = sorted((im for im in images if decision(im.score, thr) == "anomalous"), key=lambda im: -im.score)
        described = method.describe()
        summary = {
            "flagged": f"{len(flagged)} of {len(images)}" if thr is not None else "no threshold (scores only)",
            "images scored": len(images),
            "targets not scored": len(errors),
            "method": method.name + (f" ({described['configuration']})" if described.get("configuration") else ""),
            "references": len(references),
            "threshold": "none (scores only)" if thr is None else f"{thr:.6g} ({calibration.source}"
            + (f", rule {calibration.rule}" if calibration.rule else "") + ")",
            "expected false-alarm rate": calibration.expected_fpr,
            "labels": settings.get("labels_source") or "none",
        }
        if note := orientation_note(described):
            summary["orientation"] = note
        if metrics and "image_auroc" in metrics:
            summary["image AUROC"] = f"{metrics['image_auroc']:.4f}"
        self._write_report(method, images, errors, calibration, settings, references, summary, metrics, scale,
                           title, progress)
        record = {
            "settings": settings,
            "method": described,
            "references": [str(r.path) for r in references],
            "threshold": calibration.to_dict(),
            "warnings": calibration.warnings(),
            "outlier_references": calibration.outliers,
            "decision_rule": "anomalous when score >= threshold; defect pixels: map >= pixel_threshold",
            "map_colour_scale": {**scale.to_dict(), "rule": scale_rule(calibration)},
            "n_scored": len(images),
            "n_flagged": len(flagged) if thr is not None else None,
            "flagged": [flag_entry(im, thr) for im in flagged],
            "n_errors": len(errors),
            "errors": [{"path": str(p), "reason": r} for p, r in errors],
            "metrics": metrics,
            **(extra or {}),
            "outputs_s": round(time.perf_counter() - t_out, 3),
            "outputs": {"scores": "scores.csv", "maps": "maps/", "masks": "masks/", "overlays": "overlays/",
                        "thumbs": "thumbs/", "report": "report.html", "errors": "errors.csv" if errors else None},
        }
        atomic_write_json(out / "run.json", record)
        state = self.read_state() or {}
        atomic_write_json(out / STATE_NAME, {**state, "status": "complete",
                                             "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        return record

    def _write_report(self, method: AnomalyMethod, images: Sequence[ScoredImage], errors: Sequence[tuple[Path, str]],
                      calibration: Calibration, settings: dict[str, Any], references: Sequence[Sample],
                      summary: dict[str, Any], metrics: dict[str, Any] | None, scale: render.ColourScale,
                      title: str, progress: bool) -> None:
        from fsiad.fewshot.data.io import read_image
        from fsiad.fewshot.workflow.decisions import defect_mask, map_to_image

        thr = calibration.threshold
        pix = calibration.pixel_threshold if calibration.pixel_threshold is not None else thr
        for sub in RENDERED:
            (self.path / sub).mkdir(exist_ok=True)
        refs = []
        for i, r in enumerate(references):
            rel = f"thumbs/reference-{i}.jpg"
            try:
                render.save_jpeg(render.side_by_side([read_image(r.path)], THUMB_HEIGHT), self.path / rel)
            except READ_ERRORS:  # a reference moved or changed since the model was fitted
                rel = ""
            refs.append((str(r.path), rel))
        report = ReportWriter(self.path / "report.html")
        try:
            report.header(title, summary, calibration.description, metrics,
                          histogram_svg([im.score for im in images], [im.label for im in images], thr,
                                        from_labels=labels_threshold(metrics)),
                          settings, refs, [(str(p), r) for p, r in errors], len(images),
                          warnings=calibration.warnings(), colour_bar=render.colour_bar_svg(scale),
                          flagged=[(im.name, im.score, evidence(im.score, im.image_term, thr)) for im in images
                                   if decision(im.score, thr) == "anomalous"])
            ranked = sorted(images, key=lambda im: (decision(im.score, thr) != "anomalous", -im.score))
            for rank, im in enumerate(tqdm(ranked, unit="img", desc="report", disable=not progress,
                                           file=sys.stderr), 1):
                dec = decision(im.score, thr)
                amap = np.load(self.map_path(im.name))
                pre = method.preprocess  # the image as read: the method's crop is undone on the map
                try:
                    base = read_image(im.path)
                except READ_ERRORS:  # the target changed since it was scored: show the method's view
                    base = display_image(method, im.path) if Path(im.path).is_file() else None
                    pre = None
                links = {}
                if base is not None:
                    amap = map_to_image(amap, base.shape[:2], pre)
                    ov = render.overlay(base, amap, scale.lo, scale.hi)
                    render.save_png(ov, self.path / "overlays" / f"{im.name}.png")
                    mask = defect_mask(amap, base.shape[:2], pix) if dec == "anomalous" and pix is not None else None
                    strip = render.side_by_side([base, ov, render.contour(base, mask)], THUMB_HEIGHT)
                    render.save_jpeg(strip, self.path / "thumbs" / f"{im.name}.jpg")
                    links = {"thumb": f"thumbs/{im.name}.jpg", "overlay": f"overlays/{im.name}.png"}
                    if mask is not None and self.mask_path(im.name).is_file():
                        links["mask"] = f"masks/{im.name}.png"
                report.card(rank, im.name, str(im.path), im.score, dec, im.label, links,
                            region=im.region, defect=im.defect)
        except BaseException:
            report.abort()
            raise
        report.close()


def colour_scale(calibration: Calibration, map_range: tuple[float, float]) -> render.ColourScale:
    """The run's colour scale: anchored to the pixel threshold, else the run's map range."""
    pix = calibration.pixel_threshold if calibration.pixel_threshold is not None else calibration.threshold
    if pix is None:
        return render.ColourScale(*map_range)
    floor = calibration.map_floor if calibration.map_floor is not None else min(map_range[0], pix * 0.5)
    return render.ColourScale.anchored(floor, pix)


def scale_rule(calibration: Calibration) -> str:
    if calibration.threshold is None:
        return "min and max over all maps of this run (no threshold)"
    return (f"bottom = normal background level of the references' maps, pixel threshold at "
            f"{render.THRESHOLD_POSITION:g} of the scale, top above it; the same for every image of the run")


def flag_entry(im: ScoredImage, threshold: float | None) -> dict[str, Any]:
    """A flagged image for run.json / --json."""
    d: dict[str, Any] = {"name": im.name, "path": str(im.path), "score": im.score, "label": im.label,
                         "evidence": evidence(im.score, im.image_term, threshold), "image_term": im.image_term}
    if im.region is not None:
        d.update(im.region.to_dict())
    return d


def check_output(out: str | Path, inputs: Sequence[str | Path | None], option: str = "--out") -> None:
    """Refuse an output folder that overlaps an input: inside an input folder, equal to an input,
    containing an input folder, or containing an input file (a target, a labels CSV).

    Raises:
        OutputOverlapError: one line naming both paths.
    """
    check_out_not_input(out, inputs, option)
    for inp in inputs:
        if inp is not None and Path(inp).exists() and not Path(inp).is_dir() and is_inside(inp, out):
            raise OutputOverlapError(f"{option} {out}: contains the input {inp}; "
                                     "choose an output folder outside the inputs")


def _changed(state: dict[str, Any] | None, key: dict[str, Any]) -> str:
    """Which settings differ from the folder's run, in a few words."""
    if state is None or not isinstance(state.get("settings"), dict):
        return "no fsiad run fingerprint"
    old = state["settings"]
    diff = [k for k in sorted(set(old) | set(key)) if json.dumps(old.get(k), sort_keys=True, default=str)
            != json.dumps(key.get(k), sort_keys=True, default=str)]
    return "changed: " + ", ".join(diff) if diff else "changed settings"
