"""Decisions at the calibrated threshold (no ``--threshold``): recall, false alarms, F1 against F1-max.

Run from the repository root (2 CPU cores; one at a time)::

    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_decisions [--sets demo magnetic_tile object] [--seeds 0,1,2] [--shots 4]

Each row is the real ``fsiad score --shots 4`` command (``--shots K`` for other counts; default method and threshold rule,
no ``-o``) on one set and seed; recall and the false-alarm rate are read from the run's
``scores.csv`` decisions against the labels (folder names), F1-max over every threshold of the
same scores. ``object`` is the synthetic MVTec-layout set of ``bench.bench_selfconfig``.

Two oracle columns say what ANY threshold on the same scores could reach (labels known):
``best F1 at FPR <= 2 x target`` (the best F1÷F1-max among thresholds whose false-alarm rate
meets the bound) and ``min FPR for 0.9 F1-max`` (the fewest false alarms at which F1 reaches
0.9 x F1-max). When the first is below 0.9, no threshold rule can meet both goals on that run.
``--reuse`` re-reads the outputs of an earlier run of this script instead of scoring again.

``--labelled F`` (with ``--reuse``) asks what labelling helps: in each of 50 seeded splits a
stratified share F of the run's labelled images stands in for the parts a user labels, the
threshold those labels support at the run's target (``metrics.from_labels.at_fpr``, computed by
``fsiad.fewshot.metrics.operating_points``) is applied to the other images, and the medians of
their recall, false-alarm rate and F1 / F1-max are printed with the share of splits meeting both
goals.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "bench_decisions"
FSIAD = str(ROOT / ".venv" / "bin" / "fsiad")
MAGNETIC = Path("/work/shared/data/magnetic_tile")
SYNTH = ROOT / "runs" / "bench_selfconfig" / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def command(name: str, seed: int, out: Path, shots: int = 4, options: tuple[str, ...] = ()) -> list[str]:
    base = [FSIAD, "score", "--shots", str(shots), "--seed", str(seed), "--out", str(out), "-q", "--overwrite",
            *[a for o in options for a in ("-o", o)]]
    if name == "demo":
        return [*base, "--demo", "textile"]
    if name == "magnetic_tile":
        return [*base, "--normal", str(MAGNETIC / "train" / "good"), str(MAGNETIC / "test")]
    folder = SYNTH / name
    return [*base, "--normal", str(folder / "train" / "good"), str(folder / "test")]




def _sweep(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, F1) of ``score >= t`` for every distinct score ``t`` (labels 0/1)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct score (ties flagged together)
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return fp / max(int((labels == 0).sum()), 1), 2 * tp / (tp + fp + y.sum())


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over every threshold of the scores."""
    return float(_sweep(scores, labels)[1].max())


def best_f1_within(scores: np.ndarray, labels: np.ndarray, fpr_cap: float) -> float:
    """Best F1 among thresholds whose false-alarm rate is <= ``fpr_cap`` (0 if none flags anything)."""
    fpr, f1 = _sweep(scores, labels)
    ok = fpr <= fpr_cap + 1e-12
    return float(f1[ok].max()) if ok.any() else 0.0


def min_fpr_for(scores: np.ndarray, labels: np.ndarray, share: float = 0.9) -> float:
    """Smallest false-alarm rate of a threshold whose F1 is >= ``share`` x F1-max."""
    fpr, f1 = _sweep(scores, labels)
    return float(fpr[f1 >= share * f1.max() - 1e-12].min())


def run_dir(name: str, seed: int, shots: int = 4, options: tuple[str, ...] = ()) -> Path:
    """``runs/bench_decisions/<set><seed>[_shots<K>][_<option>...]``."""
    tail = "".join("_" + re.sub(r"[^A-Za-z0-9]+", "-", o) for o in options)
    return OUT / (f"{name}{seed}" + ("" if shots == 4 else f"_shots{shots}") + tail)


def measure(name: str, seed: int, reuse: bool = False, shots: int = 4, options: tuple[str, ...] = ()) -> dict:
    out = run_dir(name, seed, shots, options)
    t = time.perf_counter()
    if not (reuse and (out / "run.json").is_file()):
        subprocess.run(command(name, seed, out, shots, options), check=True, env=ENV, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rows = [r for r in csv.DictReader((out / "scores.csv").open()) if r["label"] in ("0", "1")]
    s = np.array([float(r["score"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    flag = np.array([r["decision"] == "anomalous" for r in rows])
    tp, fp = int((flag & (y == 1)).sum()), int((flag & (y == 0)).sum())
    recall, fpr = tp / max(int(y.sum()), 1), fp / max(int((y == 0).sum()), 1)
    f1 = 2 * tp / max(2 * tp + fp + int(y.sum()) - tp, 1)
    rec = json.loads((out / "run.json").read_text())
    th = rec["threshold"]
    fit = th.get("fit") or {}
    target = float(th.get("target_fpr") or 0.01)
    best = f1_max(s, y)
    return {"set": name, "seed": seed, "threshold": th["threshold"], "set_by": fit.get("bound", th.get("rule")),
            "expected_fpr": th.get("expected_fpr"), "target_fpr": target, "recall": recall, "fpr": fpr, "f1": f1,
            "f1_max": best, "oracle_f1_ratio_within_2x": best_f1_within(s, y, 2 * target) / max(best, 1e-9),
            "oracle_min_fpr_for_0.9": min_fpr_for(s, y, 0.9), "auroc": (rec.get("metrics") or {}).get("image_auroc"),
            "flagged": f"{rec['n_flagged']} of {rec['n_scored']}",
            "configuration": rec["method"].get("configuration"), "wall_s": round(wall, 1),
            "command": " ".join(command(name, seed, Path(f"runs/{out.name}"), shots, options)).replace(str(ROOT) + "/", "")}


def labelled_split(name: str, seed: int, share: float, shots: int = 4, splits: int = 50) -> dict:
    """Held-out decisions of the threshold chosen on a stratified ``share`` of a run's labelled images."""
    from fsiad.fewshot.metrics import operating_points

    out = run_dir(name, seed, shots)
    rows = [r for r in csv.DictReader((out / "scores.csv").open()) if r["label"] in ("0", "1")]
    s = np.array([float(r["score"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    target = float(json.loads((out / "run.json").read_text())["threshold"].get("target_fpr") or 0.05)
    rng = np.random.default_rng(0)
    got = []
    for _ in range(splits):
        chosen = np.zeros(len(s), bool)
        for c in (0, 1):
            idx = np.flatnonzero(y == c)
            chosen[rng.choice(idx, max(2, round(share * len(idx))), replace=False)] = True
        at = operating_points(s[chosen], y[chosen], target)["at_fpr"]
        rest_s, rest_y = s[~chosen], y[~chosen]
        flag = rest_s >= (at["threshold"] if at else np.inf)
        tp, fp = int((flag & (rest_y == 1)).sum()), int((flag & (rest_y == 0)).sum())
        f1 = 2 * tp / max(tp + fp + int(rest_y.sum()), 1)
        got.append((tp / rest_y.sum(), fp / (rest_y == 0).sum(), f1 / f1_max(rest_s, rest_y)))
    g = np.array(got)
    return {"set": name, "seed": seed, "share": share, "n_normal_labelled": round(share * int((y == 0).sum())),
            "recall": float(np.median(g[:, 0])), "fpr": float(np.median(g[:, 1])),
            "fpr_p90": float(np.quantile(g[:, 1], 0.9)), "f1_ratio": float(np.median(g[:, 2])),
            "goals_met": float(((g[:, 2] >= 0.9) & (g[:, 1] <= 2 * target)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["demo", "magnetic_tile", "object"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--shots", type=int, default=4, help="references per run (outputs of shots != 4 go to <set><seed>_shots<K>)")
    ap.add_argument("--reuse", action="store_true", help="re-read existing outputs instead of scoring again")
    ap.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                    help="method option passed to fsiad score (repeatable; outputs go to <set><seed>_<option>)")
    ap.add_argument("--labelled", type=float, default=None, metavar="F",
                    help="with --reuse: held-out decisions of the threshold chosen on a share F of the labelled images")
    args = ap.parse_args()
    if args.labelled is not None:
        for name in args.sets:
            for seed in (int(x) for x in args.seeds.split(",")):
                r = labelled_split(name, seed, args.labelled, args.shots)
                print(f"{name:14s} {seed:4d}  labels on {r['share']:.0%} ({r['n_normal_labelled']} normals): held-out "
                      f"recall {r['recall']:.2f}  FPR {r['fpr']:.3f} (p90 {r['fpr_p90']:.3f})  F1/F1max "
                      f"{r['f1_ratio']:.2f}  goals met in {r['goals_met']:.0%} of splits", flush=True)
        return
    if any(not (SYNTH / n).exists() for n in args.sets if n in ("object", "wide", "texture", "elongated", "screw", "board")):
        from bench.bench_selfconfig import make_data

        make_data()
    results = []
    for name in args.sets:
        for seed in (int(x) for x in args.seeds.split(",")):
            r = measure(name, seed, args.reuse, args.shots, tuple(args.option))
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"{'set':14s} seed  recall   FPR   F1/F1max  AUROC  set_by   | oracle: F1/F1max at FPR<=2xtarget, "
          "min FPR for 0.9 F1max | configuration")
    for r in results:
        print(f"{r['set']:14s} {r['seed']:4d}  {r['recall']:.2f}  {r['fpr']:.3f}  {r['f1'] / max(r['f1_max'], 1e-9):.2f}"
              f"      {r['auroc'] or float('nan'):.3f}  {r['set_by']:8s} | {r['oracle_f1_ratio_within_2x']:.2f}  "
              f"{r['oracle_min_fpr_for_0.9']:.3f} | {r['configuration']}")


if __name__ == "__main__":
    main()
