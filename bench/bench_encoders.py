"""Patch-feature extraction speed and peak memory of each encoder at its default size.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_encoders [--runs 5] [--batches 1 8]
[--threads 2] [--encoders NAME ...] [--random NAME ...]``

By default every encoder whose weights are available here (``fsiad models``) is measured
with its default layers and default input size. ``--random NAME`` adds encoders with random
weights (speed does not depend on weight values). Each encoder runs in its own subprocess
so that peak RSS (``ru_maxrss``, includes the Python/torch/open_clip imports) is per encoder:
"after load" is read once the model is built, "peak" after the warm-up of each batch size
(ascending). Timing: one warm-up pass per batch size, then ``--runs`` rounds timed
round-robin over the batch sizes; images/s = batch / median seconds per batch.
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


def run_one(name: str, batches: list[int], runs: int, threads: int, random_init: bool) -> list[dict]:
    """Measure one encoder in this process for several batch sizes; returns one row per batch.

    Batches are warmed up in ascending order (peak RSS read after each warm-up, so it is the
    peak up to and including that batch size), then timed interleaved (round-robin over the
    batch sizes, ``runs`` rounds) so that load drift on a shared machine hits all alike.
    """
    import torch

    torch.set_num_threads(threads)
    from fsiad.fewshot.encoders import create_encoder

    enc = create_encoder(name, allow_random=random_init)
    size = enc.preprocess.size
    gen = torch.Generator().manual_seed(0)
    batches = sorted(batches)
    xs = {b: torch.rand(b, 3, size, size, generator=gen) for b in batches}
    rss_model = _rss_mib()
    shapes, rss_peak = {}, {}
    for b in batches:  # warm-up
        shapes[b] = [list(f.shape[1:]) for f in enc.patch_features(xs[b])]
        rss_peak[b] = _rss_mib()
    times: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(runs):
        for b in batches:
            t0 = time.perf_counter()
            enc.patch_features(xs[b])
            times[b].append(time.perf_counter() - t0)
    rows = []
    for b in batches:
        med = statistics.median(times[b])
        rows.append({"encoder": name, "weights": enc.weights.source, "size": size, "batch": b,
                     "layers": [str(layer) for layer in enc.default_layers], "shapes": shapes[b],
                     "median_s": med, "images_per_s": b / med, "rss_model_mib": rss_model,
                     "rss_peak_mib": rss_peak[b], "threads": threads, "runs": runs})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="*", default=None, help="default: every available encoder")
    ap.add_argument("--random", nargs="*", default=[], help="extra encoders to time with random weights")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.batches, args.runs, args.threads, args.random_init)))
        return

    from fsiad.fewshot.encoders import encoder_names, encoder_status

    names = args.encoders or [n for n in encoder_names() if encoder_status(n)["available"]]
    jobs = [(n, False) for n in names] + [(n, True) for n in args.random]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    rows = []
    for name, rnd in jobs:
        cmd = [sys.executable, "-m", "bench.bench_encoders", "--one", name, "--runs", str(args.runs),
               "--threads", str(args.threads), "--batches", *map(str, args.batches)]
        out = subprocess.run(cmd + (["--random-init"] if rnd else []), env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.extend(json.loads(out.stdout.strip().splitlines()[-1]))
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
