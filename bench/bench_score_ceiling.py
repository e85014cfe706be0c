"""How far can the default ``knn``'s *scores* carry a decision? Image-score variants on cached features.

Issue #13 asks, at the calibrated threshold, for F1 >= 0.9 x F1-max at a false-alarm rate <= 2 x the
target (0.10 at the default 0.05). Where even a labels-known threshold cannot get there (the
"oracle" of ``bench.bench_decisions``), no threshold rule can: the scores must separate better.
This script fits the default ``knn`` (DINOv2-S, native geometry, ``preset=auto``) on the
references ``fsiad score --shots K --seed S`` draws, encodes the test images once with the chosen
patch member, and scores them under variants of the patch and image score:

* ``default``: the image score of the method (mean of the top ``_fraction()`` of the normalised
  nearest-neighbour distance grid);
* ``top X``: a larger share of the grid (texture-wide defects, e.g. magnetic_tile ``uneven``);
* ``k=3``: the mean distance to the 3 nearest memory patches;
* ``density ratio`` / ``density minus``: each distance divided by / minus the local density of
  its nearest memory patch (that patch's mean distance to its 3 nearest patches of the *other*
  references): a local-outlier-factor correction for normal regions the memory samples sparsely
  (PatchCore's reweighting addresses the same).

Per variant: image AUROC, per-defect-type AUROC and the oracle (best F1 / F1-max among
thresholds with FPR <= ``--fpr-cap``). Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_score_ceiling [--normal DIR --test DIR] [--seeds 0,1,2]

Default data: magnetic_tile (``/work/shared/data/magnetic_tile``). Writes
``runs/bench_score_ceiling/<name>.json``; prints one line per seed and variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from fsiad.fewshot.metrics import auroc

from bench.bench_decisions import MAGNETIC, best_f1_within, f1_max

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "bench_score_ceiling"
VARIANTS = ("default", "top x4", "top x12", "top x40", "k=3", "density ratio", "density minus")


def variant_scores(grids: list[dict[str, torch.Tensor]], rho: torch.Tensor, norm: tuple[float, float],
                   fraction: float) -> dict[str, np.ndarray]:
    """Image scores of every variant from per-image ``{"d": [h, w, 3], "idx": [h, w]}`` (3 nearest
    distances, index of the nearest) and the memory's local density ``rho`` ``[M]``."""
    from fsiad.fewshot.ops.pooling import topk_mean

    loc, scale = norm

    def top(maps: list[torch.Tensor], f: float) -> np.ndarray:
        return np.array([float(topk_mean(m[None], f)[0]) for m in maps])

    d1 = [(g["d"][..., 0] - loc) / scale for g in grids]
    out = {"default": top(d1, fraction)}
    for name, factor in (("top x4", 4), ("top x12", 12), ("top x40", 40)):
        out[name] = top(d1, min(1.0, fraction * factor))
    out["k=3"] = top([(g["d"].mean(-1) - loc) / scale for g in grids], fraction)
    out["density ratio"] = top([g["d"][..., 0] / rho[g["idx"]].clamp_min(1e-3) for g in grids], fraction)
    out["density minus"] = top([g["d"][..., 0] - rho[g["idx"]] for g in grids], fraction)
    return out


def run(normal: Path, test: Path, seeds: list[int], shots: int, fpr_cap: float) -> list[dict]:
    from fsiad.fewshot.data.io import read_image
    from fsiad.fewshot.methods.base import MethodConfig, create_method, method_class
    from fsiad.fewshot.methods.knn import augment_one
    from fsiad.fewshot.methods.knn_auto import NativeBatch
    from fsiad.fewshot.ops.knn import knn_search
    from fsiad.fewshot.workflow.references import select_references
    from fsiad.fewshot.workflow.targets import collect_samples, label_from_folders

    samples = [s for s in label_from_folders([test], collect_samples(method_class("knn"), [test]))
               if s.label is not None]
    labels = [s.defect for s in samples]
    y = np.array([int(s.label) for s in samples])
    kinds = sorted(set(labels) - {"good"})
    feats: list[torch.Tensor] | None = None
    rows = []
    for seed in seeds:
        refs = select_references(method_class("knn"), shots, seed, normal=normal)
        m = create_method("knn", MethodConfig(device="cpu"))
        t0 = time.perf_counter()
        m.fit(NativeBatch.from_arrays([read_image(s.path) for s in refs]))
        fit_s = time.perf_counter() - t0
        member = m._map_member()
        if feats is None or member != rows[-1]["member"] or m.work_side != rows[-1]["work_side"]:
            t0, feats = time.perf_counter(), []
            for i in range(0, len(samples), 8):
                b = NativeBatch.from_arrays([read_image(s.path) for s in samples[i:i + 8]])
                work, _ = m._aligned(m._working(list(zip(b.images, b.sizes, strict=True))))
                feats += [f[member] for f in m._encode(work, [member])]
            print(f"encoded {len(feats)} test images in {time.perf_counter() - t0:.0f} s", flush=True)
        # memory with the reference each row came from (views of one reference share it)
        b = NativeBatch.from_arrays([read_image(s.path) for s in refs])
        work, _ = m._aligned(m._working(list(zip(b.images, b.sizes, strict=True))))
        views = [augment_one(x, m.opts["augment"]) for x in work]
        enc = m._encode([v for vs in views for v in vs], [member])
        mem = torch.cat([e[member].reshape(-1, e[member].shape[-1]) for e in enc])
        rid = torch.cat([torch.full((e[member].shape[0] * e[member].shape[1],), i // len(views[0])) for i, e in enumerate(enc)])
        rho = torch.empty(len(mem))
        for i in range(len(refs)):
            d, _ = knn_search(mem[rid == i], mem[rid != i], k=3, metric=m.metric)
            rho[rid == i] = d.mean(1)
        grids = []
        for f in feats:
            h, w, c = f.shape
            d, idx = knn_search(f.reshape(-1, c), mem, k=3, metric=m.metric)
            grids.append({"d": d.reshape(h, w, 3), "idx": idx[:, 0].reshape(h, w)})
        norm = m.norm.get(member, (0.0, 1.0))
        for name, s in variant_scores(grids, rho, norm, m._fraction()).items():
            lab = np.array(labels)
            per = {k: round(auroc(s[(lab == k) | (y == 0)], y[(lab == k) | (y == 0)]), 3) for k in kinds}
            row = {"seed": seed, "variant": name, "auroc": round(auroc(s, y), 3),
                   "oracle": round(best_f1_within(s, y, fpr_cap) / f1_max(s, y), 3), "per_type": per,
                   "member": member, "configuration": m.describe().get("configuration"),
                   "work_side": m.work_side, "fit_s": round(fit_s, 1)}
            rows.append(row)
            print(f"seed {seed} {name:14s} AUROC {row['auroc']:.3f} oracle {row['oracle']:.2f} | "
                  + " ".join(f"{k} {v:.3f}" for k, v in per.items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal", type=Path, default=MAGNETIC / "train" / "good")
    ap.add_argument("--test", type=Path, default=MAGNETIC / "test")
    ap.add_argument("--name", default="magnetic_tile")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--fpr-cap", type=float, default=0.10, help="2 x the default --target-fpr")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with torch.inference_mode():
        rows = run(a.normal, a.test, [int(x) for x in a.seeds.split(",")], a.shots, a.fpr_cap)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{a.name}.json").write_text(json.dumps(rows, indent=1))
    print("variant         " + "  ".join(f"seed {s}" for s in sorted({r["seed"] for r in rows})) + "   (AUROC / oracle)")
    for v in VARIANTS:
        cells = [f"{r['auroc']:.3f}/{r['oracle']:.2f}" for r in rows if r["variant"] == v]
        print(f"{v:14s}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
