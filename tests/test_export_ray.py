"""fsiad predict --engine ray (issue #15): a local Ray cluster (2 CPUs) started inside the test gives the
scores.csv values of the single-process run; an interrupted run resumes without rescoring finished images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli
from workflow_helpers import make_inspection_tree


def read_scores(out: Path) -> dict[str, float]:
    with (out / "scores.csv").open(newline="") as fh:
        return {r["name"]: float(r["score"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A patchcore model folder (EfficientNet-Lite0: real weights when installed) on a tiny tree."""
    from fsiad.fewshot.encoders import encoder_status
    from fsiad.fewshot.methods.base import MethodConfig
    from fsiad.fewshot.workflow.session import InspectionSession

    root = tmp_path_factory.mktemp("ray")
    tree = make_inspection_tree(root, n_normal=4, n_good=5, n_bad=5)
    cfg = MethodConfig(device="cpu", allow_random=not encoder_status("tf_efficientnet_lite0")["available"])
    InspectionSession("patchcore", cfg, shots=3, seed=0).fit(tree["normal"], save_to=root / "model")
    return {**tree, "model": root / "model", "root": root}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'fsiad[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_matches_single_process_and_reads_list_files(ray_cluster, model: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli("predict", "-q", "--model", model["model"], "--out", tmp_path / "local", model["targets"])
    assert res.exit_code == 0, res.output
    listing = tmp_path / "targets.txt"  # a list file of paths, relative to its folder
    listing.write_text("".join(f"{p}\n" for p in sorted(model["targets"].rglob("*.png"))))
    res = run_cli("predict", "-q", "--engine", "ray", "--num-actors", "2", "--batch-size", "3",
                  "--model", model["model"], "--out", tmp_path / "ray", listing)
    assert res.exit_code == 0, res.output
    want, got = read_scores(tmp_path / "local"), read_scores(tmp_path / "ray")
    assert sorted(want) == sorted(got) and len(got) == 10
    for name, score in want.items():
        assert got[name] == pytest.approx(score, rel=1e-6, abs=1e-6), name
        np.testing.assert_allclose(np.load(tmp_path / "ray" / "maps" / f"{name}.npy"),
                                   np.load(tmp_path / "local" / "maps" / f"{name}.npy"), rtol=1e-5, atol=1e-5)
        assert (tmp_path / "ray" / "overlays" / f"{name}.png").is_file()
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "ray" / "scores.parquet").to_pydict()
    assert dict(zip(table["name"], table["score"], strict=True)) == got
    assert not (tmp_path / "ray" / "parquet").exists()  # the incremental parts are merged at the end


def test_interrupted_ray_run_resumes_without_rescoring(ray_cluster, model: dict[str, Path], tmp_path: Path) -> None:
    from fsiad.fewshot.export.ray_engine import predict_ray

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_ray(model["model"], [model["targets"]], out, num_actors=1, batch_size=2, stop_after=2)
    done = read_scores(out)
    assert 2 <= len(done) < 10  # rows flushed before the interruption
    stamps = {n: (out / "maps" / f"{n}.npy").stat().st_mtime_ns for n in done}
    assert list((out / "parquet").glob("part-*.parquet"))  # incremental Parquet parts too
    record = predict_ray(model["model"], [model["targets"]], out, num_actors=2, batch_size=2)
    assert record["resumed"] == len(done) and record["n_rescored"] == 10 - len(done)
    assert all((out / "maps" / f"{n}.npy").stat().st_mtime_ns == t for n, t in stamps.items())
    final = read_scores(out)
    assert len(final) == 10 and all(final[n] == s for n, s in done.items())
    again = predict_ray(model["model"], [str(model["targets"] / "*" / "*.png")], out)  # a glob; all done
    assert again["resumed"] == 10 and again["n_rescored"] == 0


def test_ray_missing_is_one_line(monkeypatch: pytest.MonkeyPatch, model: dict[str, Path], tmp_path: Path) -> None:
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    res = run_cli("predict", "-q", "--engine", "ray", "--model", model["model"], "--out", tmp_path / "o",
                  model["targets"])
    assert_one_line_error(res, "pip install 'fsiad[ray]'")
