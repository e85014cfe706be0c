"""Point-cloud branch benchmark: speed/memory at 224x224 and method comparison on synthetic data.

Usage::

    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_pointcloud time     [--size 224 --runs 5]
    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_pointcloud compare  [--size 96 --shots 4]
    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_pointcloud voxel    [--size 224 --shots 4]

``time``: FPFH time per sample (open3d, BTF parameters) and full BTF time per sample
(load + FPFH + encoder + kNN scoring against a 4-shot memory bank), medians over ``--runs``,
2 threads; peak RSS (``ru_maxrss``) and peak Python-heap allocation (tracemalloc) of one
BTF predict. ``compare``: image AUROC (all / geometric-only / colour-only defects),
pixel AUROC and AUPRO of ``btf`` (both fusion normalisations), ``fpfh``, ``rgb`` and ``depth``
on a synthetic MVTec 3D-AD-format set (``btf`` with ``fusion_norm=none`` is BTF's raw
concatenation; plain ``btf`` is fsiad's default, see ``pointcloud.methods``).
``voxel``: the accuracy check of the voxel-downsampled FPFH (``fpfh_max_points``, default 8000)
against full resolution (``fpfh_max_points=0``) for ``fpfh`` and ``btf`` on the same synthetic
set rendered at ``max(256, size)`` (so a 224 working side has ~49k distinct points), with the
FPFH seconds per sample of each setting.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
import tracemalloc

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _setup(threads: int) -> None:
    torch.set_num_threads(threads)
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)


def bench_time(size: int, runs: int, encoder: str | None, threads: int, max_points: int = 8000) -> None:
    import fsiad.pointcloud  # noqa: F401
    from fsiad.fewshot.data import load_dataset
    from fsiad.fewshot.methods import MethodConfig, create_method
    from fsiad.pointcloud.features import FPFHParams, fpfh_organized, resize_organized
    from fsiad.pointcloud.io import read_xyz_tiff
    from fsiad.pointcloud.methods import _FPFH_MEMO
    from fsiad.pointcloud.synthetic import generate_mvtec3d

    _setup(threads)
    with tempfile.TemporaryDirectory() as tmp:
        # source frames larger than the working side, as in MVTec 3D-AD (800 px -> 224)
        generate_mvtec3d(tmp, n_train=4, n_validation=0, n_test_good=runs, n_test_defect=0, size=max(256, size), seed=1)
        cat = load_dataset("mvtec3d", tmp)[0]
        xyz = [resize_organized(read_xyz_tiff(s.extra["xyz"]), size) for s in cat.test]
        n_pts = [int((x[..., 2] != 0).sum()) for x in xyz]
        t_fpfh: dict[int, list[float]] = {0: [], max_points: []}
        for x in xyz:  # interleaved: full, voxel, full, voxel, ...
            for mp in t_fpfh:
                t0 = time.perf_counter()
                fpfh_organized(x, FPFHParams(max_points=mp))
                t_fpfh[mp].append(time.perf_counter() - t0)
        methods = {mp: create_method("btf", MethodConfig(encoder=encoder, image_size=size,
                                                         options={"fpfh_max_points": mp})) for mp in (0, max_points)}
        for m in methods.values():
            m.fit(m.prepare(cat.train))
        t_btf: dict[int, list[float]] = {mp: [] for mp in methods}
        for s in cat.test:
            for mp, m in methods.items():
                _FPFH_MEMO.clear()
                t0 = time.perf_counter()
                m.predict(m.prepare([s]))
                t_btf[mp].append(time.perf_counter() - t0)
        method = methods[max_points]
        _FPFH_MEMO.clear()
        tracemalloc.start()
        method.predict(method.prepare(cat.test[:1]))
        _, peak_heap = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"size {size}x{size}, {threads} threads, {runs} runs, median valid points {int(np.median(n_pts))}, "
          f"encoder {method.config.encoder}")
    print("| measure | median s/sample | samples/s |")
    print("|---|---:|---:|")
    for mp in (0, max_points):
        tag = "full resolution" if mp == 0 else f"voxel, max_points={mp}"
        for name, ts in ((f"FPFH (normals + FPFH, open3d), {tag}", t_fpfh[mp]),
                         (f"BTF predict (load + FPFH + 2D + kNN), {tag}", t_btf[mp])):
            med = statistics.median(ts)
            print(f"| {name} | {med:.3f} | {1 / med:.2f} |")
    print(f"peak RSS {rss:.0f} MiB (whole process); peak Python-heap during one BTF predict {peak_heap / 2**20:.1f} MiB; "
          f"memory banks { {k: tuple(v.shape) for k, v in method.banks.items()} }")


def bench_compare(size: int, shots: int, seeds: list[int], n_test: int, encoder: str | None, threads: int) -> None:
    import fsiad.pointcloud  # noqa: F401
    from fsiad.fewshot.data import load_dataset, sample_shots
    from fsiad.fewshot.methods import MethodConfig, create_method
    from fsiad.fewshot.metrics import image_metrics, pixel_metrics
    from fsiad.pointcloud.synthetic import COLOR_DEFECTS, GEOMETRIC_DEFECTS, generate_mvtec3d

    _setup(threads)
    variants = [("btf", {"fusion_norm": "none"}), ("btf", {"fusion_norm": "std"}), ("btf", {}),
                ("btf", {"fusion": "scores"}), ("fpfh", {}), ("rgb", {}), ("depth", {})]
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate_mvtec3d(tmp, categories=("dome", "torus"), n_train=12, n_validation=0, n_test_good=n_test,
                         n_test_defect=max(1, n_test // 2), size=128, seed=7)
        for cat in load_dataset("mvtec3d", tmp):
            labels = np.array([s.label for s in cat.test])
            geo = np.array([s.defect in GEOMETRIC_DEFECTS or s.label == 0 for s in cat.test])
            col = np.array([s.defect in COLOR_DEFECTS or s.label == 0 for s in cat.test])
            for name, opts in variants:
                method = create_method(name, MethodConfig(encoder=encoder, image_size=size, options=dict(opts)))
                test = method.prepare(cat.test)
                masks = method.preprocess.masks([np.asarray(_mask(s)) for s in cat.test])
                for seed in seeds:
                    torch.manual_seed(seed)
                    method.fit(method.prepare(sample_shots(cat.train, shots, seed)))
                    r = method.predict(test)
                    sc = r.image_scores.numpy()
                    px = pixel_metrics(r.anomaly_maps.numpy(), masks.numpy())
                    key = name + ("" if not opts else f" ({', '.join(f'{k}={v}' for k, v in opts.items())})")
                    rows.setdefault(key, []).append({
                        "I-AUROC": image_metrics(sc, labels)["image_auroc"],
                        "I-AUROC geometric": image_metrics(sc[geo], labels[geo])["image_auroc"],
                        "I-AUROC colour": image_metrics(sc[col], labels[col])["image_auroc"],
                        "P-AUROC": px["pixel_auroc"], "AUPRO": px["pixel_aupro"]})
    cols = ["I-AUROC", "I-AUROC geometric", "I-AUROC colour", "P-AUROC", "AUPRO"]
    print(f"synthetic MVTec 3D-AD format: 2 categories (dome, torus), {shots}-shot, seeds {seeds}, "
          f"working side {size}, test per category: {n_test} good + {max(1, n_test // 2)} x "
          f"{len(GEOMETRIC_DEFECTS + COLOR_DEFECTS)} defects; mean over categories and seeds (%)")
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for key, vals in rows.items():
        print(f"| {key} | " + " | ".join(f"{100 * np.mean([v[c] for v in vals]):.1f}" for c in cols) + " |")


def bench_voxel(size: int, shots: int, seeds: list[int], n_test: int, encoder: str | None, threads: int,
                max_points: list[int]) -> None:
    import fsiad.pointcloud  # noqa: F401
    from fsiad.fewshot.data import load_dataset, sample_shots
    from fsiad.fewshot.methods import MethodConfig, create_method
    from fsiad.fewshot.metrics import image_metrics, pixel_metrics
    from fsiad.pointcloud.methods import _FPFH_MEMO
    from fsiad.pointcloud.synthetic import DEFECTS, generate_mvtec3d

    _setup(threads)
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    secs: dict[int, list[float]] = {mp: [] for mp in max_points}
    with tempfile.TemporaryDirectory() as tmp:
        generate_mvtec3d(tmp, categories=("dome", "torus"), n_train=12, n_validation=0, n_test_good=n_test,
                         n_test_defect=max(1, n_test // 2), size=max(256, size), seed=7)
        for cat in load_dataset("mvtec3d", tmp):
            labels = np.array([s.label for s in cat.test])
            for mp in max_points:
                for name in ("fpfh", "btf"):
                    method = create_method(name, MethodConfig(encoder=encoder, image_size=size,
                                                              options={"fpfh_max_points": mp}))
                    n0 = len(_FPFH_MEMO)
                    t0 = time.perf_counter()
                    test = method.prepare(cat.test)
                    if len(_FPFH_MEMO) > n0:  # FPFH computed here (not memoised by the other method)
                        secs[mp].append((time.perf_counter() - t0) / len(cat.test))
                    masks = method.preprocess.masks([np.asarray(_mask(s)) for s in cat.test])
                    for seed in seeds:
                        torch.manual_seed(seed)
                        method.fit(method.prepare(sample_shots(cat.train, shots, seed)))
                        r = method.predict(test)
                        px = pixel_metrics(r.anomaly_maps.numpy(), masks.numpy())
                        rows.setdefault((name, mp), []).append({
                            "I-AUROC": image_metrics(r.image_scores.numpy(), labels)["image_auroc"],
                            "P-AUROC": px["pixel_auroc"], "AUPRO": px["pixel_aupro"]})
    cols = ["I-AUROC", "P-AUROC", "AUPRO"]
    print(f"synthetic MVTec 3D-AD format rendered at {max(256, size)} px: 2 categories (dome, torus), {shots}-shot, "
          f"seeds {seeds}, working side {size}, test per category: {n_test} good + {max(1, n_test // 2)} x "
          f"{len(DEFECTS)} defects; mean over categories and seeds (%); {threads} threads")
    print("| method | fpfh_max_points | " + " | ".join(cols) + " | FPFH s/sample (prepare) |")
    print("|---|---:|" + "---:|" * (len(cols) + 1))
    for (name, mp), vals in rows.items():
        print(f"| {name} | {mp} | " + " | ".join(f"{100 * np.mean([v[c] for v in vals]):.1f}" for c in cols)
              + f" | {statistics.median(secs[mp]):.3f} |")


def _mask(sample):
    from fsiad.fewshot.data import read_mask

    return read_mask(sample.mask_path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["time", "compare", "voxel"])
    p.add_argument("--max-points", default="8000", help="fpfh_max_points values (voxel: 0 is always added)")
    p.add_argument("--size", type=int, default=None, help="working side (time: 224, compare: 96)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--n-test", type=int, default=6, help="good test samples per category (compare)")
    p.add_argument("--encoder", default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.mode == "time":
        bench_time(a.size or 224, a.runs, a.encoder, a.threads, int(a.max_points.split(",")[0]))
    elif a.mode == "voxel":
        mps = [0] + [int(m) for m in a.max_points.split(",") if int(m) != 0]
        bench_voxel(a.size or 224, a.shots, [int(s) for s in a.seeds.split(",")], a.n_test, a.encoder, a.threads, mps)
    else:
        bench_compare(a.size or 96, a.shots, [int(s) for s in a.seeds.split(",")], a.n_test, a.encoder, a.threads)


if __name__ == "__main__":
    main()
