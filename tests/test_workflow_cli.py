"""End-to-end tests of `fsiad score` / `fit` / `predict` on tiny synthetic PNGs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.workflow_helpers import make_inspection_tree, register_test_methods


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    register_test_methods()
    return make_inspection_tree(tmp_path_factory.mktemp("wf"))


def invoke(*args: object):
    """``fsiad ARGS`` through the console script's error translator (as a user runs it)."""
    return run_cli(*args)


def read_scores(out: Path) -> list[dict[str, str]]:
    with (out / "scores.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_fit_predict_reproduce_score_exactly(tree, tmp_path):
    common = ["--method", "wf_pixdiff", "--shots", 4, "--seed", 3, "--normal", tree["normal"]]
    r = invoke("score", *common, "--out", tmp_path / "score", "-q", tree["targets"])
    assert r.exit_code == 0, r.output
    r = invoke("fit", *common, "--out", tmp_path / "model")
    assert r.exit_code == 0, r.output
    r = invoke("predict", "--model", tmp_path / "model", "--out", tmp_path / "pred", "-q", tree["targets"])
    assert r.exit_code == 0, r.output
    a, b = read_scores(tmp_path / "score"), read_scores(tmp_path / "pred")
    assert len(a) == 8 and a == b
    assert {row["decision"] for row in a} <= {"normal", "anomalous"} and a[0]["decision"]
    for row in a:
        ma = np.load(tmp_path / "score" / "maps" / f"{row['name']}.npy")
        mb = np.load(tmp_path / "pred" / "maps" / f"{row['name']}.npy")
        assert ma.shape == (32, 32) and np.array_equal(ma, mb)
        assert (tmp_path / "pred" / "overlays" / f"{row['name']}.png").is_file()
    ra, rb = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("score", "pred"))
    assert ra["threshold"] == rb["threshold"] and ra["threshold"]["source"] == "loo"
    assert ra["references"] == rb["references"] and len(ra["references"]) == 4
    assert ra["method"]["method"] == "wf_pixdiff"


def test_references_listed_and_seeded(tree, tmp_path):
    runs = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"s{seed}"
        assert invoke("score", "--method", "wf_pixdiff", "--shots", 3, "--seed", seed, "--normal", tree["normal"],
                      "--out", out, "-q", tree["targets"]).exit_code == 0
        runs.setdefault(seed, []).append(json.loads((out / "run.json").read_text())["references"])
    assert runs[0][0] == runs[0][1] and runs[0][0] != runs[1][0]
    assert all(Path(p).parent == tree["normal"] for p in runs[0][0])


def test_unreadable_target_listed_and_run_continues(tree, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    r = invoke("score", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"], "--out", out, "-q",
               tree["targets"], bad)
    assert r.exit_code == 0, r.output
    assert len(read_scores(out)) == 8
    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert [e["path"] for e in errors] == [str(bad)] and "not a readable image" in errors[0]["reason"]
    assert "1 not scored" in r.output
    assert str(bad) in (out / "report.html").read_text()
    assert json.loads((out / "run.json").read_text())["n_errors"] == 1
    r = invoke("score", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"], "--out", tmp_path / "all",
               "-q", bad)
    assert r.exit_code != 0 and "none of the 1 target(s) could be read" in r.output
    assert (tmp_path / "all" / "errors.csv").is_file() and (tmp_path / "all" / "report.html").is_file()


def test_targets_that_are_references_are_flagged(tree, tmp_path):
    r = invoke("score", "--method", "wf_pixdiff", "--shots", "6", "--normal", tree["normal"],
               "--out", tmp_path / "o", "-q", tree["normal"])
    assert r.exit_code == 0 and "warning: 6 target(s) are also reference images" in r.output
    assert json.loads((tmp_path / "o" / "run.json").read_text())["settings"]["targets_also_references"] == 6


@pytest.mark.parametrize("case", ["no_targets", "empty_normal", "target_folder_without_images", "missing_target",
                                  "zero_shots_few_shot_method", "too_many_shots", "no_normal", "shots_for_transductive",
                                  "bad_method_option", "bad_threshold_rule", "unknown_method"])
def test_bad_inputs_are_one_line_errors(tree, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    base = ["score", "--method", "wf_pixdiff", "--out", tmp_path / "o"]
    args, expect = {
        "no_targets": ([*base, "--shots", 2, "--normal", tree["normal"]], "no TARGET given"),
        "empty_normal": ([*base, "--shots", 2, "--normal", empty, tree["targets"]], "no images found"),
        "target_folder_without_images": ([*base, "--shots", 2, "--normal", tree["normal"], empty], "no images found"),
        "missing_target": ([*base, "--shots", 2, "--normal", tree["normal"], tmp_path / "nope"], "no such file"),
        "zero_shots_few_shot_method": ([*base, "--shots", 0, tree["targets"]], "needs K >= 1"),
        "too_many_shots": ([*base, "--shots", 99, "--normal", tree["normal"], tree["targets"]], "only 6 normal"),
        "no_normal": ([*base, "--shots", 2, tree["targets"]], "needs --normal"),
        "shots_for_transductive": ([*base, "--shots", 2, "--method", "musc", "--normal", tree["normal"], tree["targets"]],
                                   "use --shots 0"),
        "bad_method_option": ([*base, "--shots", 2, "--method", "knn", "-o", "bogus=1", "--normal", tree["normal"],
                               tree["targets"]], "unknown option"),
        "bad_threshold_rule": ([*base, "--shots", 2, "--threshold-rule", "median", "--normal", tree["normal"],
                                tree["targets"]], "unknown threshold rule"),
        "unknown_method": ([*base, "--shots", 2, "--method", "nosuch", "--normal", tree["normal"], tree["targets"]],
                           "unknown method 'nosuch'"),
    }[case]
    r = invoke(*args)
    assert r.exit_code != 0
    err = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and expect in err[0], r.output
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_zero_shot_without_threshold_gives_scores_only(tree, tmp_path):
    out = tmp_path / "zs"
    r = invoke("score", "--method", "wf_pixdiff0", "--shots", 0, "--out", out, "-q", tree["targets"])
    assert r.exit_code == 0, r.output
    assert "no threshold" in r.output and "scores only" in r.output
    rows = read_scores(out)
    assert len(rows) == 8 and all(row["decision"] == "" for row in rows)
    rec = json.loads((out / "run.json").read_text())
    assert rec["threshold"]["threshold"] is None and rec["threshold"]["source"] == "none"
    assert "scores only" in (out / "report.html").read_text()


def test_user_threshold_and_labels(tree, tmp_path):
    out = tmp_path / "lab"
    r = invoke("score", "--method", "wf_pixdiff", "--shots", 4, "--normal", tree["normal"], "--threshold", 0.3,
               "--labels", tree["labels"], "--out", out, "-q", tree["targets"])
    assert r.exit_code == 0, r.output
    rows = read_scores(out)
    assert {row["label"] for row in rows} == {"0", "1"}
    for row in rows:
        assert row["decision"] == ("anomalous" if float(row["score"]) >= 0.3 else "normal")
    m = json.loads((out / "run.json").read_text())["metrics"]
    assert m["n_labelled"] == 8 and m["n_anomalous"] == 4
    assert m["image_auroc"] == pytest.approx(1.0)  # a bright square vs plain stripes: perfectly separable
    assert m["true_positives"] + m["false_negatives"] == 4 and m["true_negatives"] + m["false_positives"] == 4
    assert re.search(r"image AUROC over the 8 scored labelled images: 1\.0000", r.output)


def test_predict_rejects_encoder_checksum_mismatch(tree, tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"original weights")
    r = invoke("fit", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"], "--weights", weights,
               "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    w = ["--weights", weights]  # a weight file outside the model folder is read only when passed
    assert invoke("predict", "--model", tmp_path / "m", *w, "--out", tmp_path / "p1", "-q", tree["targets"]).exit_code == 0
    weights.write_bytes(b"other weights")
    r = invoke("predict", "--model", tmp_path / "m", *w, "--out", tmp_path / "p2", "-q", tree["targets"])
    assert r.exit_code != 0 and "encoder mismatch" in r.output and "sha256" in r.output
    r = invoke("predict", "--model", tmp_path / "nomodel", "--out", tmp_path / "p3", tree["targets"])
    assert r.exit_code != 0 and "not an fsiad model folder" in r.output


def test_default_knn_fit_predict_reproduce_score(tree, tmp_path):
    """The default method (patch kNN, random-init DINOv2 at 56 px): fit + predict == score."""
    opts = ["--shots", 3, "--normal", tree["normal"], "--allow-random", "--image-size", 56, "--batch-size", 4]
    r = invoke("score", *opts, "--out", tmp_path / "s", "-q", tree["targets"])
    assert r.exit_code == 0, r.output
    assert invoke("fit", *opts, "--out", tmp_path / "m").exit_code == 0
    assert invoke("predict", "--model", tmp_path / "m", "--out", tmp_path / "p", "-q", tree["targets"]).exit_code == 0
    a, b = read_scores(tmp_path / "s"), read_scores(tmp_path / "p")
    assert len(a) == 8 and a == b and len({row["score"] for row in a}) == 8
    for row in a:
        assert np.array_equal(np.load(tmp_path / "s" / "maps" / f"{row['name']}.npy"),
                              np.load(tmp_path / "p" / "maps" / f"{row['name']}.npy"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["method"] == "knn" and meta["encoder"]["encoder"] == "dinov2_vits14"
    assert meta["encoder"]["weights_checksum"].startswith("random-init")
    assert meta["threshold"]["source"] == "loo" and len(meta["threshold"]["loo_scores"]) == 3


def test_demo_mix_and_labels(tmp_path):
    pytest.importorskip("conformal_clip_data", reason="demo data package conformal-clip-data not installed")
    register_test_methods()
    out = tmp_path / "demo"
    r = invoke("score", "--method", "wf_pixdiff", "--shots", 2, "--demo", "textile", "--demo-size", 8, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    rows = read_scores(out)
    assert [row["label"] for row in rows].count("0") == 4 and len(rows) == 8
    assert {row["name"].split("__")[0] for row in rows} == {"nominal", "local", "global"}
    assert "image AUROC over the 8 scored labelled images" in r.output
    rec = json.loads((out / "run.json").read_text())
    assert all("/nominal/" in p for p in rec["references"])
    assert not set(rec["references"]) & {row["path"] for row in rows}  # references are never targets
    r2 = invoke("score", "--method", "wf_pixdiff", "--shots", 2, "--demo", "textile", "--demo-size", 8,
                "--out", tmp_path / "again", "-q")
    assert r2.exit_code == 0 and read_scores(tmp_path / "again") == rows
    bad = invoke("score", "--method", "wf_pixdiff", "--shots", 2, "--demo", "textile", "--out", tmp_path / "x", out)
    assert bad.exit_code != 0 and "--demo picks its own targets" in bad.output


def test_labels_suggest_a_threshold_that_decides_as_reported(tree, tmp_path):
    """With labels, the run names the threshold they support; passed back as --threshold (as
    printed, 6 digits) it makes exactly the decisions the suggestion reported."""
    common = ["--method", "wf_pixdiff", "--shots", 4, "--normal", tree["normal"], "--labels", tree["labels"], "-q",
              "--target-fpr", 0.2]
    r = invoke("score", *common, "--out", tmp_path / "a", tree["targets"])
    assert r.exit_code == 0, r.output
    fl = json.loads((tmp_path / "a" / "run.json").read_text())["metrics"]["from_labels"]
    assert fl["target_fpr"] == 0.2 and fl["n_normal"] == 4 and fl["n_anomalous"] == 4
    at = fl["at_fpr"]
    assert at["recall"] == 1.0 and at["false_alarms"] == 0  # separable: every defect at no false alarm
    assert "label at least 5 normal parts" in fl["note"]  # 4 normals cannot show a rate of 0.2
    printed = re.search(r"from these labels: --threshold (\S+) flags 100% of the defects at 0\.0% false alarms "
                        r"\(0 of 4 normal images; target 0\.2\); also the best F1 \(1\.000\)", r.output)
    assert printed and "chosen on these images" in r.output
    html = (tmp_path / "a" / "report.html").read_text()
    assert "from these labels: --threshold" in html and "label at least 5 normal parts" in html
    assert f"from labels {at['threshold']:.4g}</text>" in html  # drawn on the histogram
    r = invoke("score", *common, "--threshold", printed.group(1), "--out", tmp_path / "b", tree["targets"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "run.json").read_text())["metrics"]
    assert (m["false_positives"], m["false_negatives"]) == (at["false_alarms"], at["misses"])
    assert m["from_labels"]["target_fpr"] == 0.2  # the run's target, also with a user threshold


def test_predict_gives_the_same_labelled_threshold_as_score(tree, tmp_path):
    """README's sequence: fit, predict a labelled batch (its threshold from labels), predict with it."""
    common = ["--method", "wf_pixdiff", "--shots", 4, "--seed", 1, "--normal", tree["normal"], "--target-fpr", 0.25]
    assert invoke("score", *common, "--labels", tree["labels"], "--out", tmp_path / "s", "-q", tree["targets"]).exit_code == 0
    assert invoke("fit", *common, "--out", tmp_path / "m").exit_code == 0
    r = invoke("predict", "--model", tmp_path / "m", "--labels", tree["labels"], "--out", tmp_path / "v", "-q",
               tree["targets"])
    assert r.exit_code == 0, r.output
    got = [json.loads((tmp_path / d / "run.json").read_text())["metrics"]["from_labels"] for d in ("s", "v")]
    assert got[0] == got[1] and got[1]["target_fpr"] == 0.25  # the model keeps the target it was fitted with
    t = re.search(r"from these labels: --threshold (\S+)", r.output).group(1)
    r = invoke("predict", "--model", tmp_path / "m", "--threshold", t, "--out", tmp_path / "p", "-q", tree["targets"])
    assert r.exit_code == 0, r.output
    flagged = {row["name"] for row in read_scores(tmp_path / "p") if row["decision"] == "anomalous"}
    assert len(flagged) == 4 - got[1]["at_fpr"]["misses"] + got[1]["at_fpr"]["false_alarms"]
