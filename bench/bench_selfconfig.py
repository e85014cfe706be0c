"""The ``knn`` default (native geometry + self-configuration from the references) against fixed settings.

Run from the repository root (2 CPU cores; one measurement at a time)::

    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_selfconfig quality --sets magnetic_tile textile wide object
    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_selfconfig speed

``quality`` runs the real ``fsiad eval`` command of each set, once with the default (no ``-o``)
and once per fixed baseline, and prints I-AUROC / P-AUROC / AUPRO and the configuration the
default chose per seed. ``wide`` and ``object`` are synthetic MVTec-layout sets written under
``runs/bench_selfconfig/data`` (``fsiad.fewshot.data.synthetic``): wide 1132 x 460 images
with tiny defects (0.1-0.5 % of the area; 60 good and 60 defective test images: with 20 + 20
one missed scratch moved the I-AUROC by 0.04), a ring on a plain background, a threaded pin
along 720 x 240 images (``elongated``) and the same pin at any angle in 256 px squares
(``screw``; ``--baselines default "align off"`` measures the principal-axis alignment).

``speed`` fits 4 references and scores images of about 300 x 300 and of 1 megapixel, each
setting in its own process under ``/usr/bin/time -v`` (peak RSS), and reports the fit time
with and without self-configuration and predict images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "bench_selfconfig"
DATA = OUT / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
MAGNETIC_ROOT = "/work/shared/data"

SETS = {
    "magnetic_tile": ["--dataset", "mvtec", "--root", MAGNETIC_ROOT, "--categories", "magnetic_tile"],
    "textile": ["--dataset", "textile"],
    "wide": ["--dataset", "mvtec", "--root", str(DATA), "--categories", "wide"],
    "object": ["--dataset", "mvtec", "--root", str(DATA), "--categories", "object"],
    "elongated": ["--dataset", "mvtec", "--root", str(DATA), "--categories", "elongated"],
    "screw": ["--dataset", "mvtec", "--root", str(DATA), "--categories", "screw"],
    "board": ["--dataset", "mvtec", "--root", str(DATA), "--categories", "board"],
}
BASELINES = {
    "default": [],
    "square-mid (former default)": ["-o", "preset=mid", "-o", "geometry=square"],
    "square-last": ["-o", "preset=last", "-o", "geometry=square"],
    "align off": ["-o", "align=off"],
    "augment none": ["-o", "augment=none"],
}


def make_data() -> None:
    from fsiad.fewshot.data.synthetic import make_mvtec_dataset

    if not (DATA / "wide").exists():
        make_mvtec_dataset(DATA, ["wide"], image_size=460, n_train=8, n_test_good=60, n_test_defect=60, seed=3)
    if not (DATA / "object").exists():
        make_mvtec_dataset(DATA, ["object"], image_size=256, n_train=8, n_test_good=20, n_test_defect=20, seed=3)
    if not (DATA / "texture").exists():  # woven texture, local defects (bench_decisions)
        make_mvtec_dataset(DATA, ["texture"], image_size=256, n_train=8, n_test_good=60, n_test_defect=60, seed=3)
    if not (DATA / "elongated").exists():  # a threaded pin along a 720 x 240 image (bench_decisions)
        make_mvtec_dataset(DATA, ["elongated"], image_size=240, n_train=8, n_test_good=60, n_test_defect=60, seed=3)
    if not (DATA / "screw").exists():  # the same pin at any angle in a 256 x 256 image (bench_decisions)
        make_mvtec_dataset(DATA, ["screw"], image_size=256, n_train=8, n_test_good=60, n_test_defect=60, seed=3)
    if not (DATA / "board").exists():  # a coloured board; a pad's hue changes at equal luminance (bench_decisions)
        make_mvtec_dataset(DATA, ["board"], image_size=256, n_train=8, n_test_good=60, n_test_defect=60, seed=3)


def eval_command(name: str, opts: list[str], seeds: str, out: Path) -> list[str]:
    return ["fsiad", "eval", "--method", "knn", *SETS[name], "--shots", "4", "--seeds", seeds, *opts,
            "--out", str(out)]


def quality(sets: list[str], baselines: list[str], seeds: str) -> list[dict]:
    make_data()
    rows = []
    for name in sets:
        for base in baselines:
            out = OUT / f"{name}-{re.sub(r'[^a-z0-9]+', '_', base.lower())}"
            cmd = eval_command(name, BASELINES[base], seeds, out)
            if out.exists():  # a rerun would resume the old results; start afresh
                shutil.rmtree(out)
            t = time.perf_counter()
            subprocess.run([str(ROOT / ".venv" / "bin" / cmd[0]), *cmd[1:]], check=True, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res = json.loads((out / "results.json").read_text())
            m = res["mean"]["4"]
            desc = res["meta"].get("method_description", {})
            row = {"set": name, "setting": base, "command": " ".join(cmd), "seconds": round(time.perf_counter() - t),
                   "iauroc": m["image_auroc"]["mean"], "iauroc_std": m["image_auroc"]["std"],
                   "pauroc": m["pixel_auroc"]["mean"], "aupro": m["pixel_aupro"]["mean"],
                   "chosen": (desc.get("selfconfig") or {}).get("chosen"), "work_side": desc.get("work_side"),
                   "aligned": (desc.get("alignment") or {}).get("active")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -- speed ---------------------------------------------------------------------------------
def speed_worker(size: int, preset: str, n: int) -> dict:
    import numpy as np
    import torch
    from fsiad.fewshot.data.synthetic import render_category
    from fsiad.fewshot.methods import MethodConfig, create_method
    from fsiad.fewshot.methods.knn_auto import NativeBatch

    torch.set_num_threads(2)
    parts = render_category("texture", size, 4, n, 0, 0)
    refs = NativeBatch.from_arrays([i for i, _ in parts["train"]])
    test = NativeBatch.from_arrays([i for i, _ in parts["good"]])
    m = create_method("knn", MethodConfig(device="cpu", options={"preset": preset}))
    t = time.perf_counter()
    m.fit(refs)
    fit_s = time.perf_counter() - t
    m.predict(test[:1])  # warm-up
    t = time.perf_counter()
    r = m.predict(test)
    pred_s = time.perf_counter() - t
    assert np.isfinite(r.image_scores.numpy()).all()
    sc = m.selfconfig or {}
    return {"size": size, "preset": preset, "fit_s": round(fit_s, 2), "selfconfig_s": sc.get("seconds"),
            "chosen": sc.get("chosen"), "work_side": m.work_side, "images_per_s": round(n / pred_s, 2)}


def speed(n: int) -> list[dict]:
    rows = []
    for size in (300, 1000):
        for preset in ("mid", "auto"):
            tf = OUT / f"time-{size}-{preset}.txt"
            OUT.mkdir(parents=True, exist_ok=True)
            cmd = ["/usr/bin/time", "-v", "-o", str(tf), sys.executable, "-m", "bench.bench_selfconfig", "worker",
                   "--size", str(size), "--preset", preset, "--n", str(n)]
            p = subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True, cwd=ROOT)
            row = json.loads(p.stdout.strip().splitlines()[-1])
            rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tf.read_text())
            row["peak_rss_gib"] = round(int(rss.group(1)) / 2**20, 2) if rss else None
            row["command"] = " ".join(cmd[4:])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    q.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    q.add_argument("--seeds", default="0,1,2")
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=8)
    w = sub.add_parser("worker")
    w.add_argument("--size", type=int, required=True)
    w.add_argument("--preset", required=True)
    w.add_argument("--n", type=int, default=8)
    a = ap.parse_args()
    if a.what == "quality":
        rows = quality(a.sets, a.baselines, a.seeds)
    elif a.what == "speed":
        rows = speed(a.n)
    else:
        print(json.dumps(speed_worker(a.size, a.preset, a.n)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{a.what}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
