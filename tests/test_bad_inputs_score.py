"""`fsiad score` / `fit` / `predict` output folders: never read as input, locked, incremental, resumable."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fsiad.fewshot.fileio import OUTPUT_MARKER, OutputLock
from fsiad.fewshot.methods.base import MethodConfig, register_method
from fsiad.fewshot.workflow.session import InspectionSession
from fsiad.fewshot.workflow.targets import collect_images, collect_samples

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.workflow_helpers import PixelDiff, make_inspection_tree, register_test_methods, write_images


class Counting(PixelDiff):
    """PixelDiff that counts the images it scores and can be interrupted after N chunks."""

    scored = 0
    chunks = 0
    fail_after: int | None = None

    def predict(self, images):
        cls = type(self)
        if cls.fail_after is not None and cls.chunks >= cls.fail_after:
            raise KeyboardInterrupt  # what Ctrl-C (or a crash) at that point looks like
        cls.chunks += 1
        cls.scored += int(images.shape[0])
        return super().predict(images)

    @classmethod
    def reset(cls, fail_after: int | None = None) -> None:
        cls.scored, cls.chunks, cls.fail_after = 0, 0, fail_after


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    register_test_methods()
    register_method("wf_count")(Counting)
    return make_inspection_tree(tmp_path_factory.mktemp("sc"))


@pytest.fixture(autouse=True)
def _reset_counter():
    Counting.reset()
    yield
    Counting.reset()


def score(tree, out, *extra, threshold=0.3):
    """8 targets in chunks of 2, threshold given (no leave-one-out predictions to count)."""
    return run_cli("score", "--method", "wf_count", "--shots", 3, "--normal", tree["normal"], "--threshold", threshold,
                   "--chunk-size", 2, "--out", out, "-q", *extra, tree["targets"])


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "scores.csv").open() as fh:
        return list(csv.DictReader(fh))


def by_path(out: Path) -> dict[str, str]:
    return {r["path"]: r["score"] for r in rows(out)}


# -- output folder versus inputs ----------------------------------------------------------------
@pytest.mark.parametrize("case", ["inside_normal", "inside_targets", "is_targets", "contains_targets",
                                  "contains_target_file", "contains_labels"])
def test_out_overlapping_an_input_is_refused(tree, tmp_path, case):
    root = tree["targets"].parent
    extra: list = []
    targets = [tree["targets"]]
    out = {"inside_normal": tree["normal"] / "run", "inside_targets": tree["targets"] / "good" / "run",
           "is_targets": tree["targets"], "contains_targets": root, "contains_target_file": tmp_path / "o",
           "contains_labels": tmp_path / "o"}[case]
    if case == "contains_target_file":
        (tmp_path / "o").mkdir()
        shutil.copy(tree["targets"] / "bad" / "img_000.png", tmp_path / "o" / "x.png")
        targets = [tmp_path / "o" / "x.png"]
    if case == "contains_labels":
        (tmp_path / "o").mkdir()
        shutil.copy(tree["labels"], tmp_path / "o" / "labels.csv")
        extra = ["--labels", tmp_path / "o" / "labels.csv"]
    before = sorted(p for p in root.rglob("*"))
    r = run_cli("score", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"], "--out", out, "-q",
                *extra, *targets)
    assert_one_line_error(r, str(out), "output folder outside the inputs")
    assert sorted(p for p in root.rglob("*")) == before  # nothing created, nothing removed
    assert Counting.scored == 0


def test_fit_and_predict_refuse_overlapping_out(tree, tmp_path):
    r = run_cli("fit", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"], "--out", tree["normal"] / "m")
    assert_one_line_error(r, "inside the input")
    assert not (tree["normal"] / "m").exists()
    assert run_cli("fit", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"],
                   "--out", tmp_path / "m").exit_code == 0
    r = run_cli("predict", "--model", tmp_path / "m", "--out", tmp_path / "m" / "pred", tree["targets"])
    assert_one_line_error(r, "inside the input", str(tmp_path / "m"))


def test_output_folders_are_never_collected(tree, tmp_path):
    normal = tmp_path / "normal"
    shutil.copytree(tree["normal"], normal)
    old = normal / "old_run" / "overlays"  # an fsiad output that ended up under the normal folder
    write_images(old, 3, defect=True, seed=9)
    (normal / "old_run" / OUTPUT_MARKER).write_text("x")
    found = collect_images([normal])
    assert len(found) == 6 and not any("old_run" in str(p) for p in found)
    with pytest.raises(Exception, match="fsiad output folder"):
        collect_images([normal / "old_run"])
    r = run_cli("score", "--method", "wf_pixdiff", "--shots", 6, "--normal", normal, "--out", tmp_path / "o", "-q",
                tree["targets"])
    assert r.exit_code == 0, r.output
    refs = json.loads((tmp_path / "o" / "run.json").read_text())["references"]
    assert len(refs) == 6 and not any("old_run" in p for p in refs)
    r = run_cli("score", "--method", "wf_pixdiff", "--shots", 7, "--normal", normal, "--out", tmp_path / "o2",
                tree["targets"])
    assert_one_line_error(r, "only 6 normal images")
    assert (tmp_path / "o" / OUTPUT_MARKER).is_file()  # every output folder carries the marker


def test_collect_samples_uses_the_method_hook_and_skips_outputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / OUTPUT_MARKER).write_text("x")
    calls = []

    class WithHook:
        @staticmethod
        def collect_samples(paths, labels):
            from fsiad.fewshot.data.base import Sample

            calls.append((list(paths), labels))
            return [Sample(tmp_path / "a" / "rgb.png", label=None), Sample(tmp_path / "out" / "x.png", label=None)]

    got = collect_samples(WithHook, [tmp_path / "a"], normal=True)
    assert calls == [([tmp_path / "a"], None)]
    assert [s.path for s in got] == [tmp_path / "a" / "rgb.png"] and got[0].label == 0


# -- lock ---------------------------------------------------------------------------------------
def test_held_lock_refuses_a_second_run(tree, tmp_path):
    out = tmp_path / "o"
    with OutputLock(out, "fsiad score (the first run)"):
        r = score(tree, out)
        assert_one_line_error(r, "in use by", "the first run")
    assert Counting.scored == 0 and not (out / "scores.csv").exists()
    assert score(tree, out).exit_code == 0  # released: the next run proceeds


# -- incremental scores.csv, resume, different settings --------------------------------------------
def test_interrupted_run_keeps_scores_and_drops_stale_summaries(tree, tmp_path):
    out = tmp_path / "o"
    assert score(tree, out, threshold=0.3).exit_code == 0
    assert (out / "report.html").is_file() and (out / "run.json").is_file()
    Counting.reset(fail_after=2)
    r = score(tree, out, "--overwrite", threshold=0.5)  # other settings, interrupted after 2 chunks of 2
    assert r.exit_code != 0, r.output  # click reports the interrupt as "Aborted."
    got = rows(out)
    assert len(got) == 4 and all(r["decision"] == ("anomalous" if float(r["score"]) >= 0.5 else "normal") for r in got)
    assert all((out / "maps" / f"{r['name']}.npy").is_file() for r in got)
    assert sorted(p.stem for p in (out / "maps").glob("*.npy")) == sorted(r["name"] for r in got)
    for stale in ("report.html", "run.json", "errors.csv"):
        assert not (out / stale).exists(), stale
    assert not any((out / "overlays").glob("*.png")) if (out / "overlays").exists() else True

    Counting.reset()
    r = score(tree, out, threshold=0.5)  # same settings: resume
    assert r.exit_code == 0, r.output
    assert Counting.scored == 4 and "4 resumed" in r.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["resumed"] == 4 and rec["n_rescored"] == 4 and rec["n_scored"] == 8
    Counting.reset()
    assert score(tree, tmp_path / "fresh", threshold=0.5).exit_code == 0
    assert rows(out) == rows(tmp_path / "fresh")  # same rows, same order, same decisions
    for r in rows(out):
        assert np.array_equal(np.load(out / "maps" / f"{r['name']}.npy"),
                              np.load(tmp_path / "fresh" / "maps" / f"{r['name']}.npy"))
    assert len(list((out / "overlays").glob("*.png"))) == 8


def test_complete_rerun_scores_nothing_and_new_targets_only(tree, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(tree["targets"], root)
    out = tmp_path / "o"
    tree2 = {**tree, "targets": root}
    assert score(tree2, out).exit_code == 0 and Counting.scored == 8
    Counting.reset()
    assert score(tree2, out).exit_code == 0 and Counting.scored == 0
    write_images(root / "new", 1, defect=True, seed=5, prefix="n")  # one more target, in a new subfolder
    (out / "maps" / "good__img_001.npy").unlink()  # and a lost map: that target is scored again
    Counting.reset()
    r = score(tree2, out)
    assert r.exit_code == 0, r.output
    assert Counting.scored == 2
    assert json.loads((out / "run.json").read_text())["resumed"] == 7
    assert len(rows(out)) == 9 and len(list((out / "maps").glob("*.npy"))) == 9
    (root / "new" / "n_000.png").unlink()  # a target gone: its row and map go too
    Counting.reset()
    assert score(tree2, out).exit_code == 0 and Counting.scored == 0
    assert len(rows(out)) == 8 and len(list((out / "maps").glob("*.npy"))) == 8


def test_other_code_rescores_instead_of_resuming(tree, tmp_path, monkeypatch):
    """Same settings, other fsiad code (an upgrade, an edit): nothing is reused, no error."""
    from fsiad.fewshot import fileio

    out = tmp_path / "o"
    assert score(tree, out, threshold=0.5).exit_code == 0
    Counting.reset()
    assert score(tree, out, threshold=0.5).exit_code == 0 and Counting.scored == 0  # same code: resumed
    monkeypatch.setattr(fileio, "_CODE_FINGERPRINT", "other code")
    Counting.reset()
    r = score(tree, out, threshold=0.5)
    assert r.exit_code == 0, r.output
    assert Counting.scored == 8 and json.loads((out / "run.json").read_text())["resumed"] == 0
    assert json.loads((out / ".fsiad-run.json").read_text())["code"] == "other code"


def test_different_settings_never_mix_rows(tree, tmp_path):
    out = tmp_path / "o"
    assert score(tree, out, threshold=0.3).exit_code == 0
    first = rows(out)
    r = score(tree, out, "--seed", 1)  # other references
    assert_one_line_error(r, "different settings", "references", "--overwrite")
    assert rows(out) == first and (out / "report.html").is_file()  # refused before touching anything
    Counting.reset()
    r = score(tree, out, "--seed", 1, "--overwrite")
    assert r.exit_code == 0 and Counting.scored == 8
    assert json.loads((out / "run.json").read_text())["resumed"] == 0
    assert score(tree, tmp_path / "fresh", "--seed", 1).exit_code == 0
    assert rows(out) == rows(tmp_path / "fresh")


def test_foreign_outputs_need_overwrite(tree, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "scores.csv").write_text("path,name,score,decision,label\n/x.png,x,0.1,,\n")  # an older fsiad's output
    assert_one_line_error(score(tree, out), "different settings", "--overwrite")
    assert score(tree, out, "--overwrite").exit_code == 0 and len(rows(out)) == 8


def test_session_in_memory_and_with_out(tree, tmp_path):
    session = InspectionSession("wf_count", MethodConfig(), shots=3, threshold=0.3)
    res = session.score([tree["targets"]], normal=tree["normal"])
    assert len(res.predictions) == 8 and res.out is None and res.record is None
    p = res.predictions[0]
    assert p.anomaly_map.shape == (32, 32) and p.decision == ("anomalous" if p.score >= 0.3 else "normal")
    model = session.fit(tree["normal"], save_to=tmp_path / "m")
    res2 = model.predict([tree["targets"]], out=tmp_path / "p")
    assert res2.scores == res.scores and res2.record["n_scored"] == 8
    assert np.array_equal(res2.predictions[0].anomaly_map, p.anomaly_map)  # read back from maps/
    assert (tmp_path / "p" / "report.html").is_file()
