"""End-to-end harness runs on generated datasets with the colour baseline."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fsiad.fewshot.data.synthetic import make_folder_dataset, make_mvtec_dataset, make_visa_dataset
from fsiad.fewshot.evaluation import METRICS, EvalConfig, evaluate
from fsiad.fewshot.methods import MethodConfig, create_method

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.eval_helpers import register_eval_methods


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    return make_mvtec_dataset(tmp_path_factory.mktemp("mvtec"), image_size=96, n_train=6, n_test_good=4,
                              n_test_defect=4)


def test_eval_writes_schema_and_resumes(mvtec_root, tmp_path, monkeypatch):
    register_eval_methods(monkeypatch)
    out = tmp_path / "run"
    # the colour baseline with its zero-shot mode declared (K = 0 allowed)
    cfg = EvalConfig(method="t_color_any", dataset="mvtec", root=mvtec_root, out=out, shots=[0, 2, "all"],
                     seeds=[0, 1], method_config=MethodConfig(image_size=64))
    summary = evaluate(cfg)
    doc = json.loads((out / "results.json").read_text())
    assert doc == json.loads(json.dumps(summary, default=str))
    assert sorted(doc["categories"]) == ["object", "texture"]
    # shots 0 runs one seed; 2 and all run both seeds
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (1 + 2 + 2)
    assert {(r["shots"], r["shots_used"]) for r in rows} == {("0", "0"), ("2", "2"), ("all", "6")}
    assert all(float(r[t]) >= 0 for r in rows for t in ("fit_s", "predict_s", "metrics_s"))
    for k in ("0", "2", "all"):
        assert set(doc["mean"][k]) == set(METRICS)
        for m in METRICS:
            v = doc["mean"][k][m]["mean"]
            assert v is not None and 0.0 <= v <= 1.0
    meta = doc["meta"]
    from fsiad.fewshot.fileio import code_fingerprint

    assert meta["code_fingerprint"] == code_fingerprint()  # other code never resumes into these rows
    for key in ("method", "encoder", "weights_source", "image_size", "resize", "crop", "mask_interpolation",
                "metric_resolution", "regime", "seeds", "references"):
        assert key in meta, key
    assert meta["regime_by_shots"] == {"0": "zero-shot", "2": "few-shot", "all": "few-shot"}
    refs = meta["references"]["texture"]["2"]
    assert len(refs["0"]) == 2 and refs["0"] != refs["1"]
    assert len(meta["references"]["texture"]["all"]["0"]) == 6
    assert doc["categories"]["texture"]["shots_used"] == {"0": 0, "2": 2, "all": 6}
    assert set(doc["categories"]["texture"]["timing_s"]["all"]) == {"fit_s", "predict_s", "metrics_s"}
    # the colour baseline finds the colour/contamination defects on these synthetic sets
    assert doc["categories"]["texture"]["shots"]["all"]["pixel_auroc"]["mean"] > 0.6

    before = (out / "results.csv").read_text()
    calls = []
    evaluate(cfg, progress=calls.append)  # resume: nothing left to do
    assert (out / "results.csv").read_text() == before
    assert all("skipped" in c for c in calls)


def test_eval_resumes_after_partial_run(mvtec_root, tmp_path):
    out = tmp_path / "run"
    base = dict(method="color_gaussian", dataset="mvtec", root=mvtec_root, out=out,
                method_config=MethodConfig(image_size=64))
    evaluate(EvalConfig(**base, shots=[1], seeds=[0], categories=["texture"]))
    first = json.loads((out / "results.json").read_text())
    evaluate(EvalConfig(**base, shots=[1], seeds=[0, 1], categories=["texture"]))
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["shots"], r["seed"]) for r in rows] == [("1", "0"), ("1", "1")]
    again = json.loads((out / "results.json").read_text())
    assert again["meta"]["references"]["texture"]["1"]["0"] == first["meta"]["references"]["texture"]["1"]["0"]


def test_eval_visa_layout(tmp_path):
    root = make_visa_dataset(tmp_path / "visa", categories=("object",), image_size=64, n_train=4,
                             n_test_good=3, n_test_defect=3)
    out = tmp_path / "run"
    evaluate(EvalConfig(method="color_gaussian", dataset="visa", root=root, out=out, shots=[2],
                        method_config=MethodConfig(image_size=64)))
    stats = json.loads((out / "results.json").read_text())["categories"]["object"]["shots"]["2"]
    assert stats["image_auroc"]["mean"] is not None and stats["pixel_aupro"]["mean"] is not None


def test_eval_dataset_without_masks_has_null_pixel_metrics(tmp_path):
    root = make_folder_dataset(tmp_path / "folder", image_size=64, n_train=4, n_test_good=3, n_test_defect=3,
                               masks=False)
    out = tmp_path / "run"
    evaluate(EvalConfig(method="color_gaussian", dataset="folder", root=root, out=out, shots=[2],
                        method_config=MethodConfig(image_size=64)))
    doc = json.loads((out / "results.json").read_text())
    (cat,) = doc["categories"].values()
    assert cat["shots"]["2"]["image_auroc"]["mean"] is not None
    assert all(cat["shots"]["2"][m]["mean"] is None for m in METRICS if m.startswith("pixel"))
    assert doc["mean"]["2"]["pixel_aupro"]["mean"] is None


def test_color_gaussian_save_load_roundtrip(mvtec_root, tmp_path):
    m = create_method("color_gaussian", MethodConfig(image_size=64))
    imgs = torch.rand(3, 3, 64, 64)
    m.fit(imgs)
    a = m.predict(imgs[:2])
    m.save(tmp_path / "model")
    b = type(m).load(tmp_path / "model").predict(imgs[:2])
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)


def test_cli_eval_and_errors(mvtec_root, tmp_path):
    out = tmp_path / "cli"
    res = run_cli("eval", "--method", "color_gaussian", "--dataset", "mvtec", "--root", mvtec_root,
                  "--categories", "object", "--shots", "1", "--out", out, "--image-size", "64")
    assert res.exit_code == 0, res.output
    assert (out / "results.md").exists() and "object" in res.stdout
    res = run_cli("eval", "--method", "nope", "--dataset", "mvtec", "--root", mvtec_root, "--out", out)
    assert res.exit_code != 0 and "unknown method" in res.output
    res = run_cli("eval", "--method", "color_gaussian", "--dataset", "mvtec", "--root", mvtec_root,
                  "--categories", "bottle", "--out", tmp_path / "x")
    assert_one_line_error(res, "bottle")
