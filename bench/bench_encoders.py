"""Patch-feature extraction speed and peak memory of each encoder at its default size.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_encoders [--runs 5] [--batches 1 8]
[--threads 2] [--encoders NAME ...] [--random NAME ...]``

By default every encoder whose weights are available here (``fsiad models``) is measured
with its default layers and default input size. ``--random NAME`` adds encoders with random
weights (speed does not depend on weight values). Each (encoder, batch) runs in its own
subprocess so that peak RSS (``ru_maxrss``) is per configuration: ``rss_model`` after loading,
``rss_peak`` after the timed runs (the difference is the forward's working memory). Timing:
one warm-up pass, then the median wall time of ``--runs`` passes; images/s = batch / median.
Prints a markdown table.
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


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(name: str, batch: int, runs: int, threads: int, random_init: bool) -> dict:
    """Measure one configuration in this process; returns a result row."""
    import torch

    torch.set_num_threads(threads)
    from fewshot.encoders import create_encoder

    enc = create_encoder(name, allow_random=random_init)
    size = enc.preprocess.size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rss_model = _rss_mib()
    feats = enc.patch_features(x)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        enc.patch_features(x)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"encoder": name, "weights": enc.weights.source, "size": size, "batch": batch,
            "layers": [str(layer) for layer in enc.default_layers],
            "shapes": [list(f.shape[1:]) for f in feats], "median_s": med, "images_per_s": batch / med,
            "rss_model_mib": rss_model, "rss_peak_mib": _rss_mib(), "threads": threads, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="*", default=None, help="default: every available encoder")
    ap.add_argument("--random", nargs="*", default=[], help="extra encoders to time with random weights")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("NAME", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = run_one(args.one[0], int(args.one[1]), args.runs, args.threads, args.random_init)
        print(json.dumps(row))
        return

    from fewshot.encoders import encoder_names, encoder_status

    names = args.encoders or [n for n in encoder_names() if encoder_status(n)["available"]]
    jobs = [(n, False) for n in names] + [(n, True) for n in args.random]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    rows = []
    for name, rnd in jobs:
        for b in args.batches:
            cmd = [sys.executable, "-m", "bench.bench_encoders", "--one", name, str(b), "--runs", str(args.runs),
                   "--threads", str(args.threads)] + (["--random-init"] if rnd else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name} batch {b}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"threads={args.threads}, runs={args.runs} (median), OMP_WAIT_POLICY=PASSIVE, fp32, CPU\n")
    print("| encoder | weights | input | layers -> feature shapes | batch | images/s | median s/batch "
          "| RSS after load (MiB) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shapes = ", ".join(f"{layer}:{'x'.join(map(str, s))}" for layer, s in zip(r["layers"], r["shapes"], strict=True))
        print(f"| {r['encoder']} | {r['weights']} | {r['size']} | {shapes} | {r['batch']} | {r['images_per_s']:.2f} "
              f"| {r['median_s']:.3f} | {r['rss_model_mib']:.0f} | {r['rss_peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
