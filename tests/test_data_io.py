"""Image/mask IO: conversions to RGB uint8, binarised masks, one-line errors naming files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from fsiad.fewshot.data import DatasetError, Sample, load_sample, read_image, read_mask
from PIL import Image


def _one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(DatasetError) as exc:
        fn(*args, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def gray() -> np.ndarray:
    return np.arange(12 * 10, dtype=np.uint8).reshape(12, 10) * 2


def test_grayscale_and_gray_alpha_become_rgb(tmp_path: Path, gray: np.ndarray) -> None:
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray, np.full_like(gray, 7)], -1), "LA").save(tmp_path / "la.png")
    for name in ("g.png", "la.png"):
        img = read_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.shape == (12, 10, 3)
        np.testing.assert_array_equal(img[..., 0], gray)
        np.testing.assert_array_equal(img[..., 2], gray)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (8, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])


def test_16bit_png_and_tiff_rescaled(tmp_path: Path) -> None:
    v16 = np.array([[0, 257, 65535], [32896, 1000, 65280]], dtype=np.uint16)
    Image.fromarray(v16).save(tmp_path / "d.png")  # 16-bit grayscale PNG (mode I;16)
    expect = np.round(v16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png")[..., 1], expect)
    rgb16 = np.stack([v16, v16 // 2, 65535 - v16], -1)
    tifffile.imwrite(tmp_path / "d.tif", rgb16)
    np.testing.assert_array_equal(read_image(tmp_path / "d.tif"), np.round(rgb16 / 257.0).astype(np.uint8))
    tifffile.imwrite(tmp_path / "f.tiff", np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff")[..., 0], [[0, 128], [255, 64]])


def test_palette_cmyk_and_bilevel(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:3] = (255, 0, 0)
    rgb[3:] = (0, 0, 255)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "c.jpg").astype(int) - rgb).max() < 40
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "b.png")  # mode "1"
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 0], np.eye(4) * 255)


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    for name, problem in [
        ("corrupt.png", ""),
        ("text.jpg", "not a readable image"),
        ("empty.png", "empty file"),
        ("missing.png", "file not found"),
        ("trunc.png", ""),
    ]:
        msg = _one_line_error(read_image, tmp_path / name)
        assert msg.startswith(str(tmp_path / name) + ":") and problem in msg


def test_read_mask_modes(tmp_path: Path) -> None:
    m255 = np.array([[0, 255, 128], [127, 0, 200]], np.uint8)
    Image.fromarray(m255).save(tmp_path / "m.png")
    expect = m255 > 127
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expect)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", mode="threshold"), expect)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", mode="nonzero"), m255 != 0)
    idx = np.array([[0, 1, 2], [3, 0, 0]], np.uint8)  # VisA-style class indices
    Image.fromarray(idx).save(tmp_path / "i.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png", mode="nonzero"), idx != 0)
    Image.fromarray(idx.clip(0, 1)).save(tmp_path / "01.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "01.png"), idx != 0)  # auto: 0/1 -> != 0
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png"), idx != 0)  # auto: indices <= 127 -> != 0
    Image.fromarray(np.stack([m255 * 0, m255, m255 * 0], -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), expect)
    with pytest.raises(ValueError, match="mask mode"):
        read_mask(tmp_path / "m.png", mode="bogus")


def test_mask_size_mismatch_names_files_and_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(tmp_path / "img_mask.png")
    sample = Sample(tmp_path / "img.png", 1, "crack", tmp_path / "img_mask.png")
    msg = _one_line_error(load_sample, sample)
    assert str(tmp_path / "img_mask.png") in msg and str(tmp_path / "img.png") in msg
    assert "30x21" in msg and "30x20" in msg


def test_load_sample_uses_reader_mask_mode(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4), 5, np.uint8)).save(tmp_path / "a_mask.png")
    s = Sample(tmp_path / "a.png", 1, "x", tmp_path / "a_mask.png", {"mask_mode": "nonzero"})
    img, mask = load_sample(s)
    assert img.shape == (4, 4, 3) and mask.all()
    _, mask = load_sample(Sample(tmp_path / "a.png", 1, "x", tmp_path / "a_mask.png"))
    assert mask.all()  # auto: no value > 127 -> class-index mask -> != 0
    mask = read_mask(tmp_path / "a_mask.png", mode="threshold")
    assert not mask.any()  # value 5 on the 8-bit scale is background for 0/255 masks
    assert load_sample(Sample(tmp_path / "a.png"))[1] is None
