"""Benchmark of the pixel/image metrics on a full-category-sized input.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 python -m bench.metrics [--n 1000] [--side 256] [--runs 3]

Reports maps/s (median of runs), the peak extra memory traced during one call
(tracemalloc: numpy buffers) and the process peak RSS, and the same for a plain
sort-everything reference (sklearn ``roc_auc_score``) on a subset for scale.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import tracemalloc

import numpy as np
from scipy import ndimage


def make_inputs(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half of the images carry 1-3 blob defects; maps = smooth noise + signal (float32)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, side, side), bool)
    yy, xx = np.mgrid[0:side, 0:side]
    for i in range(0, n, 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, side, 2).tolist() + [int(rng.integers(side // 40, side // 10))]
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = rng.random((n, side, side), dtype=np.float32)
    maps = ndimage.uniform_filter(maps, size=(1, 5, 5)).astype(np.float32)
    maps += 0.3 * masks * rng.random(masks.shape, dtype=np.float32)
    return maps, masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from fsiad.fewshot.metrics import image_metrics, pixel_metrics

    maps, masks = make_inputs(args.n, args.side)
    print(
        f"input: {args.n} maps {args.side}x{args.side} float32 = {maps.nbytes / 2**20:.0f} MiB, "
        f"{masks.mean() * 100:.1f}% anomalous pixels, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        res = pixel_metrics(maps, masks)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tracemalloc.start()
    pixel_metrics(maps, masks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"pixel_metrics: median {med:.2f} s ({args.n / med:.0f} maps/s), runs {[round(x, 2) for x in times]}, "
        f"peak traced extra {peak / 2**20:.0f} MiB, process max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print("  " + ", ".join(f"{k}={v:.4f}" for k, v in res.items()))
    t = time.perf_counter()
    image_metrics(maps.reshape(args.n, -1).max(1), masks.reshape(args.n, -1).any(1))
    print(f"image_metrics: {time.perf_counter() - t:.4f} s")

    from sklearn.metrics import roc_auc_score

    sub = max(1, args.n // 10)
    tracemalloc.start()
    t = time.perf_counter()
    ref = roc_auc_score(masks[:sub].ravel(), maps[:sub].ravel())
    dt = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mine = pixel_metrics(maps[:sub], masks[:sub])["pixel_auroc"]
    print(
        f"reference sklearn roc_auc_score on {sub} maps: {dt:.2f} s ({sub / dt:.0f} maps/s), "
        f"peak traced {peak / 2**20:.0f} MiB (input {maps[:sub].nbytes / 2**20:.0f} MiB); |diff| {abs(ref - mine):.2e}"
    )


if __name__ == "__main__":
    main()
