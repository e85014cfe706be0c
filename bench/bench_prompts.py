"""``fsiad prompts compare`` of 3 prompt files against 3 separate ``fsiad eval`` runs.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_prompts [--n-test 12] [--shots 0] [--arch tiny]``.

Same images (a synthetic MVTec-layout category, small PNGs resized to the CLIP input), same
random-init CLIP model (``--arch tiny``: 2-block 64-wide tower with WinCLIP's 240 px / 15x15
geometry; or any open_clip architecture, e.g. ``ViT-B-16-plus-240``), same 3 prompt files
(the packaged default, anomalib's list with its repeated template, a short custom one). The
text embeddings are computed once before timing (they are cached on disk for both paths).
Timed: ``compare_prompts`` (one encoding, one scoring per file) and ``evaluate`` once per file
(each builds its method and encodes the images). Prints one JSON line; the target is a ratio
under 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ANOMALIB = """normal_states: ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
  "{} without defect", "{} without damage"]
anomalous_states: ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
templates: ["a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
  "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
  "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
  "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
  "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
  "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
  "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection."]
"""
CUSTOM = """normal_states: ["{}", "clean {}"]
anomalous_states: ["{} with a scratch", "bent {}", "{} with a crack"]
templates: ["a photo of the {}.", "a close-up photo of a {}."]
"""


def make_category(root: Path, n_test: int, side: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    cat = root / "widget"

    def save(path: Path, arr: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)

    for i in range(max(4, n_test // 2)):
        save(cat / "train" / "good" / f"{i:03d}.png", (rng.random((side, side, 3)) * 80 + 90).astype(np.uint8))
    for i in range(n_test):
        img = (rng.random((side, side, 3)) * 80 + 90).astype(np.uint8)
        if i % 2:
            mask = np.zeros((side, side), np.uint8)
            y, x = rng.integers(0, side * 3 // 4, 2)
            img[y : y + side // 4, x : x + side // 4] = 250
            mask[y : y + side // 4, x : x + side // 4] = 255
            save(cat / "test" / "defect" / f"{i:03d}.png", img)
            save(cat / "ground_truth" / "defect" / f"{i:03d}_mask.png", mask)
        else:
            save(cat / "test" / "good" / f"{i:03d}.png", img)
    return cat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--side", type=int, default=64, help="side of the PNGs on disk")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--arch", default="tiny", help="'tiny' or an open_clip architecture (random init)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ["FSIAD_HOME"] = str(tmp / "home")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import open_clip
        from fsiad.fewshot.evaluation.harness import EvalConfig, evaluate
        from fsiad.fewshot.evaluation.prompts import CompareConfig, compare_prompts
        from fsiad.fewshot.methods.base import MethodConfig
        from fsiad.fewshot.methods.winclip import WinCLIP, text_prototypes
        from fsiad.prompts import default_prompts_path, load_prompts

        arch = args.arch
        if arch == "tiny":
            arch = "fsiad-bench-tiny-clip"
            (tmp / f"{arch}.json").write_text(json.dumps(TINY))
            open_clip.add_model_config(tmp / f"{arch}.json")
        cat = make_category(tmp / "data", args.n_test, args.side)
        (tmp / "anomalib.yaml").write_text(ANOMALIB)
        (tmp / "custom.yaml").write_text(CUSTOM)
        files = [default_prompts_path(), tmp / "anomalib.yaml", tmp / "custom.yaml"]

        def mc(**kw) -> MethodConfig:
            return MethodConfig(encoder=f"clip:{arch}", allow_random=True, device="cpu", precision="fp32", **kw)

        warm = WinCLIP(mc(class_name="widget"))  # text embeddings into the disk cache, for both paths
        for f in files:
            text_prototypes(warm.encoder, load_prompts(f).expand("widget"))
        del warm

        t = time.perf_counter()
        evals = []
        for i, f in enumerate(files):
            evaluate(EvalConfig(method="winclip", dataset="mvtec", root=cat, out=tmp / f"eval{i}",
                                shots=[args.shots], method_config=mc(prompts=str(f))))
            evals.append(json.loads((tmp / f"eval{i}" / "results.json").read_text()))
        eval_s = time.perf_counter() - t

        t = time.perf_counter()
        res = compare_prompts(CompareConfig(files, [cat], tmp / "cmp", shots=args.shots, method_config=mc()))
        compare_s = time.perf_counter() - t

        def auroc(summary: dict) -> float:
            return float(summary["categories"]["widget"]["shots"][str(args.shots)]["image_auroc"]["mean"])

        same = all(abs(auroc(e) - r["image_auroc"]) < 1e-6 for e, r in zip(evals, res.rows, strict=True))
        print(json.dumps({
            "bench": "prompts_compare", "arch": args.arch, "files": len(files), "n_test": args.n_test,
            "shots": args.shots, "threads": args.threads, "eval_3x_s": round(eval_s, 2),
            "compare_s": round(compare_s, 2), "encode_once_s": res.meta["encode_s"],
            "score_per_file_s": [r["score_s"] for r in res.rows], "ratio": round(compare_s / eval_s, 3),
            "same_image_auroc": same,
        }), flush=True)


if __name__ == "__main__":
    main()
