"""Incremental, atomic results files of an evaluation run.

``results.csv`` (one row per category x shots x seed), ``results.md`` (per-category table,
mean ± std over seeds, with a mean row) and ``results.json`` are rewritten atomically after
every finished row, so a crash keeps every finished row and a rerun resumes.

Every row records what ran: ``shots`` is the requested setting (``"4"``, ``"all"``) and
``shots_used`` the number of normal references the method was actually fitted on (the
whole training pool for ``"all"``); the markdown and JSON carry the same number.

A store opened on a folder that already holds results MERGES: the earlier rows, references
and run settings (categories, shots, seeds) are kept, and new rows are added. Results of a
different method, dataset or configuration are refused (``ResumeError``), as is an unreadable
or inconsistent state (the message says what to delete).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.errors import FsiadError
from fsiad.fewshot.fileio import atomic_write_text

METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)
#: Phase timings of one run, in seconds (fit = encode references + build the model).
TIMINGS = ("fit_s", "predict_s", "metrics_s")
ROW_FIELDS = ("category", "shots", "shots_used", "seed", *METRICS, "n_test", "n_anomalous", *TIMINGS,
              "images_per_s", "references")
#: Meta entries that must match for a folder's results to be resumed / merged.
IDENTITY_KEYS = ("method", "dataset", "config_fingerprint", "code_fingerprint")


class ResumeError(FsiadError, RuntimeError):
    """The output folder holds results that cannot be resumed (another run's, or corrupt)."""


def shots_key(shots: int | str) -> str:
    """Results key of a shot setting: ``"0"``, ``"4"``, ``"all"``."""
    return str(shots)


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    v = float(value)
    return None if math.isnan(v) else v


class ResultsStore:
    """Rows of finished runs plus run metadata, persisted in ``out``.

    Args:
        out: results folder (created if needed).
        meta: metadata of this run (``method``, ``dataset``, ``config_fingerprint``, ...).
        compatible_fingerprints: other fingerprints that denote the same configuration (an
            older spelling of it); results stored under them are resumed too.

    Raises:
        ResumeError: ``out`` holds results of another run, or an unreadable state.
    """

    def __init__(self, out: Path, meta: dict[str, Any], compatible_fingerprints: Iterable[str] = ()) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        self._compatible = {meta.get("config_fingerprint"), *compatible_fingerprints}
        self._load_existing()

    # -- resume ---------------------------------------------------------------------------
    def _corrupt(self, path: Path, detail: str) -> ResumeError:
        return ResumeError(
            f"{path}: cannot resume from it ({detail}); delete results.csv, results.json and results.md "
            f"in {self.out} to start over, or choose another --out")

    def _load_existing(self) -> None:
        json_path, csv_path = self.out / "results.json", self.out / "results.csv"
        if not csv_path.exists():
            return
        if not json_path.exists():
            raise self._corrupt(csv_path, "results.json, which names the run that wrote it, is missing")
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(json_path, f"not valid JSON: {e}") from None
        old = doc.get("meta") if isinstance(doc, dict) else None
        if not isinstance(old, dict):
            raise self._corrupt(json_path, "no 'meta' object")
        for key in IDENTITY_KEYS:
            if key not in old:
                continue
            if key == "config_fingerprint":
                same = isinstance(old[key], str) and old[key] in self._compatible
            else:
                same = old[key] == self.meta.get(key)
            if not same and key == "code_fingerprint":
                raise ResumeError(
                    f"{self.out}: holds results computed by other fsiad code (an upgrade or an edit since); "
                    "use a different --out, or delete results.csv, results.json and results.md there to start over")
            if not same:
                raise ResumeError(
                    f"{self.out}: holds results of another run ({key}={old[key]!r}, now "
                    f"{self.meta.get(key)!r}); use a different --out"
                )
        self.rows = self._read_rows(csv_path)
        self._merge_meta(old)

    def _read_rows(self, csv_path: Path) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        try:
            with csv_path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                for key in ("category", "shots", "seed"):
                    if key not in fields:
                        raise self._corrupt(csv_path, f"no {key!r} column")
                for line, row in enumerate(reader, start=2):
                    rows.append(self._checked_row(row, csv_path, line))
        except (UnicodeDecodeError, csv.Error) as e:
            raise self._corrupt(csv_path, str(e)) from None
        return rows

    def _checked_row(self, row: dict[Any, Any], path: Path, line: int) -> dict[str, Any]:
        if None in row or any(v is None for v in row.values()):
            raise self._corrupt(path, f"line {line} does not have the header's number of fields")
        if not row["category"]:
            raise self._corrupt(path, f"line {line}: empty category")
        if not _valid_shots_key(row["shots"]):
            raise self._corrupt(path, f"line {line}: shots {row['shots']!r} is neither a count nor 'all'")
        if not row["seed"].lstrip("-").isdigit():
            raise self._corrupt(path, f"line {line}: seed {row['seed']!r} is not an integer")
        for key in (*METRICS, *TIMINGS, "shots_used"):
            try:
                _num(row.get(key))
            except ValueError:
                raise self._corrupt(path, f"line {line}: {key} {row[key]!r} is not a number") from None
        out = {k: row.get(k, "") for k in ROW_FIELDS}
        if out["shots_used"] in ("", None):  # rows written before the column existed
            out["shots_used"] = len(out["references"].split(";")) if out["references"] else 0
        return out

    def _merge_meta(self, old: dict[str, Any]) -> None:
        """This run's meta over the stored one; run settings and references are unions."""
        merged = {**old, **self.meta}
        for key in ("categories", "shots", "seeds"):
            before = old.get(key) if isinstance(old.get(key), list) else []
            merged[key] = before + [v for v in self.meta.get(key, []) if v not in before]
        regimes = old.get("regime_by_shots")
        if isinstance(regimes, dict) and regimes:
            merged["regime_by_shots"] = {**regimes, **self.meta.get("regime_by_shots", {})}
            merged["regime"] = ", ".join(sorted(set(map(str, merged["regime_by_shots"].values()))))
        done = {(r["category"], r["shots"], str(int(r["seed"]))) for r in self.rows}
        refs: dict[str, Any] = {}
        stored = old.get("references")
        for cat, by_shot in (stored.items() if isinstance(stored, dict) else ()):
            for k, by_seed in (by_shot.items() if isinstance(by_shot, dict) else ()):
                for seed, paths in (by_seed.items() if isinstance(by_seed, dict) else ()):
                    if (cat, k, str(seed)) in done:
                        refs.setdefault(cat, {}).setdefault(k, {})[str(seed)] = paths
        merged["references"] = refs
        self.meta = merged

    @staticmethod
    def _key(category: str, shots: int | str, seed: int | str) -> tuple[str, str, int]:
        return category, shots_key(shots), int(seed)

    def done(self, category: str, shots: int | str, seed: int) -> bool:
        key = self._key(category, shots, seed)
        return any(self._key(r["category"], r["shots"], r["seed"]) == key for r in self.rows)

    # -- write ------------------------------------------------------------------------------
    def add(self, row: dict[str, Any], references: list[str]) -> None:
        """Record a finished run (replacing an earlier row of the same category, shots, seed).

        ``shots_used`` is taken from ``references``: the images the method was fitted on.
        """
        row = {k: row.get(k) for k in ROW_FIELDS}
        row["shots"] = shots_key(row["shots"])
        row["shots_used"] = len(references)
        row["references"] = ";".join(references)
        key = self._key(row["category"], row["shots"], row["seed"])
        self.rows = [r for r in self.rows if self._key(r["category"], r["shots"], r["seed"]) != key] + [row]
        refs = self.meta.setdefault("references", {}).setdefault(row["category"], {})
        refs.setdefault(row["shots"], {})[str(row["seed"])] = references
        self.flush()

    def flush(self) -> None:
        """Rewrite the three files atomically; ``results.json`` (which names the run) first."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(r.get(k)) for k in ROW_FIELDS})
        summary = self.summary()
        atomic_write_text(self.out / "results.json", json.dumps(summary, indent=2, default=str))
        atomic_write_text(self.out / "results.csv", buf.getvalue())
        atomic_write_text(self.out / "results.md", render_markdown(summary))

    # -- aggregate --------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The ``results.json`` document: per-category and mean-over-categories statistics.

        Per category, mean ± std (population std, ddof=0) over the seeds that ran (``seeds``),
        the number of references actually used (``shots_used``: one number, or the sorted list
        when seeds differ) and the mean phase timings. The mean block first averages categories for each seed (seeds
        present in every category), then takes mean ± std over seeds, as the few-shot
        literature reports it.
        """
        cats: dict[str, Any] = {}
        by_key: dict[tuple[str, str], dict[int, dict[str, float | None]]] = {}
        rows_by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.rows:
            values = {m: _num(r.get(m)) for m in METRICS}
            by_key.setdefault((r["category"], r["shots"]), {})[int(r["seed"])] = values
            rows_by_key.setdefault((r["category"], r["shots"]), []).append(r)
        for (cat, k), seeds in by_key.items():
            block = cats.setdefault(cat, {"shots": {}, "shots_used": {}, "seeds": {}, "timing_s": {}})
            block["shots"][k] = {m: _stats([v[m] for v in seeds.values()]) for m in METRICS}
            block["seeds"][k] = sorted(seeds)
            used = sorted({int(_num(r.get("shots_used")) or 0) for r in rows_by_key[(cat, k)]})
            block["shots_used"][k] = used[0] if len(used) == 1 else used
            block["timing_s"][k] = {
                t: _mean_or_none(_num(r.get(t)) for r in rows_by_key[(cat, k)]) for t in TIMINGS
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


def _valid_shots_key(k: str) -> bool:
    return k == "all" or k.isdigit()


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
        f"regime: {meta.get('regime')}; "
        f"metric resolution: {meta.get('metric_resolution')}. Values in %, mean ± std over seeds.",
        "",
        "`used` = normal reference images the method was fitted on ('all' = the whole training pool).",
    ]
    shot_keys = sorted({k for c in summary["categories"].values() for k in c["shots"]}, key=_shot_order)
    short = ["I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO"]
    for k in shot_keys:
        ran = sorted({s for c in summary["categories"].values() for s in c.get("seeds", {}).get(k, [])})
        lines += ["", f"## shots = {k}", "", f"Seeds: {', '.join(map(str, ran)) or '–'}.", "",
                  "| category | used | " + " | ".join(short) + " |",
                  "|---|---:|" + "---:|" * len(short)]
        rows = [(c, v["shots"][k], v.get("shots_used", {}).get(k)) for c, v in summary["categories"].items()
                if k in v["shots"]]
        if k in summary["mean"]:
            used = {json.dumps(u) for _, _, u in rows}
            rows.append(("**mean**", summary["mean"][k], rows[0][2] if len(used) == 1 else None))
        for name, stats, used_k in rows:
            cells = [_used_cell(used_k)]
            for m in METRICS:
                s = stats[m]
                if s["mean"] is None:
                    cells.append("–")
                else:
                    cells.append(f"{100 * s['mean']:.1f}±{100 * s['std']:.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _used_cell(used: int | list[int] | None) -> str:
    if used is None:
        return "–"
    return "/".join(map(str, used)) if isinstance(used, list) else str(used)
