"""Prompt editing as a workflow: compare, explain, init --category, repeated entries (issue #17).

All with a random-init tiny open_clip model (``tests/clip_helpers.py``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fsiad.fewshot.encoders.clip import CLIPEncoder
from fsiad.fewshot.evaluation.harness import EvalConfig, evaluate
from fsiad.fewshot.evaluation.prompts import CompareConfig, compare_prompts
from fsiad.fewshot.methods.base import MethodConfig
from fsiad.fewshot.methods.winclip import WinCLIP
from fsiad.fewshot.methods.winclip_prompts import explain
from fsiad.prompts import default_prompts_path, load_prompts, validate
from fsiad.prompts.loader import check
from PIL import Image

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.clip_helpers import fsiad_home_fixture, images, register_tiny_arch  # noqa: F401 - fixture

# anomalib's WinCLIP ensemble (src/anomalib/models/image/winclip/prompting.py): 7 normal and
# 4 anomalous states, 21 templates of which one is listed twice -> 147 / 84 prompts.
ANOMALIB_NORMAL = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                   "{} without damage"]
ANOMALIB_ANOMALOUS = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
ANOMALIB_TEMPLATES = [
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
]


def _yaml(normal, anomalous, templates, extra: str = "") -> str:
    return (f"normal_states: {json.dumps(normal)}\nanomalous_states: {json.dumps(anomalous)}\n"
            f"templates: {json.dumps(templates)}\n{extra}")


def _prompt_file(path: Path, normal, anomalous, templates) -> Path:
    path.write_text(_yaml(normal, anomalous, templates))
    return path


SMALL_A = (["{}", "perfect {}", "flawless {}"], ["damaged {}", "{} with a crack"],
           ["a photo of a {}.", "a close-up photo of the {}.", "an image of a {}."])
SMALL_B = (["{}", "clean {}"], ["broken {}", "{} with defect", "scratched {}"], ["a photo of the {}.", "a {}."])


@pytest.fixture(name="arch")
def arch_fixture(fsiad_home, tmp_path_factory) -> str:
    return register_tiny_arch(tmp_path_factory.mktemp("arch"))


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(name="category")
def category_fixture(tmp_path) -> Path:
    """MVTec-layout category ``widget``: 3 train/good, 3 test/good, 3 test/crack with masks (48 px)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "widget"

    def base() -> np.ndarray:
        return (rng.random((48, 48, 3)) * 60 + 100).astype(np.uint8)

    for i in range(3):
        _png(root / "train" / "good" / f"{i:03d}.png", base())
        _png(root / "test" / "good" / f"{i:03d}.png", base())
        img, mask = base(), np.zeros((48, 48), np.uint8)
        y, x = 6 + 10 * i, 30 - 8 * i
        img[y : y + 12, x : x + 12] = 255
        mask[y : y + 12, x : x + 12] = 255
        _png(root / "test" / "crack" / f"{i:03d}.png", img)
        _png(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


def _mc(arch: str, **kw) -> MethodConfig:
    return MethodConfig(encoder=f"clip:{arch}", allow_random=True, device="cpu", batch_size=4, **kw)


def _eval_row(arch: str, root: Path, prompt: Path, shots: int, out: Path) -> dict:
    evaluate(EvalConfig(method="winclip", dataset="mvtec", root=root, out=out, shots=[shots], seeds=[0],
                        method_config=_mc(arch, prompts=str(prompt))))
    with (out / "results.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    return row


# -- compare -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shots", [0, 2])
def test_compare_equals_one_eval_per_file(arch, category, tmp_path, shots):
    a = _prompt_file(tmp_path / "a.yaml", *SMALL_A)
    b = _prompt_file(tmp_path / "b.yaml", *SMALL_B)
    res = compare_prompts(CompareConfig([a, b], [category], tmp_path / "cmp", shots=shots, method_config=_mc(arch)))
    assert [r["file"] for r in res.rows] == ["a.yaml", "b.yaml"]
    assert res.meta["has_masks"] and res.meta["n_images"] == 6 and res.meta["shots"] == shots
    metrics = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"]
    differ = False
    for f, row in zip((a, b), res.rows, strict=True):
        ev = _eval_row(arch, category, f, shots, tmp_path / f"eval-{f.stem}")
        for m in metrics:
            assert float(ev[m]) == pytest.approx(row[m], abs=1e-6), (f.name, m)
        differ |= any(abs(res.rows[0][m] - res.rows[1][m]) > 1e-9 for m in metrics)
    assert differ  # the two files really produce different numbers (the check can fail)
    assert (res.rows[0]["normal_prompts"], res.rows[0]["anomalous_prompts"]) == (9, 6)
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == ["a.yaml", "b.yaml"]
    assert float(rows[1]["pixel_aupro"]) == pytest.approx(res.rows[1]["pixel_aupro"], abs=1e-4)
    with (tmp_path / "cmp" / "scores.csv").open() as fh:
        scores = list(csv.DictReader(fh))
    assert len(scores) == 6 and set(scores[0]) == {"path", "label", "defect", "a.yaml", "b.yaml"}
    assert "AUPRO" in (tmp_path / "cmp" / "report.md").read_text()
    assert "<table>" in (tmp_path / "cmp" / "report.html").read_text()


def test_compare_encodes_images_once_for_all_files(arch, category, tmp_path, monkeypatch):
    calls = {"encode_all": 0, "image_embedding": 0}
    orig_all, orig_emb = CLIPEncoder.encode_all, CLIPEncoder.image_embedding

    def count_all(self, x, windows):
        calls["encode_all"] += x.shape[0]
        return orig_all(self, x, windows)

    def count_emb(self, x):
        calls["image_embedding"] += x.shape[0]
        return orig_emb(self, x)

    monkeypatch.setattr(CLIPEncoder, "encode_all", count_all)
    monkeypatch.setattr(CLIPEncoder, "image_embedding", count_emb)
    files = [_prompt_file(tmp_path / f"{n}.yaml", *spec) for n, spec in (("a", SMALL_A), ("b", SMALL_B))]
    files.append(default_prompts_path())
    compare_prompts(CompareConfig(files, [category], tmp_path / "cmp", shots=2, method_config=_mc(arch)))
    # 6 test images + 2 references through the image tower once; five crops of each test image once
    assert calls == {"encode_all": 6 + 2, "image_embedding": 5 * 6}


def test_compare_with_labels_csv_and_bad_inputs(arch, category, tmp_path):
    a = _prompt_file(tmp_path / "a.yaml", *SMALL_A)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(
        f"{p},{0 if p.parent.name == 'good' else 1}\n" for p in sorted((category / "test").rglob("*.png"))))
    res = compare_prompts(CompareConfig([a, default_prompts_path()], [category / "test"], tmp_path / "cmp",
                                        labels=labels, class_name="widget", method_config=_mc(arch)))
    assert res.meta["n_images"] == 6 and not res.meta["has_masks"]
    assert "pixel_auroc" not in res.rows[0] and 0 <= res.rows[0]["image_auroc"] <= 1
    # one-line errors through the CLI translator
    cli = ["prompts", "compare", a, a, "--targets", category, "--out", tmp_path / "o1", "--allow-random",
           "--encoder", f"clip:{arch}"]
    assert_one_line_error(run_cli(*cli), "given twice")
    cli = ["prompts", "compare", a, "--targets", category, "--out", category / "out", "--allow-random",
           "--encoder", f"clip:{arch}"]
    assert_one_line_error(run_cli(*cli), "--out")
    bad = tmp_path / "bad.yaml"
    bad.write_text("normal_states: ['{}']\nanomalous_states: ['broken']\ntemplates: ['a {}']\n")
    cli = ["prompts", "compare", a, bad, "--targets", category, "--out", tmp_path / "o2", "--allow-random",
           "--encoder", f"clip:{arch}"]
    assert_one_line_error(run_cli(*cli), "bad.yaml:2")
    assert not (tmp_path / "o2").exists()


def test_cli_compare_prints_table_and_writes_report(arch, category, tmp_path):
    a = _prompt_file(tmp_path / "a.yaml", *SMALL_A)
    b = _prompt_file(tmp_path / "b.yaml", *SMALL_B)
    res = run_cli("prompts", "compare", a, b, "default", "--targets", category, "--out", tmp_path / "cmp", "--allow-random",
                  "--encoder", f"clip:{arch}", "--device", "cpu", "--shots", 1)
    assert res.exit_code == 0, res.output
    assert "few-shot (WinCLIP+)" in res.stdout and "I-AUROC" in res.stdout and "AUPRO" in res.stdout
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("a.yaml", "b.yaml", "default.yaml"))]
    assert [ln.split()[1] for ln in lines] == ["9/6", "4/6", "154/88"]
    assert "encoded 6 image(s) and 1 reference(s) once" in res.stderr
    for name in ("compare.csv", "scores.csv", "report.md", "report.html"):
        assert (tmp_path / "cmp" / name).is_file()


# -- explain -----------------------------------------------------------------------------------------
def _score(arch: str, prompt: Path, x: torch.Tensor, refs: torch.Tensor | None) -> torch.Tensor:
    m = WinCLIP(_mc(arch, class_name="widget", prompts=str(prompt))).fit(refs)
    return m.predict(x).image_scores


@pytest.mark.parametrize("with_refs", [False, True])
def test_explain_leave_one_out_equals_rescoring(arch, tmp_path, with_refs):
    normal, anomalous, templates = SMALL_A
    full = _prompt_file(tmp_path / "full.yaml", normal, anomalous, templates)
    x = images(2, seed=21)
    refs = images(2, seed=22) if with_refs else None
    method = WinCLIP(_mc(arch, class_name="widget", prompts=str(full))).fit(refs)
    out = explain(method, x, ["p", "q"], nearest=4)
    base = _score(arch, full, x, refs)
    assert [e.score for e in out] == pytest.approx(base.tolist(), abs=1e-6)
    kinds = {d.kind for d in out[0].deltas}
    assert kinds == {"normal state", "anomalous state", "template"}
    assert len(out[0].deltas) == len(normal) + len(anomalous) + len(templates)
    for d in out[0].deltas:
        n, a, t = list(normal), list(anomalous), list(templates)
        {"normal state": n, "anomalous state": a, "template": t}[d.kind].remove(d.text)
        loo = _score(arch, _prompt_file(tmp_path / "loo.yaml", n, a, t), x, refs)
        for j, e in enumerate(out):
            got = next(g for g in e.deltas if (g.kind, g.text) == (d.kind, d.text)).delta
            assert got == pytest.approx(float(base[j] - loo[j]), abs=1e-5), (d.kind, d.text)
    assert any(abs(d.delta) > 1e-6 for d in out[0].deltas)
    # prototype similarities and nearest prompts of the most anomalous window
    e = out[0]
    assert -1 <= e.sim_normal <= 1 and -1 <= e.sim_anomalous <= 1
    assert len(e.nearest) == 4 and [c for _, _, c in e.nearest] == sorted([c for _, _, c in e.nearest], reverse=True)
    y0, x0, y1, x1 = e.window["box"]
    assert e.window["scale"] in (2, 3) and y1 - y0 == 16 * e.window["scale"] and 0 <= x0 < x1 <= 240


def test_cli_explain_table_and_csv(arch, category, tmp_path):
    a = _prompt_file(tmp_path / "a.yaml", *SMALL_A)
    imgs = sorted((category / "test" / "crack").glob("*.png"))[:2]
    res = run_cli("prompts", "explain", a, *imgs, "--class-name", "widget", "--out", tmp_path / "ex",
                  "--allow-random", "--encoder", f"clip:{arch}", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert res.stdout.count("cos(anomalous)") == 2 and "most anomalous window" in res.stdout
    with (tmp_path / "ex" / "explain.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["kind"] for r in rows} >= {"score", "delta template", "delta anomalous state", "window"}
    assert "| image | score |" in (tmp_path / "ex" / "explain.md").read_text()
    assert_one_line_error(run_cli("prompts", "explain", a, imgs[0], "--allow-random"), "--class-name")


# -- repeated entries ----------------------------------------------------------------------------------
def test_anomalib_ensemble_loads_with_a_warning_and_expands_to_147_84(tmp_path, caplog):
    p = tmp_path / "anomalib.yaml"
    p.write_text(_yaml(ANOMALIB_NORMAL, ANOMALIB_ANOMALOUS, ANOMALIB_TEMPLATES))
    assert validate(p) == []
    errors, warnings = check(p)
    assert errors == [] and len(warnings) == 1
    assert f"{p}:3:" in warnings[0] and "a jpeg corrupted photo of the {}." in warnings[0]
    assert "entry 9 of 'templates') repeats entry 8" in warnings[0]
    with caplog.at_level(logging.WARNING, logger="fsiad.prompts.loader"):
        ps = load_prompts(p)
    assert any("repeated entr" in r.getMessage() for r in caplog.records)
    assert len(ps.duplicates) == 1 and len(ps.templates) == 21
    cp = ps.expand("bottle")
    assert (len(cp.normal), len(cp.anomalous)) == (147, 84)
    # exactly anomalib's create_prompt_ensemble("bottle"): state-major, duplicate kept in place
    assert cp.normal == [t.format(s.format("bottle")) for s in ANOMALIB_NORMAL for t in ANOMALIB_TEMPLATES]
    assert cp.anomalous == [t.format(s.format("bottle")) for s in ANOMALIB_ANOMALOUS for t in ANOMALIB_TEMPLATES]
    res = run_cli("prompts", "validate", p)
    assert res.exit_code == 0 and "1 repeated entry kept" in res.stdout and "warning:" in res.stderr
    res = run_cli("prompts", "show", "--prompts", p, "--category", "bottle")
    assert res.exit_code == 0 and "## normal: 147 prompts (7 repeated)" in res.stdout
    assert "1 repeated entry kept" in res.stdout


def test_other_problems_stay_errors_next_to_a_duplicate(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(_yaml(["{}", "{}"], ["broken"], ["a {}"]))
    errors, warnings = check(p)
    assert len(errors) == 1 and "'broken'" in errors[0] and len(warnings) == 1
    assert_one_line_error(run_cli("prompts", "show", "--prompts", p), "placeholder")


# -- init --category -------------------------------------------------------------------------------
def test_init_category_override_written_validated_and_edited_in_place(tmp_path):
    d = tmp_path / "mine"
    res = run_cli("prompts", "init", d, "--category", "metal_nut", "--extra-anomalous", "bent {}",
                  "--extra-anomalous", "{} with a scratch", "--name", "hex nut")
    assert res.exit_code == 0, res.output
    f = d / "prompts.yaml"
    text = f.read_text()
    assert "# Per-category overrides" in text  # the default's comments are kept
    cp = load_prompts(f).expand("metal_nut")
    assert cp.class_name == "hex nut" and len(cp.anomalous) == 6 * 22
    assert "a photo of a bent hex nut." in cp.anomalous
    # edit in place: a comment the user added survives, states are appended, repeats skipped
    f.write_text(f.read_text().replace("templates:\n", "# my note\ntemplates:\n"))
    res = run_cli("prompts", "init", d, "--category", "metal_nut", "--extra-anomalous", "bent {}",
                  "--extra-normal", "{} without scratches")
    assert res.exit_code == 0, res.output
    ps = load_prompts(f)
    assert "# my note" in f.read_text()
    assert ps.categories["metal_nut"] == {"name": "hex nut", "extra_normal_states": ["{} without scratches"],
                                          "extra_anomalous_states": ["bent {}", "{} with a scratch"]}
    assert ps.categories["pcb1"]["extra_anomalous_states"] == ["{} with bad soldering"]
    res = run_cli("prompts", "init", d, "--category", "new_part", "--extra-anomalous", "dented {}")
    assert res.exit_code == 0, res.output
    assert load_prompts(f).expand("new_part").class_name == "new part"
    assert len(load_prompts(f).expand("new_part").anomalous) == 5 * 22
    # invalid input: one line, file unchanged
    before = f.read_text()
    assert_one_line_error(run_cli("prompts", "init", d, "--category", "x", "--extra-anomalous", "bent"),
                          "--extra-anomalous", "{}")
    assert_one_line_error(run_cli("prompts", "init", d, "--extra-normal", "a {}"), "--category")
    assert_one_line_error(run_cli("prompts", "init", d), "already exists")
    assert f.read_text() == before


def test_init_category_into_file_without_categories(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "prompts.yaml").write_text(_yaml(*SMALL_B))
    res = run_cli("prompts", "init", d, "--category", "screw", "--extra-anomalous", "bent {}")
    assert res.exit_code == 0, res.output
    ps = load_prompts(d / "prompts.yaml")
    assert ps.categories == {"screw": {"extra_anomalous_states": ["bent {}"]}}
    assert ps.templates == SMALL_B[2]
