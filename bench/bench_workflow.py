"""End-to-end cost of ``fsiad score`` on the embedded demo, split by phase.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_workflow [--size 120] [--runs 3] [--method knn]``.

Each run is the real command (``python -m cli.main score --demo textile``) in a subprocess
with 2 torch/OpenMP threads, so peak RSS (``ru_maxrss`` of the children) is the command's.
Reported (median over runs): wall time, model load, LOO calibration, final fit, predict
(images/s), outputs (maps, overlays, report: ms per image), and the demo AUROC.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(size: int, method: str, shots: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "fsiad.cli.main", "score", "--shots", str(shots), "--demo", "textile",
           "--demo-size", str(size), "--method", method, "--out", str(out), "-q"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rec = json.loads((out / "run.json").read_text())
    tm = rec["settings"]["timings"]
    return {"wall_s": wall, "load_s": tm["load_s"], "calibrate_s": tm["calibrate_s"], "fit_s": tm["fit_s"],
            "predict_s": rec["predict_s"], "images_per_s": rec["images_per_s"],
            "outputs_ms_per_image": 1000 * rec["outputs_s"] / max(rec["n_scored"], 1),
            "auroc": (rec["metrics"] or {}).get("image_auroc")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=120, help="demo targets")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--method", default="knn")
    ap.add_argument("--shots", type=int, default=4)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            rows.append(run_once(args.size, args.method, args.shots, Path(tmp) / f"run{i}"))
            print(f"run {i}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows[-1].items() if v is not None), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if rows[0][k] is not None}
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nfsiad score --shots {args.shots} --demo textile --demo-size {args.size} --method {args.method}"
          f" (median of {args.runs}, 2 threads, cpu_count={os.cpu_count()}, load avg {os.getloadavg()[0]:.1f})")
    for k, v in med.items():
        print(f"  {k:22s} {v:10.3f}")
    print(f"  {'peak_rss_mib':22s} {peak_mib:10.1f}")


if __name__ == "__main__":
    main()
