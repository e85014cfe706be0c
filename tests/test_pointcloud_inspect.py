"""``fsiad inspect``: outputs, localisation on the point cloud, model reuse, .ply input, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fsiad.fewshot.data import read_mask
from fsiad.pointcloud.io import read_ply_vertices, read_xyz_tiff, valid_mask, write_ply, write_xyz_tiff
from PIL import Image

from tests.cli_helpers import run_cli
from tests.pointcloud_helpers import SIZE, mixed_root  # noqa: F401  (fixture)


def _run(*args):
    """``fsiad inspect ARGS`` through the console script's error translator."""
    return run_cli("inspect", *args)


@pytest.fixture(scope="module")
def fitted(mixed_root, tmp_path_factory):  # noqa: F811
    """Inspect a dent with fpfh fitted on 3 references; keep the saved model."""
    out = tmp_path_factory.mktemp("inspect")
    sample = mixed_root / "dome" / "test" / "dent" / "rgb" / "000.png"
    res = _run(sample, "--normal", mixed_root / "dome" / "train" / "good", "--shots", 3, "--method", "fpfh",
               "--image-size", SIZE, "--out", out, "--save-model", out / "model", "--show")
    assert res.exit_code == 0, res.output
    return out, sample, res.output


def test_writes_three_outputs_and_top_points_are_in_the_defect(fitted):
    out, sample, output = fitted
    for name in ("000_scores.ply", "000_overlay.png", "000_depth_score.png", "000_inspect.json"):
        assert (out / name).is_file() and str(out / name) in output
    assert "no display" in output  # --show degrades gracefully on a headless machine
    rgb = np.asarray(Image.open(sample))
    assert np.asarray(Image.open(out / "000_overlay.png")).shape == rgb.shape
    assert np.asarray(Image.open(out / "000_depth_score.png")).shape == (SIZE, 2 * SIZE, 3)
    v = read_ply_vertices(out / "000_scores.ply")
    xyz = read_xyz_tiff(sample.parent.parent / "xyz" / "000.tiff")
    ok = valid_mask(xyz)
    assert len(v) == int(ok.sum())
    gt = read_mask(sample.parent.parent / "gt" / "000.png")
    defect = {tuple(p) for p in xyz[ok & gt]}
    pts = np.stack([v["x"], v["y"], v["z"]], 1)
    top = np.argsort(-v["anomaly_score"])[:20]
    inside = np.mean([tuple(p) in defect for p in pts[top]])
    assert inside >= 0.8, inside
    # colours follow the score: the hottest point is red-ish, the coolest blue-ish
    hot, cold = np.argmax(v["anomaly_score"]), np.argmin(v["anomaly_score"])
    assert v["red"][hot] > v["blue"][hot] and v["blue"][cold] > v["red"][cold]
    meta = json.loads((out / "000_inspect.json").read_text())
    assert meta["method"]["method"] == "fpfh" and meta["image_score"] > 0


def test_saved_model_scores_good_lower_and_reads_ply(fitted, mixed_root, tmp_path):  # noqa: F811
    out, _, output = fitted
    dent_score = json.loads((out / "000_inspect.json").read_text())["image_score"]
    good = mixed_root / "dome" / "test" / "good" / "xyz" / "000.tiff"
    res = _run(good, "--model", out / "model", "--out", tmp_path / "g")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g" / "000_inspect.json").read_text())["image_score"] < dent_score
    xyz = read_xyz_tiff(good)
    ply = write_ply(tmp_path / "cloud.ply", xyz[valid_mask(xyz)])
    res = _run(ply, "--model", out / "model", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    v = read_ply_vertices(tmp_path / "p" / "cloud_scores.ply")
    assert len(v) == int(valid_mask(xyz).sum()) and np.isfinite(v["anomaly_score"]).all()
    assert (tmp_path / "p" / "cloud_overlay.png").is_file() and (tmp_path / "p" / "cloud_depth_score.png").is_file()


def test_errors_are_one_line(fitted, tmp_path):
    out, sample, _ = fitted
    bad = write_xyz_tiff(tmp_path / "bad.tiff", np.zeros((32, 32, 3), np.float32))
    res = _run(bad, "--model", out / "model", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "bad.tiff: all points are zero/NaN" in res.output
    assert "Traceback" not in res.output
    res = _run(sample, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "exactly one of --normal" in res.output
    lone = tmp_path / "lone.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lone)
    res = _run(lone, "--model", out / "model", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "no point cloud found next to the image" in res.output
    (tmp_path / "refs").mkdir()
    write_xyz_tiff(tmp_path / "refs" / "bad.tiff", np.zeros((32, 32, 3), np.float32))
    res = _run(sample, "--normal", tmp_path / "refs", "--method", "fpfh", "--out", tmp_path / "refs" / "o")
    assert res.exit_code == 1 and "inside the input" in res.output  # never write into an input folder
    res = _run(sample, "--normal", tmp_path / "refs", "--method", "fpfh", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "bad.tiff: all points are zero/NaN" in res.output  # bad reference named
    (tmp_path / "empty").mkdir()
    res = _run(sample, "--normal", tmp_path / "empty", "--method", "fpfh", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "no point clouds" in res.output
