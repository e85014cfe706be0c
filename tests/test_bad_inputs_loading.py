"""Safe loading of every file fsiad reads: crafted checkpoints and model folders never run code,
model folders are self-contained and relocatable, decompression bombs are refused per image.

The payload is a real pickle whose ``__reduce__`` creates a marker file when unpickled (the
``payload`` fixture proves it does with plain ``pickle.loads``); every test then asserts that
the marker never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.clip_helpers import register_tiny_arch
from tests.workflow_helpers import make_inspection_tree, register_test_methods

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture()
def payload(tmp_path) -> dict:
    """Crafted files, each carrying the pickle payload, and the marker they would create."""
    marker = tmp_path / "PWNED"
    data = pickle.dumps({"weight": _Payload(marker)}, protocol=2)
    pickle.loads(data)  # the payload is real: plain unpickling runs it ...
    assert marker.is_file()
    marker.unlink()  # ... and from here on it must never run again
    d = tmp_path / "crafted"
    d.mkdir()
    (d / "plain.pt").write_bytes(data)
    files = {
        "plain": d / "plain.pt",
        # old heuristic: "a member ends with constants.pkl" -> TorchScript -> weights_only=False
        "notconstants": _zip(d / "notconstants.pt", {"archive/data.pkl": data, "archive/x/notconstants.pkl": data,
                                                     "archive/version": b"3\n", "archive/byteorder": b"little"}),
        "torchscript_like": _zip(d / "scriptlike.pt", {"archive/data.pkl": data, "archive/constants.pkl": data,
                                                       "archive/version": b"3\n", "archive/code/__torch__/m.py": b""}),
    }
    return {"marker": marker, "data": data, **files}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    register_test_methods()
    return make_inspection_tree(tmp_path_factory.mktemp("loading"))


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("FSIAD_HOME", str(h))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return h


def _fit(tree, out: Path, *extra) -> None:
    r = run_cli("fit", "--method", "wf_pixdiff", "--shots", 3, "--normal", tree["normal"], "--out", out, *extra)
    assert r.exit_code == 0, r.output


def _fit_knn(tree, out: Path) -> None:
    r = run_cli("fit", "--shots", 2, "--normal", tree["normal"], "--allow-random", "--image-size", 28,
                "--batch-size", 4, "--out", out)
    assert r.exit_code == 0, r.output


def _edit_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))


def _predict(model: Path, out: Path, tree, *extra):
    return run_cli("predict", "--model", model, "--out", out, "-q", *extra, tree["targets"])


def _inspect(model: Path, out: Path, tmp_path: Path):
    ply = tmp_path / "cloud.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                   "end_header\n0 0 1\n1 0 1\n0 1 1\n")
    return run_cli("inspect", ply, "--model", model, "--out", out)


# -- 1. no code execution on load ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "notconstants", "torchscript_like"])
def test_crafted_weights_never_run_on_score_clip(kind, payload, tree, home, tmp_path):
    arch = register_tiny_arch(tmp_path)
    r = run_cli("score", "--method", "winclip", "--encoder", f"clip:{arch}", "--weights", payload[kind],
                "--shots", 0, "--out", tmp_path / "out", "-q", tree["targets"] / "good")
    line = assert_one_line_error(r, payload[kind].name)
    assert not payload["marker"].exists(), line


@pytest.mark.parametrize("kind", ["plain", "notconstants", "torchscript_like"])
def test_crafted_weights_never_run_on_score_state_dict_encoders(kind, payload, tree, home, tmp_path):
    r = run_cli("score", "--shots", 2, "--normal", tree["normal"], "--weights", payload[kind], "--image-size", 28,
                "--out", tmp_path / "out", "-q", tree["targets"] / "good")
    assert_one_line_error(r, payload[kind].name)
    assert not payload["marker"].exists()


def test_clip_file_in_the_weights_cache_is_not_unpickled(payload, tmp_path, home):
    from fsiad.fewshot.encoders.clip import clip_weight_spec, create_clip_encoder
    from fsiad.fewshot.errors import UnsafeFileError

    arch = register_tiny_arch(tmp_path)
    cached = home / "weights" / clip_weight_spec(arch, None).filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload["notconstants"].read_bytes())
    with pytest.raises(UnsafeFileError, match="refused"):
        create_clip_encoder(arch)
    assert not payload["marker"].exists()


def test_torchscript_check_is_exact(payload, tmp_path):
    from fsiad.fewshot.encoders.checkpoint import is_torchscript_archive

    assert not is_torchscript_archive(payload["notconstants"])
    assert not is_torchscript_archive(payload["plain"])
    deep = _zip(tmp_path / "deep.pt", {"a/b/constants.pkl": b"", "a/data.pkl": b""})
    assert not is_torchscript_archive(deep)
    scripted = tmp_path / "real.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert is_torchscript_archive(scripted)


def test_model_folder_weights_outside_the_folder_are_refused(payload, tree, tmp_path, home):
    model = tmp_path / "m"
    _fit_knn(tree, model)
    _edit_json(model / "method.json", config={**json.loads((model / "method.json").read_text())["config"],
                                              "weights": str(payload["notconstants"])})
    line = assert_one_line_error(_predict(model, tmp_path / "p", tree), "outside the model folder", "--weights")
    assert str(payload["notconstants"]) in line
    assert_one_line_error(_inspect(model, tmp_path / "i", tmp_path), "outside the model folder")
    # relative escapes are outside too
    _edit_json(model / "method.json", config={**json.loads((model / "method.json").read_text())["config"],
                                              "weights": "../crafted/plain.pt"})
    assert_one_line_error(_predict(model, tmp_path / "p2", tree), "outside the model folder")
    assert not payload["marker"].exists()


@pytest.mark.parametrize("kind", ["plain", "notconstants", "torchscript_like"])
def test_model_folder_weights_inside_the_folder_are_not_unpickled(kind, payload, tree, tmp_path, home):
    model = tmp_path / "m"
    _fit_knn(tree, model)
    (model / "w.pt").write_bytes(payload[kind].read_bytes())
    cfg = json.loads((model / "method.json").read_text())["config"]
    _edit_json(model / "method.json", config={**cfg, "weights": "w.pt"})
    assert_one_line_error(_predict(model, tmp_path / "p", tree), "w.pt")
    assert_one_line_error(_inspect(model, tmp_path / "i", tmp_path), "w.pt")
    # passing the crafted file explicitly is refused the same way
    assert_one_line_error(_predict(model, tmp_path / "p2", tree, "--weights", payload[kind]), payload[kind].name)
    assert not payload["marker"].exists()


def test_weights_checksum_is_checked_before_the_file_is_read(payload, tree, tmp_path, home, monkeypatch):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"original weights")
    model = tmp_path / "m"
    _fit(tree, model, "--weights", weights)
    from fsiad.fewshot.encoders import checkpoint

    def never(*_a, **_k):
        raise AssertionError("a weight file was read before its checksum was checked")

    monkeypatch.setattr(checkpoint, "read_state_dict", never)
    line = assert_one_line_error(_predict(model, tmp_path / "p", tree, "--weights", payload["plain"]),
                                 "encoder mismatch", "sha256")
    assert "refused before loading" in line
    assert not payload["marker"].exists()


def test_resolver_refuses_other_weights_inside_an_expectation(tmp_path, home):
    from fsiad.fewshot.encoders.weights import WeightSpec, expect_weights_checksum, resolve_weights
    from fsiad.fewshot.errors import UnsafeFileError

    f = tmp_path / "a.pt"
    f.write_bytes(b"x")
    spec = WeightSpec(key="enc", filename="enc.pt")
    with expect_weights_checksum("0" * 64), pytest.raises(UnsafeFileError, match="encoder mismatch"):
        resolve_weights(spec, f)
    assert resolve_weights(spec, f).path == str(f)  # outside the block: no expectation
    with expect_weights_checksum("random-init-seed0"):  # not a sha256: no check
        assert resolve_weights(spec, f).path == str(f)


def test_legacy_state_pt_payload_is_refused(payload, tree, tmp_path):
    model = tmp_path / "m"
    _fit(tree, model)
    _edit_json(model / "method.json", state=None)  # an older folder: state.pt, no checksum
    (model / "state.safetensors").unlink()
    (model / "state.pt").write_bytes(payload["data"])
    assert_one_line_error(_predict(model, tmp_path / "p", tree), "state.pt", "refused")
    assert_one_line_error(_inspect(model, tmp_path / "i", tmp_path), "state.pt", "refused")
    (model / "state.pt").write_bytes(payload["notconstants"].read_bytes())
    assert_one_line_error(_predict(model, tmp_path / "p2", tree), "state.pt")
    assert not payload["marker"].exists()


def test_state_replaced_by_a_payload_fails_its_checksum(payload, tree, tmp_path):
    model = tmp_path / "m"
    _fit(tree, model)
    (model / "state.safetensors").write_bytes(payload["data"])
    assert_one_line_error(_predict(model, tmp_path / "p", tree), "state.safetensors", "checksum mismatch")
    assert_one_line_error(_inspect(model, tmp_path / "i", tmp_path), "checksum mismatch")
    assert not payload["marker"].exists()


def test_legacy_state_pt_of_tensors_still_loads(tree, tmp_path):
    from fsiad.fewshot.methods.base import AnomalyMethod
    from safetensors.torch import load_file

    model = tmp_path / "m"
    _fit(tree, model)
    state = load_file(model / "state.safetensors")
    torch.save(state, model / "state.pt")
    (model / "state.safetensors").unlink()
    _edit_json(model / "method.json", state=None)
    m = AnomalyMethod.load(model)
    assert torch.equal(m.mean, state["mean"])


# -- 3. malformed model folders: one line naming the file -------------------------------------
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:40])


MALFORMED = {
    "method-no-config": ("method.json", lambda m: _edit_json(m / "method.json", config=None), "'config'"),
    "method-no-name": ("method.json", lambda m: _edit_json(m / "method.json", name=None), "'name'"),
    "method-bad-json": ("method.json", lambda m: (m / "method.json").write_text("{nope"), "invalid JSON"),
    "method-list": ("method.json", lambda m: (m / "method.json").write_text("[]"), "JSON object"),
    "method-unknown-field": ("method.json", lambda m: _edit_json(
        m / "method.json", config={"encoder": None, "bogus": 1}), "bogus"),
    "method-unknown-method": ("method.json", lambda m: _edit_json(m / "method.json", name="nosuch"), "nosuch"),
    "method-bad-state-entry": ("method.json", lambda m: _edit_json(m / "method.json", state={"file": "../x"}),
                               "'state'"),
    "state-truncated": ("state.safetensors", lambda m: _truncate(m / "state.safetensors"), "checksum mismatch"),
    "state-missing": ("state.safetensors", lambda m: (m / "state.safetensors").unlink(), "missing"),
    "model-bad-json": ("model.json", lambda m: (m / "model.json").write_text("{"), "invalid JSON"),
    "model-no-threshold": ("model.json", lambda m: _edit_json(m / "model.json", threshold=None), "'threshold'"),
    "model-bad-references": ("model.json", lambda m: _edit_json(m / "model.json", references=3), "'references'"),
    "model-bad-chunk": ("model.json", lambda m: _edit_json(m / "model.json", chunk_size="x"), "'chunk_size'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_folder_is_one_line_naming_the_file(case, tree, tmp_path):
    fname, damage, needle = MALFORMED[case]
    model = tmp_path / "m"
    _fit(tree, model)
    damage(model)
    line = assert_one_line_error(_predict(model, tmp_path / "p", tree), fname, needle)
    assert "refit" in line or "fsiad fit" in line


def test_truncated_legacy_state_pt_is_one_line(tree, tmp_path):
    model = tmp_path / "m"
    _fit(tree, model)
    from safetensors.torch import load_file

    torch.save(load_file(model / "state.safetensors"), model / "state.pt")
    (model / "state.safetensors").unlink()
    _edit_json(model / "method.json", state=None)
    _truncate(model / "state.pt")
    assert_one_line_error(_predict(model, tmp_path / "p", tree), "state.pt", "corrupt")


def test_state_that_does_not_fit_the_method_is_one_line(tree, tmp_path):
    from fsiad.fewshot.methods.base import AnomalyMethod
    from fsiad.fewshot.workflow.model import ModelError
    from safetensors.torch import save_file

    model = tmp_path / "m"
    _fit(tree, model)
    save_file({"other": torch.zeros(1)}, model / "state.safetensors")
    import hashlib

    meta = json.loads((model / "method.json").read_text())
    meta["state"]["sha256"] = hashlib.sha256((model / "state.safetensors").read_bytes()).hexdigest()
    (model / "method.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"state.safetensors: state does not fit wf_pixdiff"):
        AnomalyMethod.load(model)


# -- 4. relocatable model folders ---------------------------------------------------------------
@pytest.mark.parametrize("copy", [False, True])
def test_moved_model_predicts_identically_from_another_directory(copy, tmp_path, monkeypatch):
    import shutil

    from fsiad.fewshot.data.base import Sample
    from fsiad.fewshot.methods import MethodConfig, create_method
    from fsiad.fewshot.workflow.model import load_model, save_model
    from fsiad.fewshot.workflow.runner import fit_references
    from fsiad.fewshot.workflow.thresholds import ThresholdRule

    register_test_methods()
    fit_dir, third = tmp_path / "fit_here", tmp_path / "third"
    paths = make_inspection_tree(fit_dir)
    third.mkdir()
    monkeypatch.chdir(fit_dir)  # references recorded relative to the fitting directory
    refs = [Sample(path=Path("normal") / p.name, label=0) for p in sorted(paths["normal"].glob("*.png"))[:3]]
    m = create_method("wf_pixdiff", MethodConfig())
    calibration, _ = fit_references(m, refs, 0, ThresholdRule.parse("max"), None)
    save_model(m, tmp_path / "model", calibration, {"references": [str(r.path) for r in refs], "seed": 0},
               copy_references=copy)
    r = run_cli("predict", "--model", tmp_path / "model", "--out", tmp_path / "before", "-q", paths["targets"])
    assert r.exit_code == 0, r.output
    before = (tmp_path / "before" / "scores.csv").read_text()

    moved = tmp_path / "elsewhere" / "model2"
    moved.parent.mkdir()
    shutil.move(tmp_path / "model", moved)
    if copy:  # the copies travel with the folder: the originals may go
        shutil.rmtree(fit_dir / "normal")
    monkeypatch.chdir(third)
    r = run_cli("predict", "--model", moved, "--out", tmp_path / "after", "-q", paths["targets"])
    assert r.exit_code == 0, r.output
    assert "3 reference(s)" in r.output
    assert (tmp_path / "after" / "scores.csv").read_text() == before
    _, meta = load_model(moved)
    assert meta["reference_status"] == (["copy"] * 3 if copy else ["recorded"] * 3)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in meta["references"])
    if copy:
        assert all(is_within(p, moved) for p in meta["references"])


def is_within(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_changed_reference_is_not_used(tmp_path, tree):
    from fsiad.fewshot.workflow.model import load_model

    model = tmp_path / "m"
    _fit(tree, model)
    meta = json.loads((model / "model.json").read_text())
    entry = meta["reference_files"][0]
    assert Path(entry["path"]).is_absolute() and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    saved = Path(entry["path"]).read_bytes()
    try:
        Path(entry["path"]).write_bytes(saved + b"\0")
        _, meta2 = load_model(model)
        assert meta2["reference_status"][0] == "changed"
    finally:
        Path(entry["path"]).write_bytes(saved)


# -- 2. no unsafe deserialisation anywhere in the package ---------------------------------------
FORBIDDEN = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|MAX_IMAGE_PIXELS\s*=\s*None"
                       r"|^\s*(import|from)\s+(c?pickle|cloudpickle|dill|joblib|marshal|shelve)\b"
                       r"|\b(c?pickle|dill|marshal|shelve)\.(loads?|Unpickler|open)\b|yaml\.(unsafe_)?load\(|"
                       r"yaml\.full_load|(?<![.\w])(eval|exec)\(", re.MULTILINE)


def test_package_sources_never_unpickle():
    hits = []
    for folder in ("fsiad", "fewshot", "pointcloud", "prompts", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            hits += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in FORBIDDEN.finditer(text)]
    assert not hits, hits


def test_forbidden_pattern_catches_what_it_should():
    for bad in ("torch.load(p, weights_only=False)", "np.load(p, allow_pickle=True)", "import pickle",
                "Image.MAX_IMAGE_PIXELS = None", "pickle.loads(b)", "yaml.load(s)"):
        assert FORBIDDEN.search(bad), bad
    assert not FORBIDDEN.search("torch.load(p, weights_only=True)")
    assert not FORBIDDEN.search("model.eval()") and not FORBIDDEN.search("np.load(p, allow_pickle=False)")


def test_pointcloud_cleaning_cache_is_not_unpickled(tmp_path, monkeypatch, payload):
    import numpy as np
    from fsiad.pointcloud import cleaning

    monkeypatch.setenv("FSIAD_HOME", str(tmp_path / "home"))
    from fsiad.pointcloud.synthetic import render_sample

    xyz = render_sample(size=48, seed=0).xyz
    first = cleaning.cleaned_cloud(xyz, source="a")
    entries = list(cleaning.cache_dir().glob("*.npz"))
    assert len(entries) == 1
    np.savez(entries[0], keep=np.array([_Payload(payload["marker"])], dtype=object))
    again = cleaning.cleaned_cloud(xyz, source="a")  # unreadable entry: recomputed
    assert np.array_equal(first, again) and not payload["marker"].exists()
    assert os.path.getsize(entries[0]) > 0


# -- 2. decompression bombs -------------------------------------------------------------------
def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width x height`` RGB pixels (its data would inflate to GBs)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * (3 * width)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()  # the first rows only: still tiny
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_bomb_png_refused_from_its_header(tmp_path, monkeypatch):
    from fsiad.fewshot.data.base import DatasetError
    from fsiad.fewshot.data.io import read_image, read_mask

    bomb = _png_declaring(tmp_path / "bomb.png", 25000, 25000)
    assert bomb.stat().st_size < 700_000
    with pytest.raises(DatasetError, match=r"bomb.png: image declares 625.0 MP, above the 64 MP limit"):
        read_image(bomb)  # beyond PIL's own guard (~179 MP): refused at open, same one-line message
    with pytest.raises(DatasetError, match="bomb.png: mask declares 625.0 MP"):
        read_mask(bomb)
    bomb = _png_declaring(tmp_path / "bomb2.png", 10000, 10000)  # below PIL's guard: our header check
    with pytest.raises(DatasetError, match=r"bomb2.png: image is 10000x10000 \(100.0 MP\), above the 64 MP limit"):
        read_image(bomb)
    small = tmp_path / "small.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (9, 9, 9)).save(small)
    monkeypatch.setenv("FSIAD_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DatasetError, match=r"40x40 .*above the 0.001 MP limit"):
        read_image(small)
    monkeypatch.setenv("FSIAD_MAX_IMAGE_PIXELS", "2e3")
    assert read_image(small).shape == (40, 40, 3)
    from fsiad.fewshot.errors import OptionError

    monkeypatch.setenv("FSIAD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(OptionError, match="FSIAD_MAX_IMAGE_PIXELS"):
        read_image(small)


def test_bomb_target_goes_to_errors_csv_and_the_run_goes_on(tree, tmp_path):
    import csv
    import shutil

    targets = tmp_path / "targets"
    shutil.copytree(tree["targets"] / "good", targets)
    _png_declaring(targets / "zz_bomb.png", 25000, 25000)
    r = run_cli("score", "--method", "wf_pixdiff", "--shots", 2, "--normal", tree["normal"], "--out", tmp_path / "o",
                "-q", targets)
    assert r.exit_code == 0, r.output
    with (tmp_path / "o" / "scores.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    errors = (tmp_path / "o" / "errors.csv").read_text()
    assert "zz_bomb.png" in errors and "625.0 MP" in errors and "limit" in errors


def test_tiff_and_point_cloud_tiff_sizes_checked_before_decoding(tmp_path, monkeypatch):
    import numpy as np
    import tifffile
    from fsiad.fewshot.data.base import DatasetError
    from fsiad.fewshot.data.io import read_image
    from fsiad.pointcloud.io import PointCloudError, read_xyz_tiff

    tifffile.imwrite(tmp_path / "a.tiff", np.zeros((30, 20, 3), np.uint8))
    tifffile.imwrite(tmp_path / "xyz.tiff", np.ones((30, 20, 3), np.float32))
    monkeypatch.setenv("FSIAD_MAX_IMAGE_PIXELS", "500")
    with pytest.raises(DatasetError, match=r"a.tiff: image is 20x30"):
        read_image(tmp_path / "a.tiff")
    with pytest.raises(PointCloudError, match=r"xyz.tiff: point-cloud TIFF is 20x30"):
        read_xyz_tiff(tmp_path / "xyz.tiff")
    monkeypatch.setenv("FSIAD_MAX_IMAGE_PIXELS", "600")
    assert read_xyz_tiff(tmp_path / "xyz.tiff").shape == (30, 20, 3)


def test_large_allowed_image_is_decoded_reduced(tmp_path):
    import numpy as np
    from fsiad.fewshot.data import io
    from PIL import Image

    w, h = 4800, 4000  # 19.2 MP > DECODE_PIXELS: reduced by 2 while decoding
    assert io.reduce_factor(w, h) == 2
    x = np.linspace(0, 255, w, dtype=np.float32)
    img = np.broadcast_to(x[None, :, None], (h, w, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "big.png")
    del img
    for name in ("big.jpg", "big.png"):
        out = io.read_image(tmp_path / name)
        assert out.shape == (2000, 2400, 3), name
        expected = x.reshape(-1, 2).mean(1)
        assert np.abs(out[1000, :, 0].astype(np.float32) - expected).max() <= 3, name


def test_reduced_image_and_mask_keep_matching_geometry(tmp_path, monkeypatch):
    import numpy as np
    from fsiad.fewshot.data import io
    from fsiad.fewshot.data.base import Sample
    from PIL import Image

    monkeypatch.setattr(io, "DECODE_PIXELS", 10_000)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 301, 3), dtype=np.uint8)
    mask = np.zeros((200, 301), np.uint8)
    mask[101, 299] = 255  # one defect pixel in a partial edge block
    Image.fromarray(img).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    f = io.reduce_factor(301, 200)
    assert f == 3
    got_img, got_mask = io.load_sample(Sample(tmp_path / "i.png", 1, mask_path=tmp_path / "m.png"))
    assert got_img.shape == (67, 101, 3) and got_mask.shape == (67, 101)
    assert got_mask.sum() == 1 and got_mask[101 // 3, 299 // 3]
    ref = img[:3, :3].reshape(-1, 3).mean(0)
    assert np.abs(got_img[0, 0].astype(float) - ref).max() <= 1
    # the header size of the image is still a valid expectation for the mask (evaluation harness)
    assert io.read_mask(tmp_path / "m.png", expected_hw=(200, 301)).shape == (67, 101)
    # 16-bit and TIFF images take the same reduction
    Image.fromarray(img[..., 0].astype(np.uint16) * 257).save(tmp_path / "d.png")
    assert io.read_image(tmp_path / "d.png").shape == (67, 101, 3)
    import tifffile

    tifffile.imwrite(tmp_path / "t.tiff", img)
    assert io.read_image(tmp_path / "t.tiff").shape == (67, 101, 3)
