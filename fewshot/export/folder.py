"""A torch-free writer of fsiad output folders, for the bundle runner and the Ray engine.

``fsiad.fewshot.workflow.outputs.OutputFolder`` imports torch (through the method and the
renderer), so the onnxruntime runner cannot use it. This writer keeps the same files and rules
for what it writes: ``.fsiad-output`` marker and ``.fsiad.lock`` (``fileio.OutputLock``),
``.fsiad-run.json`` with the settings fingerprint, ``scores.csv`` (``path, name, score, decision,
label``) appended and fsynced as images are scored then rewritten in input order,
``maps/<name>.npy`` written atomically before their row, ``errors.csv`` and ``run.json`` at the
end, summaries removed at the start. Resume: same fingerprint -> rows whose map exists are reused.
A folder holding another run's outputs is refused unless ``overwrite``.

Differences from the torch workflow's folder: no ``report.html``; overlays are written by the
caller (``write_overlay``); ``scores.parquet`` is written next to ``scores.csv`` when pyarrow is
importable (always with the Ray engine).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.errors import FsiadError
from fsiad.fewshot.fileio import (
    OutputLock,
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    fingerprint,
)
from fsiad.fewshot.workflow.scores_file import SCORE_FIELDS, decision, pad_row, read_score_rows

STATE_NAME = ".fsiad-run.json"
SUMMARY_FILES = ("report.html", "run.json", "errors.csv", "scores.parquet")


class OutputExistsError(FsiadError, ValueError):
    """The output folder holds the outputs of a run with different settings."""


@dataclass
class Row:
    """One scored target (a ``scores.csv`` row)."""

    path: str
    name: str
    score: float
    label: int | None = None


class LightOutput:
    """An output folder held for one run (context manager: takes the lock)."""

    def __init__(self, path: str | Path, command: str, threshold: float | None) -> None:
        self.path = Path(path)
        self.threshold = threshold
        self._lock = OutputLock(self.path, command)
        self.command = command
        self._csv: Any = None

    def __enter__(self) -> LightOutput:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        self._lock.release()

    @property
    def maps(self) -> Path:
        return self.path / "maps"

    def map_path(self, name: str) -> Path:
        return self.maps / f"{name}.npy"

    def start(self, key: dict[str, Any], targets: Sequence[tuple[str, str]], overwrite: bool = False) -> dict[str, Row]:
        """Claim the folder; returns name -> reused row (same fingerprint, map present, target still given)."""
        fp = fingerprint(key)
        try:
            state = json.loads((self.path / STATE_NAME).read_text())
        except (OSError, ValueError):
            state = None
        same = isinstance(state, dict) and state.get("fingerprint") == fp
        has = (self.path / "scores.csv").exists() or any(self.maps.glob("*.npy"))
        if not same and has and not overwrite:
            raise OutputExistsError(f"{self.path}: holds the outputs of a run with different settings; "
                                    "pass --overwrite to replace them, or choose another --out")
        for f in SUMMARY_FILES:
            (self.path / f).unlink(missing_ok=True)
        wanted = {name: str(path) for path, name in targets}
        reused: dict[str, Row] = {}
        if same:
            for r in self._old_rows():
                name = r.get("name", "")
                if wanted.get(name) == r.get("path") and name not in reused and self.map_path(name).is_file():
                    try:
                        label = int(r["label"]) if r.get("label") not in (None, "") else None
                        reused[name] = Row(r["path"], name, float(r["score"]), label)
                    except ValueError:
                        continue
        self.maps.mkdir(parents=True, exist_ok=True)
        for f in self.maps.iterdir():  # maps of other targets / settings, and temp files
            if f.is_file() and f.suffix in (".npy", ".tmp") and f.stem not in reused:
                f.unlink()
        atomic_write_json(self.path / STATE_NAME, {"fingerprint": fp, "status": "running", "command": self.command,
                                                   "started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": key})
        with atomic_write(self.path / "scores.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(SCORE_FIELDS)
            w.writerows(self._row(r) for r in reused.values())
        self._csv = (self.path / "scores.csv").open("a", newline="")
        return reused

    def _old_rows(self) -> list[dict[str, str]]:
        return read_score_rows(self.path / "scores.csv")

    def _row(self, r: Row) -> list[str]:
        return pad_row([r.path, r.name, repr(float(r.score)), decision(r.score, self.threshold) or "",
                        "" if r.label is None else str(r.label)])

    def write_map(self, name: str, amap: np.ndarray) -> None:
        write_map(self.map_path(name), amap)

    def append(self, rows: Sequence[Row]) -> None:
        """Append rows to ``scores.csv`` and fsync (their maps must be written first)."""
        if not rows:
            return
        w = csv.writer(self._csv)
        for r in rows:
            w.writerow(self._row(r))
        self._csv.flush()
        os.fsync(self._csv.fileno())

    def finish(self, rows: Sequence[Row], errors: Sequence[tuple[str, str]], record: dict[str, Any],
               parquet: bool = False) -> dict[str, Any]:
        """Rewrite ``scores.csv`` in input order; write ``errors.csv``, ``scores.parquet`` (if asked), ``run.json``."""
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        with atomic_write(self.path / "scores.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(SCORE_FIELDS)
            w.writerows(self._row(r) for r in rows)
        if errors:
            with atomic_write(self.path / "errors.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "reason"])
                w.writerows([p, why] for p, why in errors)
        if parquet:
            write_parquet(self.path / "scores.parquet", rows, self.threshold)
        record = {**record, "n_scored": len(rows), "n_errors": len(errors),
                  "errors": [{"path": p, "reason": why} for p, why in errors],
                  "outputs": {"scores": "scores.csv", "maps": "maps/", "overlays": "overlays/",
                              "parquet": "scores.parquet" if parquet else None,
                              "errors": "errors.csv" if errors else None}}
        atomic_write_json(self.path / "run.json", record)
        state = json.loads((self.path / STATE_NAME).read_text())
        atomic_write_json(self.path / STATE_NAME, {**state, "status": "complete",
                                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        return record


def write_map(path: Path, amap: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(amap, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_parquet(path: Path, rows: Sequence[Row], threshold: float | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"path": [r.path for r in rows], "name": [r.name for r in rows],
                      "score": pa.array([float(r.score) for r in rows], pa.float64()),
                      "decision": [decision(r.score, threshold) for r in rows],
                      "label": pa.array([r.label for r in rows], pa.int64())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_overlay(path: Path, image: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> None:
    """The map over ``image`` (same ``[S, S]`` grid) in fsiad's one colour map (``render.overlay``,
    numpy only), written atomically."""
    from fsiad.fewshot.workflow import render

    render.save_png(render.overlay(image, amap.astype(np.float32), lo, hi), path)
