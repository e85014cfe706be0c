"""ResultsStore: schema, aggregation over seeds/categories, atomic rewrite and resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fsiad.fewshot.evaluation.results import METRICS, ResultsStore, ResumeError, render_markdown


def _row(cat: str, k, seed: int, base: float) -> dict:
    row = {"category": cat, "shots": k, "seed": seed, "n_test": 10, "n_anomalous": 5}
    for i, m in enumerate(METRICS):
        row[m] = base + 0.01 * i
    return row


def test_summary_schema_and_statistics(tmp_path):
    store = ResultsStore(tmp_path, {"method": "m", "dataset": "d", "config_fingerprint": "x"})
    store.add(_row("a", 1, 0, 0.80), ["a0.png"])
    store.add(_row("a", 1, 1, 0.90), ["a1.png"])
    store.add(_row("b", 1, 0, 0.60), ["b0.png"])
    store.add(_row("b", 1, 1, 0.70), ["b1.png"])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(doc) == {"meta", "categories", "mean"}
    a = doc["categories"]["a"]["shots"]["1"]["image_auroc"]
    assert a["mean"] == pytest.approx(0.85) and a["std"] == pytest.approx(0.05)
    # mean over categories per seed (0.70, 0.80), then mean/std over seeds
    mean = doc["mean"]["1"]["image_auroc"]
    assert mean["mean"] == pytest.approx(np.mean([0.7, 0.8]))
    assert mean["std"] == pytest.approx(np.std([0.7, 0.8]))
    assert set(doc["mean"]["1"]) == set(METRICS)
    assert doc["meta"]["references"]["b"]["1"]["1"] == ["b1.png"]
    md = (tmp_path / "results.md").read_text()
    assert "| a |" in md and "**mean**" in md and "85.0±5.0" in md
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["references"] == "a0.png"


def test_missing_pixel_metrics_are_null(tmp_path):
    store = ResultsStore(tmp_path, {"method": "m", "dataset": "d"})
    row = _row("t", 0, 0, 0.5)
    for m in METRICS[3:]:
        row[m] = None
    store.add(row, [])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["categories"]["t"]["shots"]["0"]["pixel_aupro"] == {"mean": None, "std": None}
    assert doc["mean"]["0"]["image_auroc"]["mean"] == pytest.approx(0.5)


def test_resume_keeps_rows_and_rejects_other_runs(tmp_path):
    meta = {"method": "m", "dataset": "d", "config_fingerprint": "abc"}
    store = ResultsStore(tmp_path, dict(meta))
    store.add(_row("a", 4, 0, 0.8), ["x.png"])
    again = ResultsStore(tmp_path, dict(meta))
    assert again.done("a", 4, 0) and not again.done("a", 4, 1)
    again.add(_row("a", 4, 1, 0.9), ["y.png"])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["categories"]["a"]["shots"]["4"]["image_auroc"]["mean"] == pytest.approx(0.85)
    assert doc["meta"]["references"]["a"]["4"] == {"0": ["x.png"], "1": ["y.png"]}
    with pytest.raises(RuntimeError, match="another run"):
        ResultsStore(tmp_path, {**meta, "config_fingerprint": "other"})
    assert not list(tmp_path.glob(".*tmp*"))


def test_results_of_other_code_are_not_resumed(tmp_path):
    meta = {"method": "m", "dataset": "d", "config_fingerprint": "abc", "code_fingerprint": "v1"}
    ResultsStore(tmp_path, dict(meta)).add(_row("a", 4, 0, 0.8), ["x.png"])
    assert ResultsStore(tmp_path, dict(meta)).done("a", 4, 0)
    with pytest.raises(ResumeError, match="other fsiad code .*delete results.csv"):
        ResultsStore(tmp_path, {**meta, "code_fingerprint": "v2"})
    legacy = tmp_path / "legacy"  # results written before the code was recorded are resumed
    ResultsStore(legacy, {k: v for k, v in meta.items() if k != "code_fingerprint"}).add(_row("a", 4, 0, 0.8), ["x"])
    assert ResultsStore(legacy, dict(meta)).done("a", 4, 0)


def test_resume_accepts_a_compatible_fingerprint_and_merges_meta(tmp_path):
    old = {"method": "m", "dataset": "d", "config_fingerprint": "as-spelled", "categories": ["a"], "shots": ["4"],
           "seeds": [0], "regime_by_shots": {"4": "few-shot"}, "encoder": "enc"}
    ResultsStore(tmp_path, dict(old)).add(_row("a", 4, 0, 0.8), ["x.png"])
    new = {"method": "m", "dataset": "d", "config_fingerprint": "resolved", "categories": ["b"], "shots": ["1"],
           "seeds": [0, 1]}
    with pytest.raises(ResumeError, match="another run"):
        ResultsStore(tmp_path, dict(new))
    store = ResultsStore(tmp_path, dict(new), compatible_fingerprints=["as-spelled"])
    assert store.done("a", 4, 0)
    store.add(_row("b", 1, 1, 0.7), ["y.png"])
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["config_fingerprint"] == "resolved" and meta["encoder"] == "enc"
    assert meta["categories"] == ["a", "b"] and meta["shots"] == ["4", "1"] and meta["seeds"] == [0, 1]
    assert meta["regime_by_shots"] == {"4": "few-shot"}
    assert meta["references"] == {"a": {"4": {"0": ["x.png"]}}, "b": {"1": {"1": ["y.png"]}}}


def test_rows_written_before_shots_used_existed_count_their_references(tmp_path):
    store = ResultsStore(tmp_path, {"method": "m", "dataset": "d", "config_fingerprint": "f"})
    store.add(_row("a", "all", 0, 0.8), ["x.png", "y.png", "z.png"])
    text = (tmp_path / "results.csv").read_text().splitlines()
    header = text[0].split(",")
    i = header.index("shots_used")
    legacy = [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in text]
    (tmp_path / "results.csv").write_text("\n".join(legacy) + "\n")
    again = ResultsStore(tmp_path, {"method": "m", "dataset": "d", "config_fingerprint": "f"})
    assert again.summary()["categories"]["a"]["shots_used"] == {"all": 3}
    assert "| a | 3 |" in render_markdown(again.summary())
