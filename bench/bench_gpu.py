"""Device benchmark: images/s and peak device memory of knn, patchcore, winclip and btf at several
batch sizes, and the CPU/device ratio. Run by ``bench/gpu_check.sh`` on a GPU machine.

Usage::

    python -m bench.bench_gpu [--device cuda] [--batches 1,32] [--methods knn,patchcore,winclip,btf]
                              [--cpu-images 2] [--json OUT.json]

Random-init weights (``allow_random``; timing does not depend on weight values) and random or
synthetic inputs, fp32 unless ``--precision`` says otherwise. Per method and batch size: one
warm-up ``predict`` then the median of ``--repeats`` timed calls on ``batch`` images
(``torch.cuda.synchronize`` around each), peak ``torch.cuda.max_memory_allocated``; on the CPU
the same method at batch 1 over ``--cpu-images`` images (with every CPU thread) for the ratio.
btf's FPFH runs on the CPU (open3d) whatever the device: its row shows the whole prediction.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _make(name: str, device: str, batch: int, precision: str):
    """(predict function of a method fitted on references, make_inputs(n) -> its argument)."""
    import fsiad.pointcloud  # noqa: F401  (registers btf)
    from fsiad.fewshot.methods import MethodConfig, create_method

    cfg = MethodConfig(device=device, precision=precision, allow_random=True, batch_size=batch, class_name="bottle")
    g = torch.Generator().manual_seed(0)
    if name == "btf":
        from fsiad.fewshot.data import load_dataset
        from fsiad.pointcloud.synthetic import generate_mvtec3d

        tmp = tempfile.mkdtemp(prefix="fsiad-gpu-btf-")
        generate_mvtec3d(tmp, categories=("dome",), n_train=4, n_validation=0, n_test_good=32, n_test_defect=0,
                         size=256, seed=1)
        cat = load_dataset("mvtec3d", tmp)[0]
        m = create_method("btf", cfg)
        m.fit(m.prepare(cat.train))
        test = list(cat.test)

        def predict(samples):
            from fsiad.pointcloud.methods import _FPFH_MEMO

            _FPFH_MEMO.clear()  # whole prediction: loading and FPFH included
            return m.predict(m.prepare(samples))

        return predict, lambda n: (test * (n // len(test) + 1))[:n]
    if name == "winclip":
        m = create_method("winclip", cfg)
        m.fit()
    else:
        m = create_method(name, cfg)
        side = m.preprocess.size
        refs = torch.rand(16 if name == "patchcore" else 4, 3, side, side, generator=g)
        m.fit(refs)
    side = m.preprocess.size
    return m.predict, (lambda n: torch.rand(n, 3, side, side, generator=g))


def _time(predict, inputs, n: int, device: str, repeats: int) -> float:
    """Median seconds of ``predict`` on ``n`` images (btf: loading and FPFH included)."""
    x = inputs(n)
    predict(x)
    _sync(device)
    ts = []
    for _ in range(repeats):
        x = inputs(n)
        t0 = time.perf_counter()
        predict(x)
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--methods", default="knn,patchcore,winclip,btf")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-images", type=int, default=2, help="images for the CPU reference (0 = skip)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    print(f"# device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else 'cpu'}), "
          f"precision {a.precision}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print("| method | batch | images/s | s/batch | peak device MiB | CPU images/s (batch 1) | device/CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in a.methods.split(","):
        cpu_ips = None
        if a.cpu_images > 0:
            predict, inputs = _make(name, "cpu", 1, "fp32")
            cpu_ips = a.cpu_images / _time(predict, inputs, a.cpu_images, "cpu", 1)
            del predict
        for b in (int(x) for x in a.batches.split(",")):
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
            predict, inputs = _make(name, a.device, b, a.precision)
            if a.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sec = _time(predict, inputs, b, a.device, a.repeats)
            peak = torch.cuda.max_memory_allocated() / 2**20 if a.device.startswith("cuda") else float("nan")
            ips = b / sec
            ratio = ips / cpu_ips if cpu_ips else float("nan")
            row = {"method": name, "batch": b, "images_per_s": ips, "s_per_batch": sec, "peak_device_mib": peak,
                   "cpu_images_per_s": cpu_ips, "device_over_cpu": ratio, "device": a.device,
                   "precision": a.precision}
            rows.append(row)
            print(f"| {name} | {b} | {ips:.2f} | {sec:.3f} | {peak:.0f} | "
                  f"{cpu_ips if cpu_ips is not None else float('nan'):.2f} | {ratio:.1f} |", flush=True)
            del predict
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
