"""fsiad export + the onnxruntime bundle runner (issue #15): parity with torch predict, no torch in the
runner's process, checksums, refused methods. The Ray engine is in ``test_export_ray.py``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli
from PIL import Image
from workflow_helpers import make_inspection_tree, texture

pytest.importorskip("onnxruntime")

ENCODERS = {"knn": "dinov2_vits14", "patchcore": "tf_efficientnet_lite0"}


def real_weights(encoder: str) -> bool:
    from fsiad.fewshot.encoders import encoder_status

    return bool(encoder_status(encoder)["available"])


def read_scores(out: Path) -> dict[str, tuple[str, float, str]]:
    with (out / "scores.csv").open(newline="") as fh:
        return {r["name"]: (r["path"], float(r["score"]), r["decision"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    paths = make_inspection_tree(root)
    rng = np.random.default_rng(7)  # other sizes: the antialiased downscale and a non-square input
    odd = root / "targets" / "odd"
    odd.mkdir()
    Image.fromarray(np.tile(texture(rng, side=100), (3, 3, 1))[:300, :260]).save(odd / "big.png")
    Image.fromarray(texture(rng, defect=True, side=130)[:90]).save(odd / "wide.png")
    return paths


def knn_square() -> dict[str, str]:
    """knn options for a fixed input geometry (knn versions with geometry=native need square to export)."""
    from fsiad.fewshot.methods.knn import OPTIONS

    return {"geometry": "square"} if any(o.name == "geometry" for o in OPTIONS) else {}


def fit_model(tree: dict[str, Path], method: str, out: Path, options: dict | None = None) -> Path:
    from fsiad.fewshot.methods.base import MethodConfig
    from fsiad.fewshot.workflow.session import InspectionSession

    if options is None:
        options = knn_square() if method == "knn" else {}
    cfg = MethodConfig(device="cpu", allow_random=not real_weights(ENCODERS[method]), options=options)
    InspectionSession(method, cfg, shots=3, seed=0).fit(tree["normal"], save_to=out)
    return out


@pytest.fixture(scope="module", params=["knn", "patchcore"])
def exported(request: pytest.FixtureRequest, tree: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp(f"model-{request.param}")
    model = fit_model(tree, request.param, base / "model")
    res = run_cli("export", "--model", model, "--out", base / "bundle")
    assert res.exit_code == 0, res.output
    return request.param, model, base / "bundle"


def test_bundle_records_geometry_checksums_and_version(exported) -> None:
    from fsiad.fewshot.export.bundle import read_bundle, sha256_file

    import fsiad

    method, _, bundle = exported
    meta = read_bundle(bundle)
    assert meta["method"] == method and meta["versions"]["fsiad"] == fsiad.__version__
    assert meta["graph"]["opset"] == 17 and meta["graph"]["input_shape"] == ["batch", 3, 224, 224]
    assert meta["preprocess"]["interpolation"] == "bicubic" and len(meta["preprocess"]["mean"]) == 3
    files = {p.name for p in bundle.iterdir()} - {"bundle.json"}
    arrays = {f"{a}.npy" for a in meta["arrays"]}
    assert set(meta["files"]) == files == {"features.onnx", *arrays}
    assert all(meta["files"][f] == sha256_file(bundle / f) for f in files)
    assert arrays and all(np.load(bundle / a, allow_pickle=False).dtype == np.float32 for a in arrays)


def test_bundle_predict_matches_torch_predict(exported, tree: dict[str, Path], tmp_path: Path) -> None:
    """Scores and maps of `fsiad predict --model BUNDLE` equal `fsiad predict --model DIR` within 1e-4
    (absolute below 1, relative above: self-configured knn scores are z-scores in the hundreds)."""
    _, model, bundle = exported
    for src, out in ((model, tmp_path / "torch"), (bundle, tmp_path / "onnx")):
        res = run_cli("predict", "-q", "--model", src, "--out", out, tree["targets"])
        assert res.exit_code == 0, res.output
    want, got = read_scores(tmp_path / "torch"), read_scores(tmp_path / "onnx")
    assert list(want) == list(got) and len(want) == 10
    for name, (path, score, decision) in want.items():
        assert got[name][0] == path and got[name][2] == decision
        assert abs(got[name][1] - score) <= 1e-4 * max(1.0, abs(score)), (name, got[name][1], score)
        a, b = np.load(tmp_path / "torch" / "maps" / f"{name}.npy"), np.load(tmp_path / "onnx" / "maps" / f"{name}.npy")
        assert a.shape == b.shape == (224, 224)
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max())), (name, np.abs(a - b).max())
    assert (tmp_path / "onnx" / "overlays" / "odd__big.png").is_file()
    run = json.loads((tmp_path / "onnx" / "run.json").read_text())
    assert run["n_scored"] == 10 and run["settings"]["engine"] == "onnxruntime"


def test_runner_process_imports_no_torch(exported, tree: dict[str, Path], tmp_path: Path) -> None:
    """The CLI with a bundle, in a fresh process: no torch module is ever imported; a rerun resumes."""
    _, _, bundle = exported
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('TORCH', sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
            "from fsiad.cli.main import main\n"
            f"sys.argv = ['fsiad', 'predict', '-q', '--model', {str(bundle)!r}, '--out', {str(tmp_path / 'o')!r}, "
            f"{str(tree['targets'])!r}]\n"
            "main()\n")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    for expect in ("scored 10 image(s)", "10 resumed"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "TORCH []" in proc.stdout, proc.stdout
        assert expect in proc.stdout, proc.stdout
    assert len(read_scores(tmp_path / "o")) == 10


def test_changed_bundle_file_is_refused(exported, tree: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    _, _, bundle = exported
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    name = sorted(p.name for p in copy.glob("memory*.npy"))[0]
    mem = np.load(copy / name)
    mem[0, 0] += 1.0
    np.save(copy / name, mem)
    res = run_cli("predict", "-q", "--model", copy, "--out", tmp_path / "o", tree["targets"])
    assert_one_line_error(res, name, "checksum mismatch")
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_export_refuses_other_methods_and_existing_out(tree: dict[str, Path], tmp_path: Path) -> None:
    from fsiad.fewshot.errors import OptionError
    from fsiad.fewshot.export.exporter import method_kind
    from fsiad.fewshot.methods.patchcore import PatchCore
    from workflow_helpers import PixelDiff

    with pytest.raises(OptionError, match="cannot be exported"):
        method_kind(PixelDiff())

    class Variant(PatchCore):  # a variant with its own inference is not the fixed graph
        def _predict_batch(self, images):  # pragma: no cover - never called
            raise AssertionError

    from fsiad.fewshot.methods.base import MethodConfig

    with pytest.raises(OptionError, match="changes patchcore's inference"):
        method_kind(Variant(MethodConfig(device="cpu", allow_random=True)))
    if knn_square():  # knn keeping each image's aspect ratio has no fixed input geometry
        from fsiad.fewshot.methods.knn import PatchKNN

        native = PatchKNN(MethodConfig(device="cpu", allow_random=True, options={"geometry": "native"}))
        with pytest.raises(OptionError, match="geometry=square"):
            method_kind(native)
    (tmp_path / "taken").mkdir()
    res = run_cli("export", "--model", tmp_path / "nomodel", "--out", tmp_path / "taken")
    assert_one_line_error(res, "already exists")


def test_padim_bundle_matches_torch(tree: dict[str, Path], tmp_path: Path) -> None:
    """PaDiM: Mahalanobis with the exported inverse Cholesky factor (relative 1e-4: distances are ~1e3)."""
    from fsiad.fewshot.data.io import read_image
    from fsiad.fewshot.export.exporter import export_model
    from fsiad.fewshot.export.runner import BundleModel
    from fsiad.fewshot.methods.base import MethodConfig
    from fsiad.fewshot.workflow.model import load_model
    from fsiad.fewshot.workflow.session import InspectionSession

    cfg = MethodConfig(device="cpu", allow_random=not real_weights("tf_efficientnet_lite0"), options={"n_features": 20})
    InspectionSession("padim", cfg, shots=4, seed=0).fit(tree["normal"], save_to=tmp_path / "m")
    export_model(tmp_path / "m", tmp_path / "b")
    images = [read_image(p) for p in sorted(tree["targets"].rglob("*.png"))]
    method, _ = load_model(tmp_path / "m", device="cpu")
    want = method.predict(method.preprocess.images(images))
    scores, maps = BundleModel.load(tmp_path / "b", batch_size=3).score_arrays(images)
    np.testing.assert_allclose(scores, want.image_scores.numpy(), rtol=1e-4)
    np.testing.assert_allclose(maps, want.anomaly_maps.numpy(), rtol=1e-4, atol=1e-4 * float(maps.max()))


def test_knn_global_term_exported_and_checked(tree: dict[str, Path], tmp_path: Path):
    """knn's image-level term travels in the bundle; export's self-check (scores within 1e-4 of
    torch) passes, and the bundle's scores move with the term."""
    import json

    model = fit_model(tree, "knn", tmp_path / "model", {**knn_square(), "preset": "mid", "global_term": "on"})
    res = run_cli("export", "--model", model, "--out", tmp_path / "bundle")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    g = meta["scoring"]["global"]
    assert g["unit"] > 0 and g["mean"] > 0 and (tmp_path / "bundle" / "global_memory.npy").exists()
    assert meta["check"]["max_score_diff"] <= 1e-4
