"""``fsiad eval`` with bad or unusual inputs: what it records is what ran, one eval per --out,
resume and merge, shots defaults per regime, one-line errors, progress output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import pytest
from fsiad.fewshot.data import load_dataset
from fsiad.fewshot.data.synthetic import make_mvtec_dataset
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.evaluation import EvalConfig, default_shots, evaluate
from fsiad.fewshot.evaluation.harness import PreparedBatches
from fsiad.fewshot.fileio import OutputLock
from fsiad.fewshot.methods import MethodConfig, create_method

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.eval_helpers import register_eval_methods

POOL = 8  # normal training images per category


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_mvtec_dataset(tmp_path_factory.mktemp("mvtec") / "data", image_size=48, n_train=POOL,
                              n_test_good=3, n_test_defect=3)


@pytest.fixture(autouse=True)
def _methods(monkeypatch):
    register_eval_methods(monkeypatch)


def _eval(root: Path, out: Path, *extra: object, method: str = "color_gaussian", category: str = "texture"):
    args = ["eval", "--method", method, "--dataset", "mvtec", "--root", root, "--out", out,
            "--image-size", 32, "--device", "cpu", "-q"]
    if category:
        args += ["--categories", category]
    return run_cli(*args, *extra)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _ran(out: Path) -> set[tuple[str, str, str, str]]:
    return {(r["category"], r["shots"], r["shots_used"], r["seed"]) for r in _rows(out)}


# -- records are what ran ---------------------------------------------------------------------
def test_shots_larger_than_the_pool_are_refused_before_any_run(root, tmp_path):
    out = tmp_path / "out"
    r = _eval(root, out, "--shots", "2,50")
    line = assert_one_line_error(r, "--shots 50", f"only {POOL}", "texture")
    assert "--shots all" in line
    assert not (out / "results.csv").exists()  # not even the 2-shot run: refused up front


def test_all_and_pool_sized_shots_record_the_references_used(root, tmp_path):
    out = tmp_path / "out"
    r = _eval(root, out, "--shots", f"2,{POOL},all")
    assert r.exit_code == 0, r.output
    assert _ran(out) == {("texture", "2", "2", "0"), ("texture", str(POOL), str(POOL), "0"),
                         ("texture", "all", str(POOL), "0")}
    assert all(len(r["references"].split(";")) == int(r["shots_used"]) for r in _rows(out))
    doc = json.loads((out / "results.json").read_text())
    assert doc["categories"]["texture"]["shots_used"] == {"2": 2, str(POOL): POOL, "all": POOL}
    assert len(doc["meta"]["references"]["texture"]["all"]["0"]) == POOL
    md = (out / "results.md").read_text()
    assert "| category | used |" in md
    assert f"| texture | {POOL} |" in md and "| texture | 2 |" in md


# -- one eval per --out; merge; resume --------------------------------------------------------
def test_second_eval_on_a_locked_out_is_refused(root, tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, "fsiad eval (the other one)"):
        r = _eval(root, out, "--shots", "1")
    assert_one_line_error(r, str(out), "in use by", f"pid {os.getpid()}", "the other one")
    assert r.exit_code == 1
    assert not (out / "results.csv").exists()
    assert _eval(root, out, "--shots", "1").exit_code == 0  # released: the next run goes ahead


def test_later_runs_merge_rows_instead_of_overwriting(root, tmp_path):
    out = tmp_path / "out"
    assert _eval(root, out, "--shots", "1").exit_code == 0
    assert _eval(root, out, "--shots", "2", "--seeds", "0,1", category="object").exit_code == 0
    assert _eval(root, out, "--shots", "1", "--seeds", "0,1").exit_code == 0  # resume: adds seed 1 only
    assert _ran(out) == {("texture", "1", "1", "0"), ("object", "2", "2", "0"), ("object", "2", "2", "1"),
                         ("texture", "1", "1", "1")}
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["categories"]) == {"texture", "object"}
    meta = doc["meta"]
    assert set(meta["categories"]) == {"texture", "object"} and set(meta["shots"]) == {"1", "2"}
    assert meta["seeds"] == [0, 1]
    assert set(meta["references"]) == {"texture", "object"}
    md = (out / "results.md").read_text()
    assert "## shots = 1\n\nSeeds: 0, 1." in md and "## shots = 2\n\nSeeds: 0, 1." in md
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_with_the_root_spelled_differently(root, tmp_path):
    out = tmp_path / "out"
    assert _eval(root, out, "--shots", "1").exit_code == 0
    before = _rows(out)
    other_spelling = root / ".." / root.name
    r = _eval(other_spelling, out, "--shots", "1", "--seeds", "0,1", "-v")
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert rows[0] == before[0]  # the finished run is kept, not redone
    assert [(x["shots"], x["seed"]) for x in rows] == [("1", "0"), ("1", "1")]
    assert r.stderr.count("texture shots=1") == 1  # only the new seed ran


def test_another_runs_results_are_refused_with_one_line(root, tmp_path):
    out = tmp_path / "out"
    assert _eval(root, out, "--shots", "1").exit_code == 0
    r = _eval(root, out, "--shots", "1", method="t_color_full")
    assert_one_line_error(r, "another run", "method=", "--out")
    r = _eval(root, out, "--shots", "1", "-o", "sigma=2")
    assert_one_line_error(r, "another run", "config_fingerprint", "--out")
    doc = json.loads((out / "results.json").read_text())
    doc["meta"]["config_fingerprint"] = ["not", "a", "string"]
    (out / "results.json").write_text(json.dumps(doc))
    assert_one_line_error(_eval(root, out, "--shots", "1"), "another run")


def test_nothing_left_to_do_rewrites_the_files(root, tmp_path):
    out = tmp_path / "out"
    assert _eval(root, out, "--shots", "1").exit_code == 0
    md = (out / "results.md").read_text()
    (out / "results.md").unlink()
    r = _eval(root, out, "--shots", "1")
    assert r.exit_code == 0, r.output
    assert (out / "results.md").read_text() == md and "| texture | 1 |" in r.stdout


CORRUPTIONS = {
    "json-garbage": ("results.json", "{not json"),
    "json-not-an-object": ("results.json", "[1, 2]"),
    "json-missing": ("results.json", None),
    "csv-bad-seed": ("results.csv", "category,shots,seed\ntexture,1,x\n"),
    "csv-no-seed-column": ("results.csv", "category,shots\ntexture,1\n"),
    "csv-ragged": ("results.csv", "category,shots,seed\ntexture,1\n"),
    "csv-bad-metric": ("results.csv", "category,shots,seed,image_auroc\ntexture,1,0,high\n"),
    "csv-not-utf8": ("results.csv", b"category,shots,seed\n\xff\xfe,1,0\n"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_resume_state_is_one_line_saying_what_to_do(root, tmp_path, case):
    out = tmp_path / "out"
    assert _eval(root, out, "--shots", "1").exit_code == 0
    name, content = CORRUPTIONS[case]
    if content is None:
        (out / name).unlink()
    elif isinstance(content, bytes):
        (out / name).write_bytes(content)
    else:
        (out / name).write_text(content)
    kept = {p.name: p.read_bytes() for p in out.glob("results.*")}
    r = _eval(root, out, "--shots", "1", "--seeds", "0,1")
    line = assert_one_line_error(r, "cannot resume", "delete", "another --out")
    assert r.exit_code == 1 and "internal error" not in r.output, line
    assert {p.name: p.read_bytes() for p in out.glob("results.*")} == kept  # nothing overwritten


# -- shots defaults and regimes -------------------------------------------------------------
@pytest.mark.parametrize(("method", "expected"), [
    ("t_color_full", {("all", str(POOL))}),
    ("color_gaussian", {("1", "1"), ("2", "2"), ("4", "4"), ("8", "8")}),
    ("t_color_zero", {("0", "0")}),
    ("t_color_any", {("1", "1"), ("2", "2"), ("4", "4"), ("8", "8")}),
    ("t_color_transductive", {("0", "0")}),
])
def test_no_shots_runs_the_methods_regime(root, tmp_path, method, expected):
    out = tmp_path / "out"
    r = _eval(root, out, method=method)
    assert r.exit_code == 0, r.output
    assert {(x["shots"], x["shots_used"]) for x in _rows(out)} == expected


def test_builtin_defaults_follow_the_regime():
    assert default_shots("patchcore") == ["all"] and default_shots("padim") == ["all"]
    assert default_shots("knn") == [1, 2, 4, 8] and default_shots("regad") == [1, 2, 4, 8]
    assert default_shots("musc") == [0] and default_shots("winclip") == [0]


@pytest.mark.parametrize(("method", "shots", "needles"), [
    ("t_color_few", "0", ("--shots 0", "few-shot", "1,2,4,8")),
    ("t_color_few", "0,2", ("--shots 0", "few-shot")),
    ("t_color_full", "0", ("--shots 0", "full-data", "all")),
    ("patchcore", "0", ("--shots 0", "full-data")),  # refused before any weights are looked for
    ("knn", "0", ("--shots 0", "few-shot")),
    ("t_color_transductive", "2", ("--shots 2", "takes no", "--shots 0")),
])
def test_shots_the_method_cannot_run_are_one_line(root, tmp_path, method, shots, needles):
    out = tmp_path / "out"
    r = _eval(root, out, "--shots", shots, method=method)
    assert_one_line_error(r, *needles)
    assert not out.exists()


def test_help_states_the_shots_default_per_regime():
    r = run_cli("eval", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for needle in ("'all' for full-data methods", "'1,2,4,8' for few-shot methods", "'0' for zero-shot"):
        assert needle in text, needle


# -- other user errors: one line, before any run ----------------------------------------------
def test_unknown_method_option_fails_before_any_run(root, tmp_path):
    out = tmp_path / "out"
    r = _eval(root, out, "--shots", "1", "-o", "foo=1")
    assert_one_line_error(r, "foo")
    assert not out.exists()
    r = _eval(root, out, "--shots", "1", "-o", "sigma=-1")
    assert_one_line_error(r, "sigma")
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), [
    (("--chunk-size", "0"), "--chunk-size"),
    (("--chunk-size", "-3"), "--chunk-size"),
    (("--shots", "-1"), "--shots"),
    (("--shots", "two"), "--shots"),
    (("--seeds", "x"), "--seeds"),
])
def test_bad_numbers_are_refused_at_parse_time(root, tmp_path, args, needle):
    out = tmp_path / "out"
    r = _eval(root, out, *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    assert needle in r.output
    assert not out.exists()


def _unwritable_out(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores the mode: use a path under a file instead
        afile = tmp_path / "afile"
        afile.write_text("x")
        return afile / "sub"
    return ro / "sub"


def test_unwritable_out_is_one_line(root, tmp_path):
    out = _unwritable_out(tmp_path)
    try:
        r = _eval(root, out, "--shots", "1")
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert_one_line_error(r, str(out.parent))
    assert r.exit_code == 1


def test_out_under_a_file_is_one_line(root, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = _eval(root, afile / "sub", "--shots", "1")
    assert_one_line_error(r, "afile")
    assert r.exit_code == 1


def test_out_inside_or_containing_the_root_is_refused(tmp_path):
    data = make_mvtec_dataset(tmp_path / "data", categories=("texture",), image_size=32, n_train=2,
                              n_test_good=1, n_test_defect=1)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    r = _eval(data, data / "texture" / "results", "--shots", "1")
    assert_one_line_error(r, "inside the input")
    r = _eval(data, tmp_path, "--shots", "1")
    assert_one_line_error(r, "contains the input")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert not (tmp_path / "results.csv").exists()


# -- progress ------------------------------------------------------------------------------------
def _eval_loud(root: Path, out: Path, *extra: object):
    return run_cli("eval", "--method", "color_gaussian", "--dataset", "mvtec", "--root", root, "--out", out,
                   "--image-size", 32, "--device", "cpu", "--categories", "texture", "--shots", "1,2", *extra)


def test_progress_bar_on_stderr_by_default(root, tmp_path):
    r = _eval_loud(root, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "2/2" in r.stderr and "run" in r.stderr  # the runs bar reached its end
    assert "| texture |" in r.stdout and "2/2" not in r.stdout  # results on stdout, bars on stderr
    assert "texture shots=1 (used 1) seed=0:" not in r.stderr  # per-run lines only with -v


def test_quiet_prints_no_progress_and_verbose_adds_run_lines(root, tmp_path):
    r = _eval_loud(root, tmp_path / "quiet", "-q")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    r = _eval_loud(root, tmp_path / "verbose", "-v")
    assert r.exit_code == 0, r.output
    for k in (1, 2):
        line = next(ln for ln in r.stderr.splitlines() if f"texture shots={k} (used {k}) seed=0:" in ln)
        assert "image_auroc=" in line and "fit " in line and "predict " in line and "metrics " in line


def test_phase_timings_are_kept_in_the_results(root, tmp_path):
    out = tmp_path / "out"
    assert _eval(root, out, "--shots", "1").exit_code == 0
    (row,) = _rows(out)
    assert all(row[t] != "" and float(row[t]) >= 0 for t in ("fit_s", "predict_s", "metrics_s"))
    timing = json.loads((out / "results.json").read_text())["categories"]["texture"]["timing_s"]["1"]
    assert set(timing) == {"fit_s", "predict_s", "metrics_s"} and all(v >= 0 for v in timing.values())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_phase_bars_on_a_terminal(root, tmp_path):
    err = _Terminal()
    cfg = EvalConfig(method="color_gaussian", dataset="mvtec", root=root, out=tmp_path / "out", categories=["texture"],
                     shots=[2], method_config=MethodConfig(image_size=32, device="cpu"))
    with contextlib.redirect_stderr(err):
        evaluate(cfg, progress=lambda line: None, show_bars=True)
    text = err.getvalue()
    for needle in ("  fit:", "/2 [", "  predict:", "/6 [", "  metrics:", "step", "texture shots=2 seed=0", "1/1"):
        assert needle in text, (needle, text)


def test_prepared_batches_report_images_per_chunk(root):
    (cat,) = load_dataset("mvtec", root, ["texture"])
    method = create_method("color_gaussian", MethodConfig(image_size=32, device="cpu"))
    seen: list[int] = []
    batches = PreparedBatches(method, cat.train[:5], chunk=2, keep_bytes=1 << 20, on_images=seen.append)
    assert sum(len(b) for b in batches) == 5
    assert seen == [2, 2, 1]
    assert sum(len(b) for b in batches) == 5  # second pass from the kept chunks reports too
    assert seen == [2, 2, 1, 2, 2, 1]


def test_zero_shot_records_the_one_seed_that_ran(root, tmp_path):
    out = tmp_path / "out"
    r = _eval(root, out, "--seeds", "3,4", method="t_color_zero")
    assert r.exit_code == 0, r.output
    assert _ran(out) == {("texture", "0", "0", "3")}
    doc = json.loads((out / "results.json").read_text())
    assert doc["categories"]["texture"]["seeds"] == {"0": [3]}
    assert "## shots = 0\n\nSeeds: 3." in (out / "results.md").read_text()


@pytest.mark.parametrize("shots", [[-1], [], ["two"], [1.5]])
def test_library_shot_settings_are_checked(root, tmp_path, shots):
    cfg = EvalConfig(method="color_gaussian", dataset="mvtec", root=root, out=tmp_path / "out", categories=["texture"],
                     shots=shots, method_config=MethodConfig(image_size=32, device="cpu"))
    with pytest.raises(OptionError, match="--shots"):
        evaluate(cfg)
    assert not (tmp_path / "out").exists()


def test_library_shot_strings_run_as_counts(root, tmp_path):
    cfg = EvalConfig(method="color_gaussian", dataset="mvtec", root=root, out=tmp_path / "out", categories=["texture"],
                     shots=["2", "all"], method_config=MethodConfig(image_size=32, device="cpu"))
    evaluate(cfg, progress=lambda line: None)
    assert _ran(tmp_path / "out") == {("texture", "2", "2", "0"), ("texture", "all", str(POOL), "0")}
