"""Dataset readers on generated MVTec / BTAD / VisA / folder / textile layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fsiad.fewshot.data import (
    DatasetError,
    dataset_kinds,
    load_dataset,
    load_sample,
    read_mask,
    register_dataset,
)
from fsiad.fewshot.data.base import Category
from fsiad.fewshot.data.synthetic import make_folder_dataset, make_mvtec_dataset, make_visa_dataset
from PIL import Image


def _err(*args, **kw) -> str:
    with pytest.raises(DatasetError) as exc:
        load_dataset(*args, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_dataset(
        tmp_path_factory.mktemp("mv"), image_size=32, n_train=3, n_test_good=2, n_test_defect=4
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_registry_kinds_and_unknown_kind() -> None:
    assert {"mvtec", "visa", "folder", "textile", "mvtec3d"} <= set(dataset_kinds())
    assert "unknown dataset kind 'nope'" in _err("nope", "/tmp")


def test_mvtec_reader(mvtec_root: Path) -> None:
    cats = load_dataset("mvtec", mvtec_root)
    assert [c.name for c in cats] == ["object", "texture"]
    obj = cats[0]
    assert obj.has_masks and len(obj.train) == 3 and len(obj.test) == 6
    assert all(s.label == 0 and s.defect == "good" for s in obj.train)
    defects = sorted({s.defect for s in obj.test if s.label == 1})
    assert defects == ["contamination", "missing"]
    for s in obj.test:
        img, mask = load_sample(s)
        assert img.shape == (32, 32, 3)
        if s.label == 1:
            assert s.mask_path.name == f"{s.path.stem}_mask.png" and s.mask_path.parent.name == s.defect
            assert mask.any()
        else:
            assert s.mask_path is None and mask is None
    one = load_dataset("mvtec", mvtec_root, ["texture"])
    assert [c.name for c in one] == ["texture"]
    assert load_dataset("mvtec", mvtec_root / "texture")[0].test == one[0].test  # root = a category


def test_mvtec_errors(mvtec_root: Path, tmp_path: Path) -> None:
    msg = _err("mvtec", mvtec_root, ["texture", "bottle"])
    assert "'bottle'" in msg and "available: object, texture" in msg
    assert "not found" in _err("mvtec", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no MVTec-layout categories" in _err("mvtec", tmp_path / "empty")
    root = _copy(mvtec_root, tmp_path / "a")
    for p in (root / "texture" / "test" / "scratch").iterdir():
        p.unlink()
    assert (
        _err("mvtec", root, ["texture"])
        == f"{root / 'texture' / 'test' / 'scratch'}: empty folder (no image files)"
    )
    root = _copy(mvtec_root, tmp_path / "b")
    (root / "object" / "ground_truth" / "missing" / "000_mask.png").unlink()
    msg = _err("mvtec", root)
    assert msg.startswith(str(root / "object" / "test" / "missing" / "000.png")) and "no mask" in msg
    root = _copy(mvtec_root, tmp_path / "c")
    shutil.copy(
        root / "object" / "ground_truth" / "missing" / "000_mask.png",
        root / "object" / "ground_truth" / "missing" / "099_mask.png",
    )
    assert "099_mask.png: mask without a matching image" in _err("mvtec", root)


def test_btad_layout_ok_ko_and_same_stem_masks(tmp_path: Path) -> None:
    cat = tmp_path / "01"
    rgb = np.zeros((16, 16, 3), np.uint8)
    for sub in ("train/ok", "test/ok", "test/ko", "ground_truth/ko"):
        (cat / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rgb).save(cat / "train" / "ok" / f"{i:04d}.bmp")
        Image.fromarray(rgb).save(cat / "test" / "ok" / f"{i:04d}.bmp")
        Image.fromarray(rgb + 50).save(cat / "test" / "ko" / f"{i:04d}.bmp")
        ext = ".png" if i < 2 else ".bmp"
        Image.fromarray(np.eye(16, dtype=np.uint8) * 255).save(cat / "ground_truth" / "ko" / f"{i:04d}{ext}")
    (c,) = load_dataset("mvtec", tmp_path)
    assert c.name == "01" and len(c.train) == 3 and c.has_masks
    ko = [s for s in c.test if s.label == 1]
    assert [s.defect for s in ko] == ["ko"] * 3 and {s.defect for s in c.test if s.label == 0} == {"good"}
    assert [s.mask_path.name for s in ko] == ["0000.png", "0001.png", "0002.bmp"]
    assert load_sample(ko[2])[1].sum() == 16


def test_visa_reader_and_nonzero_masks(tmp_path: Path) -> None:
    root = make_visa_dataset(tmp_path / "visa", image_size=32, n_train=3, n_test_good=2, n_test_defect=4)
    cats = load_dataset("visa", root)
    assert [c.name for c in cats] == ["object", "texture"]
    c = cats[1]
    assert len(c.train) == 3 and len(c.test) == 6 and c.has_masks
    anomalies = [s for s in c.test if s.label == 1]
    assert len(anomalies) == 4 and all(s.extra["mask_mode"] == "nonzero" for s in anomalies)
    raw = np.array(Image.open(anomalies[2].mask_path))
    assert set(np.unique(raw)) == {0, 2}  # class index 2 (second defect type)
    _, mask = load_sample(anomalies[2])
    np.testing.assert_array_equal(mask, raw != 0)
    np.testing.assert_array_equal(read_mask(anomalies[2].mask_path), raw != 0)  # default auto mode too
    assert "unknown category 'candle'" in _err("visa", root, ["candle"])
    (root / "split_csv" / "1cls.csv").rename(root / "split_csv" / "other.csv")
    assert "1cls.csv: VisA split file not found" in _err("visa", root)


def test_visa_missing_file_names_it(tmp_path: Path) -> None:
    root = make_visa_dataset(
        tmp_path / "visa", categories=("object",), image_size=32, n_train=2, n_test_good=1, n_test_defect=2
    )
    victim = root / "object" / "Data" / "Masks" / "Anomaly" / "0001.png"
    victim.unlink()
    msg = _err("visa", root)
    assert msg.startswith(f"{victim}: file listed in") and "line" in msg


def test_folder_reader(tmp_path: Path) -> None:
    root = make_folder_dataset(
        tmp_path / "parts", "object", image_size=32, n_train=4, n_test_good=2, n_test_defect=2
    )
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "test" / "query.png")  # unlabeled
    (c,) = load_dataset("folder", root)
    assert c.name == "parts" and len(c.train) == 4 and c.has_masks
    by_name = {s.path.name: s for s in c.test}
    assert by_name["query.png"].label is None and by_name["query.png"].defect == "unknown"
    assert by_name["good_000.png"].label == 0
    s = by_name["missing_000.png"]
    assert s.label == 1 and s.defect == "missing" and load_sample(s)[1].any()
    # several categories under one root
    make_folder_dataset(
        tmp_path / "multi" / "tex",
        "texture",
        image_size=32,
        n_train=2,
        n_test_good=1,
        n_test_defect=2,
        masks=False,
    )
    _copy(root, tmp_path / "multi" / "obj")
    cats = load_dataset("folder", tmp_path / "multi")
    assert [c.name for c in cats] == ["obj", "tex"] and not cats[1].has_masks
    (root / "masks" / "missing" / "missing_000.png").unlink()
    assert "missing_000.png: no mask" in _err("folder", root)
    for p in (root / "normal").iterdir():
        p.unlink()
    assert _err("folder", root) == f"{root / 'normal'}: no image files for the normal reference pool"


def test_textile_package_split() -> None:
    (c,) = load_dataset("textile", None)
    assert c.name == "textile" and not c.has_masks
    assert len(c.train) == 500 and len(c.test) == 1500
    assert sum(s.label == 1 for s in c.test) == 1000
    assert {s.defect for s in c.test} == {"good", "local", "global"}
    assert not {s.path for s in c.train} & {s.path for s in c.test}
    assert c.train[0].path.name == "textile_0001.jpg" and c.train[1].path.name == "textile_0003.jpg"
    assert "available: textile" in _err("textile", None, ["cloth"])


def test_textile_root_override(tmp_path: Path) -> None:
    for d, n in (("nominal", 4), ("local", 1), ("global", 2)):
        (tmp_path / d).mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / d / f"{i}.jpg")
    (c,) = load_dataset("textile", tmp_path)
    assert [s.path.name for s in c.train] == ["0.jpg", "2.jpg"] and len(c.test) == 5
    shutil.rmtree(tmp_path / "global")
    assert _err("textile", tmp_path) == f"{tmp_path / 'global'}: global folder not found"


def test_register_dataset_plugin(tmp_path: Path) -> None:
    register_dataset("unit_test_kind", lambda root, cats: [Category("x", [], [], False, root)])
    assert load_dataset("unit_test_kind", tmp_path)[0].root == tmp_path


def test_folder_reader_train_good_fallback(tmp_path: Path) -> None:
    cat = tmp_path / "part"
    for sub in ("train/good", "test/good", "test/crack"):
        (cat / sub).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(cat / sub / "a.png")
    (c,) = load_dataset("folder", cat)
    assert [s.path.parent.name for s in c.train] == ["good"]
    shutil.rmtree(cat / "train" / "good")
    (cat / "train" / "good").mkdir()
    with pytest.raises(DatasetError, match="no image files for the normal reference pool"):
        load_dataset("folder", cat)


def test_symlinked_folders_followed_and_loops_reported(tmp_path: Path, caplog) -> None:
    import logging

    from fsiad.fewshot.workflow.targets import collect_images

    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (8, 8)).save(real / "a.png")
    top = tmp_path / "top"
    top.mkdir()
    (top / "linked").symlink_to(real, target_is_directory=True)
    (top / "loop").symlink_to(top, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="fsiad"):
        found = collect_images([top])
    assert found == [top / "linked" / "a.png"]
    assert any("loop" in r.getMessage() and "already read" in r.getMessage() for r in caplog.records)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="symbolic link to nothing"):
        collect_images([tmp_path / "dangling"])
