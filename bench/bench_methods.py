"""Throughput and peak memory of the visual-memory methods (knn, patchcore, padim, musc).

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_methods [--methods knn,patchcore] [--runs 3]``.
Each method runs in its own subprocess (2 torch threads) so that its peak RSS
(``ru_maxrss``) is its own. Images are synthetic textures at each method's default geometry.
Reported: fit time (K references), predict images/s (median of ``--runs``), peak RSS, and for
``knn`` the share of predict time spent beyond the encoder forward (target <= 25% at K = 4),
measured as median(after-encoder steps on precomputed features) / (that + median(encoder forward)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("knn", "patchcore", "padim", "musc")


def _images(method, n: int, seed: int):
    from fsiad.fewshot.data.synthetic import render_category

    parts = render_category("texture", method.preprocess.size, 0, n, 0, seed)
    return method.preprocess.images([img for img, _ in parts["good"]])


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_one(name: str, n_test: int, n_ref: int, runs: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from fsiad.fewshot.methods import MethodConfig, create_method

    m = create_method(name, MethodConfig(batch_size=8))
    refs = _images(m, n_ref, 1) if name != "musc" else None
    test = _images(m, n_test, 2)
    t = time.perf_counter()
    m.fit(refs)
    fit_s = time.perf_counter() - t
    m.predict(test[:2] if name != "musc" else test[:4])  # warm-up
    pred_s = _median_time(lambda: m.predict(test), runs)
    row = {"method": name, "encoder": m.encoder.name, "size": m.preprocess.size, "n_ref": n_ref if refs is not None else 0,
           "n_test": n_test, "fit_s": round(fit_s, 2), "predict_img_per_s": round(n_test / pred_s, 2)}
    if name == "knn":
        bs = m.config.batch_size
        batches = [test[i : i + bs] for i in range(0, n_test, bs)]
        feats = [m.encoder.patch_features(b, m.layers) for b in batches]
        enc_s = _median_time(lambda: [m.encoder.patch_features(b, m.layers) for b in batches], runs)
        post_s = _median_time(lambda: [m.score_features(f) for f in feats], runs)
        row["encoder_s"] = round(enc_s, 3)
        row["after_encoder_s"] = round(post_s, 3)
        row["beyond_encoder_share"] = round(post_s / (enc_s + post_s), 3)
        row["memory_patches"] = int(m.memory.shape[0])
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--n-ref", type=int, default=0, help="references (0 = 4 for knn, 32 for full-data methods)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        n_ref = a.n_ref or (4 if a.one == "knn" else 32)
        print(json.dumps(run_one(a.one, a.n_test, n_ref, a.runs)))
        return
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    rows = []
    for name in a.methods.split(","):
        cmd = [sys.executable, "-m", "bench.bench_methods", "--one", name, "--n-test", str(a.n_test),
               "--n-ref", str(a.n_ref), "--runs", str(a.runs)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    keys = ["method", "encoder", "size", "n_ref", "n_test", "fit_s", "predict_img_per_s", "peak_rss_mib",
            "beyond_encoder_share"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
