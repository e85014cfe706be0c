"""Throughput of exported bundles and of the Ray engine against torch predict (issue #15).

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_export [--method patchcore] [--n 24] [--side 256]``.

Builds ``--n`` synthetic textured targets (``--side`` px) and a model fitted on 4 references,
exports it, then runs each engine as the real command in a subprocess:

* ``torch``: ``fsiad predict --model DIR`` (2 torch threads);
* ``onnxruntime``: ``fsiad predict --model BUNDLE`` (onnxruntime's default threads = cores);
* ``ray-1`` / ``ray-2``: ``fsiad predict --model BUNDLE --engine ray --num-actors N`` (one
  intra-op thread per actor, a fresh local Ray started by the command).

Reported per engine: images/s of the scoring phase (``run.json`` ``images_per_s``: model load and
Ray start excluded), wall time of the whole command, and peak RSS summed over the command's
process tree (Ray's raylet, GCS and workers included), sampled every 0.1 s. One JSON line per
engine, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "RAY_DEDUP_LOGS": "0"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    rec = json.loads((out / "run.json").read_text())
    return {"images_per_s": rec["images_per_s"], "predict_s": rec["predict_s"],
            "wall_s": round(time.perf_counter() - t, 2), "peak_rss_mb": round(peak / 2**20), "n": rec["n_scored"]}


def make_images(folder: Path, n: int, side: int, seed: int, defect: bool) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    for i in range(n):
        img = 110 + 60 * np.sin(x / 5.0 + rng.uniform(0, 1))[..., None] * np.array([1.0, 0.8, 0.6])
        img = img + rng.normal(0, 6, (side, side, 3))
        if defect and i % 2:
            r, c = rng.integers(side // 8, side - side // 4, size=2)
            img[r : r + side // 10, c : c + side // 10] = 250
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{i:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="patchcore", choices=("patchcore", "knn", "padim"))
    ap.add_argument("--n", type=int, default=24, help="target images")
    ap.add_argument("--side", type=int, default=256, help="target image side (px)")
    ap.add_argument("--engines", default="torch,onnxruntime,ray-1,ray-2")
    a = ap.parse_args()
    fsiad = [sys.executable, "-m", "fsiad.cli.main"]
    with tempfile.TemporaryDirectory(prefix="bench_export.") as tmp:
        root = Path(tmp)
        make_images(root / "normal", 4, a.side, 1, False)
        make_images(root / "targets", a.n, a.side, 2, True)
        opts = ["-o", "geometry=square"] if a.method == "knn" and _knn_has_geometry() else []
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
        subprocess.run([*fsiad, "fit", "--method", a.method, "--shots", "4", "--normal", str(root / "normal"),
                        "--out", str(root / "model"), "--device", "cpu", *opts], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = time.perf_counter()
        subprocess.run([*fsiad, "export", "--model", str(root / "model"), "--out", str(root / "bundle")], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        export_s = time.perf_counter() - t
        rows = {}
        for engine in a.engines.split(","):
            out = root / f"out-{engine}"
            model = root / ("model" if engine == "torch" else "bundle")
            extra = ["--engine", "ray", "--num-actors", engine.split("-")[1]] if engine.startswith("ray") else []
            rows[engine] = run([*fsiad, "predict", "-q", "--model", str(model), "--out", str(out), *extra,
                                str(root / "targets")], out)
            print(json.dumps({"bench": "export", "method": a.method, "engine": engine, "side": a.side, **rows[engine]}),
                  flush=True)
    print(f"\n{a.method}, {a.n} targets of {a.side} px, {os.cpu_count()} CPU cores; export {export_s:.1f} s")
    print(f"{'engine':<12} {'images/s':>9} {'wall s':>7} {'peak RSS MB':>12}")
    for engine, r in rows.items():
        print(f"{engine:<12} {r['images_per_s'] or 0:>9.2f} {r['wall_s']:>7.1f} {r['peak_rss_mb']:>12}")


def _knn_has_geometry() -> bool:
    from fsiad.fewshot.methods.knn import OPTIONS

    return any(o.name == "geometry" for o in OPTIONS)


if __name__ == "__main__":
    main()
