"""Target discovery, output names, labels CSV and the HTML report (optionally rendered in Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fsiad.cli.main import app
from fsiad.fewshot.data.base import DatasetError
from fsiad.fewshot.workflow.render import colormap, overlay
from fsiad.fewshot.workflow.report import histogram_svg, table
from fsiad.fewshot.workflow.targets import collect_images, output_names, read_labels_csv
from PIL import Image

from tests.workflow_helpers import make_inspection_tree, register_test_methods

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_tables_round_floats_for_people():
    """Floats show 6 significant digits (0.1 + 9e-17 reads 0.1); other values as given, escaped."""
    html = table({"expected false-alarm rate": 0.10000000000000009, "image_auroc": 0.9713888888888889,
                  "n": 120, "rule": "<tail>", "none": None})
    cells = re.findall(r"<td>(.*?)</td>", html)
    assert cells == ["0.1", "0.971389", "120", "&lt;tail&gt;", ""]


def test_collect_images_recursive_sorted_dedup(tmp_path):
    for rel in ("b/2.png", "b/1.JPG", "a.bmp", "b/c/3.tif", ".hidden/4.png", "b/.5.png", "b/notes.txt"):
        p = tmp_path / "d" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    got = collect_images([tmp_path / "d", tmp_path / "d" / "a.bmp", tmp_path / "d" / "b" / "notes.txt"])
    rel = [p.relative_to(tmp_path / "d").as_posix() for p in got]
    assert rel == ["a.bmp", "b/1.JPG", "b/2.png", "b/c/3.tif", "b/notes.txt"]  # explicit file kept, dup dropped
    with pytest.raises(DatasetError, match="no such file"):
        collect_images([tmp_path / "missing"])


def test_output_names_unique_and_short():
    paths = [Path("/x/good/a.png"), Path("/x/bad/a.png"), Path("/x/bad/deep/a.jpg"), Path("/x/good/b c.png")]
    assert output_names(paths) == ["good__a", "bad__a", "bad__deep__a", "good__b_c"]
    assert output_names([Path("/q/a.png"), Path("/q/a.jpg"), Path("/q/b.png")]) == ["a", "a-2", "b"]
    assert output_names([Path("/q/a.png")]) == ["a"] and output_names([]) == []


def test_labels_csv(tmp_path):
    (tmp_path / "l.csv").write_text("path,label\nimg/a.png,normal\n/abs/b.png,1\n")
    got = read_labels_csv(tmp_path / "l.csv")
    assert got == {(tmp_path / "img" / "a.png").resolve(): 0, Path("/abs/b.png"): 1}
    (tmp_path / "bad.csv").write_text("path,label\na.png,maybe\n")
    with pytest.raises(DatasetError, match="bad.csv: row 2: unknown label"):
        read_labels_csv(tmp_path / "bad.csv")
    (tmp_path / "nohead.csv").write_text("a.png,1\n")
    with pytest.raises(DatasetError, match="columns 'path' and 'label'"):
        read_labels_csv(tmp_path / "nohead.csv")


def test_colormap_and_overlay():
    c = colormap(np.array([0.0, 0.5, 1.0]))
    assert c[0, 2] > c[0, 0] and c[0, 1] < 10 and c[2, 0] > 240 and c[2, 2] < 60  # viridis: purple low, yellow high
    assert c[1, 1] > c[1, 0] and c[1, 1] > 120  # green-teal in the middle
    img = np.zeros((8, 8, 3), np.uint8)
    ov = overlay(img, np.linspace(0, 1, 16).reshape(4, 4), 0.0, 1.0)  # map resized to the image
    assert ov.shape == (8, 8, 3) and ov[-1, -1, 0] > ov[0, 0, 0]


def test_histogram_svg_threshold_and_groups():
    svg = histogram_svg([0.1, 0.2, 0.9], [0, 0, 1], threshold=0.5)
    assert svg.startswith("<svg") and "threshold 0.5" in svg and "normal (2)" in svg and "anomalous (1)" in svg
    assert "unlabelled" not in svg and "threshold" not in histogram_svg([1.0, 1.0])
    both = histogram_svg([0.1, 0.2, 0.9], [0, 0, 1], threshold=0.5, from_labels=1.5)
    assert "threshold 0.5" in both and "from labels 1.5" in both and "from labels" not in svg
    assert both.count("<line") == svg.count("<line") + 1  # one more line, the axis stretched to reach 1.5


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> Path:
    register_test_methods()
    root = tmp_path_factory.mktemp("rep")
    tree = make_inspection_tree(root)
    (root / "targets" / "broken.png").write_bytes(b"garbage")
    out = root / "out"
    r = CliRunner().invoke(app, ["score", "--method", "wf_pixdiff", "--shots", "3", "--normal", str(tree["normal"]),
                                 "--labels", str(tree["labels"]), "--out", str(out), "-q", str(tree["targets"])],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_report_contains_every_image(report_run):
    html = (report_run / "report.html").read_text()
    names = [line.split(",")[1] for line in (report_run / "scores.csv").read_text().splitlines()[1:]]
    assert len(names) == 8
    cards = re.findall(r'<div class="card[^"]*" id="img-([^"]+)"><a href="([^"]+)"><img alt="[^"]*" loading="lazy" '
                       r'src="([^"]+)"', html)
    assert sorted(n for n, _, _ in cards) == sorted(names)
    decisions = re.findall(r"#\d+ score <b>[0-9.e+-]+</b> <span class=\"(\w+)\">", html)
    assert decisions == sorted(decisions)  # flagged (anomalous) first
    scores = [float(s) for s in re.findall(r"#\d+ score <b>([0-9.e+-]+)</b>", html)]
    flagged = decisions.count("anomalous")
    assert scores[:flagged] == sorted(scores[:flagged], reverse=True)
    assert scores[flagged:] == sorted(scores[flagged:], reverse=True)
    for name, overlay_link, thumb in cards:
        assert overlay_link == f"overlays/{name}.png" and thumb == f"thumbs/{name}.jpg"
        with Image.open(report_run / thumb) as im:
            assert im.format == "JPEG" and im.width > 2 * im.height > 0  # original | overlay | contour
    refs = re.findall(r'<img alt="reference [^"]+" title="[^"]+" loading="lazy" src="thumbs/reference-\d\.jpg"', html)
    assert len(refs) == 3
    assert "base64" not in html
    assert "broken.png" in html and "Targets not scored (1)" in html and "<svg" in html and "AUROC" in html
    assert not re.search(r"<script|<link|@import|url\((?!#)|https?://(?!www\.w3\.org/2000/svg)", html)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)")
def test_report_renders_in_headless_chromium(report_run, tmp_path):
    """Load a copy of report.html with a check script appended; every linked <img> must decode."""
    check = ("<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
             "const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;"
             "const d=document.createElement('div');d.id='imgcheck';"
             "d.textContent='IMGCHECK total='+imgs.length+' broken='+bad;document.body.appendChild(d);});</script>")
    page = report_run / "check-page.html"  # beside report.html: its thumbs/ links resolve (eager loading here)
    page.write_text((report_run / "report.html").read_text().replace(' loading="lazy"', "")
                    .replace("</body>", check + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"IMGCHECK total=(\d+) broken=(\d+)", proc.stdout)
    assert m, f"no check result from chromium (rc={proc.returncode}): {proc.stderr[-500:]}"
    assert int(m.group(1)) == 8 + 3 and int(m.group(2)) == 0


def test_labels_advice_names_the_thresholds_and_their_rates():
    from fsiad.fewshot.metrics import operating_points
    from fsiad.fewshot.workflow.report import labels_advice, labels_threshold

    s = np.array([0.1, 0.2, 0.3, 0.9, 0.25, 0.5, 0.8, 1.0])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # one normal (0.9) above three defects
    pts = operating_points(s, y, 0.25)
    lines = labels_advice({"target_fpr": 0.25, "n_normal": 4, **pts})
    assert lines[0] == "from these labels: --threshold 0.4 flags 75% of the defects at 25.0% false alarms " \
                       "(1 of 4 normal images; target 0.25)"
    assert lines[1] == "best F1 (0.800) at --threshold 0.225: 100% of the defects at 50.0% false alarms"
    assert labels_advice(None) == [] and labels_threshold(None) is None
    assert labels_threshold({"from_labels": {"target_fpr": 0.25, "n_normal": 4, **pts}}) == pytest.approx(0.4)
    strict = labels_advice({"target_fpr": 0.0, "n_normal": 4, **operating_points(s, y, 0.0)})
    assert strict[0] == "from these labels: --threshold 0.95 flags 25% of the defects at 0.0% false alarms " \
                           "(0 of 4 normal images; target 0)"
