"""Incremental, atomic results files of an evaluation run.

``results.csv`` (one row per category x shots x seed), ``results.md`` (per-category table,
mean ± std over seeds, with a mean row) and ``results.json`` are rewritten atomically after
every finished row, so a crash keeps every finished row and a rerun resumes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)
ROW_FIELDS = ("category", "shots", "seed", *METRICS, "n_test", "n_anomalous", "fit_s", "predict_s",
              "images_per_s", "references")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def shots_key(shots: int | str) -> str:
    """Results key of a shot setting: ``"0"``, ``"4"``, ``"all"``."""
    return str(shots)


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    v = float(value)
    return None if math.isnan(v) else v


class ResultsStore:
    """Rows of finished runs plus run metadata, persisted in ``out``."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        self._load_existing()

    # -- resume ---------------------------------------------------------------------------
    def _load_existing(self) -> None:
        json_path, csv_path = self.out / "results.json", self.out / "results.csv"
        if not csv_path.exists():
            return
        if json_path.exists():
            old = json.loads(json_path.read_text()).get("meta", {})
            for key in ("method", "dataset", "config_fingerprint"):
                if key in old and old[key] != self.meta.get(key):
                    raise RuntimeError(
                        f"{self.out}: holds results of another run ({key}={old[key]!r}, now "
                        f"{self.meta.get(key)!r}); use a different --out"
                    )
            refs = old.get("references", {})
            for cat, by_shot in refs.items():
                for k, by_seed in by_shot.items():
                    self.meta.setdefault("references", {}).setdefault(cat, {}).setdefault(k, {}).update(by_seed)
        with csv_path.open(newline="") as f:
            for row in csv.DictReader(f):
                self.rows.append(row)

    def done(self, category: str, shots: int | str, seed: int) -> bool:
        return any(
            r["category"] == category and r["shots"] == shots_key(shots) and int(r["seed"]) == seed
            for r in self.rows
        )

    # -- write ------------------------------------------------------------------------------
    def add(self, row: dict[str, Any], references: list[str]) -> None:
        row = {k: row.get(k) for k in ROW_FIELDS}
        row["shots"] = shots_key(row["shots"])
        row["references"] = ";".join(references)
        self.rows.append(row)
        refs = self.meta.setdefault("references", {}).setdefault(row["category"], {})
        refs.setdefault(row["shots"], {})[str(row["seed"])] = references
        self.flush()

    def flush(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(r.get(k)) for k in ROW_FIELDS})
        atomic_write_text(self.out / "results.csv", buf.getvalue())
        summary = self.summary()
        atomic_write_text(self.out / "results.json", json.dumps(summary, indent=2, default=str))
        atomic_write_text(self.out / "results.md", render_markdown(summary))

    # -- aggregate --------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The ``results.json`` document: per-category and mean-over-categories statistics.

        Per category, mean ± std (population std, ddof=0) over seeds. The mean block first
        averages categories for each seed (seeds present in every category), then takes
        mean ± std over seeds, as the few-shot literature reports it.
        """
        cats: dict[str, Any] = {}
        by_key: dict[tuple[str, str], dict[int, dict[str, float | None]]] = {}
        for r in self.rows:
            values = {m: _num(r.get(m)) for m in METRICS}
            by_key.setdefault((r["category"], r["shots"]), {})[int(r["seed"])] = values
        for (cat, k), seeds in by_key.items():
            cats.setdefault(cat, {"shots": {}})["shots"][k] = {
                m: _stats([v[m] for v in seeds.values()]) for m in METRICS
            }
        mean: dict[str, Any] = {}
        shot_keys = sorted({k for _, k in by_key}, key=_shot_order)
        categories = sorted({c for c, _ in by_key})
        for k in shot_keys:
            seed_sets = [set(by_key[(c, k)]) for c in categories if (c, k) in by_key]
            if len(seed_sets) != len(categories):
                continue
            common = sorted(set.intersection(*seed_sets))
            per_seed = {
                m: [_mean_or_none([by_key[(c, k)][s][m] for c in categories]) for s in common] for m in METRICS
            }
            mean[k] = {m: _stats(per_seed[m]) for m in METRICS}
        return {"meta": self.meta, "categories": {c: cats[c] for c in categories}, "mean": mean}


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    return "" if v is None else v


def _shot_order(k: str) -> tuple[int, int]:
    return (1, 0) if k == "all" else (0, int(k))


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = list(values)
    return None if any(v is None for v in vals) or not vals else float(np.mean(vals))


def _stats(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals or len(vals) != len(values):
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals))}


def render_markdown(summary: dict[str, Any]) -> str:
    """Per-shot tables: one row per category plus the mean row, values in % as mean±std."""
    meta = summary["meta"]
    lines = [
        f"# {meta.get('method')} on {meta.get('dataset')}",
        "",
        f"Encoder: {meta.get('encoder')} ({meta.get('weights_source')}); "
        f"regime: {meta.get('regime')}; seeds: {meta.get('seeds')}; "
        f"metric resolution: {meta.get('metric_resolution')}. Values in %, mean ± std over seeds.",
    ]
    shot_keys = sorted({k for c in summary["categories"].values() for k in c["shots"]}, key=_shot_order)
    short = ["I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO"]
    for k in shot_keys:
        lines += ["", f"## shots = {k}", "", "| category | " + " | ".join(short) + " |",
                  "|---|" + "---:|" * len(short)]
        rows = [(c, v["shots"][k]) for c, v in summary["categories"].items() if k in v["shots"]]
        if k in summary["mean"]:
            rows.append(("**mean**", summary["mean"][k]))
        for name, stats in rows:
            cells = []
            for m in METRICS:
                s = stats[m]
                if s["mean"] is None:
                    cells.append("–")
                else:
                    cells.append(f"{100 * s['mean']:.1f}±{100 * s['std']:.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
