"""The bundle runner: score images with an exported bundle using onnxruntime, numpy and PIL only.

This is what runs on a line PC without torch (``fsiad predict --model BUNDLE``)::

    from fsiad.fewshot.export.runner import BundleModel

    model = BundleModel.load("bundles/parts")          # checksums verified first
    scores, maps = model.score_arrays([rgb_uint8])     # [N], [N, S, S] float32
    summary = model.predict(["incoming/"], out="runs/line")

``predict`` writes the same per-image outputs as ``fsiad predict`` with a model folder
(``scores.csv``, ``maps/<name>.npy``, ``overlays/<name>.png``, ``errors.csv``, ``run.json``;
lock, incremental rows, resume) through ``folder.LightOutput``; it writes no ``report.html``.
Nothing here imports torch (``tests/test_export.py`` checks ``sys.modules``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.export import scoring
from fsiad.fewshot.export.bundle import BundleError, read_bundle, sha256_file
from fsiad.fewshot.export.folder import LightOutput, Row, write_overlay

DEFAULT_BATCH = 8
READ_ERRORS = (OSError, ValueError)


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise OptionError("running a bundle needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu)") from None
    return onnxruntime


class BundleModel:
    """An exported model: ONNX feature graph + numpy scoring."""

    def __init__(self, directory: Path, meta: dict[str, Any], session: Any, arrays: dict[str, np.ndarray],
                 batch_size: int = DEFAULT_BATCH) -> None:
        self.directory, self.meta, self.session, self.arrays = directory, meta, session, arrays
        self.batch_size = batch_size
        self.kind = meta["kind"]
        self.pre = meta["preprocess"]
        self.sc = meta["scoring"]
        thr = meta.get("threshold") or {}
        self.threshold: float | None = thr.get("threshold") if isinstance(thr, dict) else None
        self.memory_sq = {name: (m * m).sum(1) for name, m in arrays.items()
                          if name.startswith("memory") and self.sc.get("metric", "l2") == "l2"}

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None, batch_size: int | None = None,
             threads: int | None = None) -> BundleModel:
        """Read and verify a bundle; ``device`` ``cpu`` (default) or ``cuda`` (onnxruntime-gpu)."""
        ort = _ort()
        directory = Path(directory)
        meta = read_bundle(directory)
        if meta.get("kind") not in ("knn", "patchcore", "padim"):
            raise BundleError(f"{directory / 'bundle.json'}: unknown kind {meta.get('kind')!r}; export the model again")
        arrays = {}
        for name, file in (meta.get("arrays") or {}).items():
            try:
                arrays[name] = np.load(directory / file, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise BundleError(f"{directory / file}: unreadable array ({e}); export the model again") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if device and device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise OptionError(f"--device {device}: onnxruntime here has no CUDA provider "
                                  "(pip install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", *providers]
        elif device not in (None, "cpu", "auto"):
            raise OptionError(f"--device {device}: a bundle runs on cpu or cuda")
        session = ort.InferenceSession(str(directory / meta["graph"]["file"]), opts, providers=providers)
        return cls(directory, meta, session, arrays, batch_size or DEFAULT_BATCH)

    # -- compute ------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``HxWx3`` -> float32 ``[3, S, S]`` in [0, 1] (the model's resize + centre crop)."""
        p = self.pre
        return scoring.resize_crop(image, int(p["size"]), p.get("resize"), p["interpolation"])

    def features(self, batch: np.ndarray) -> list[np.ndarray]:
        """``[N, 3, S, S]`` -> the graph's outputs (each ``[N, ...]``), ``batch_size`` images per run."""
        runs = [self.session.run(None, {self.meta["graph"]["input"]: batch[i : i + self.batch_size]})
                for i in range(0, batch.shape[0], self.batch_size)]
        return [np.concatenate([r[j] for r in runs]) for j in range(len(runs[0]))]

    def score_tensors(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed ``[N, 3, S, S]`` -> ``(scores [N], maps [N, S, S])``."""
        outs = self.features(np.ascontiguousarray(batch, dtype=np.float32))
        sc, size = self.sc, int(self.sc["map_size"])
        if self.kind == "padim":
            h, w = sc["grid"]
            grid = scoring.mahalanobis(outs[0], self.arrays["mean"], self.arrays["chol_inv"]).reshape(-1, h, w)
            maps = scoring.upsample_blur(grid, size, float(sc["sigma"]))
            return maps.reshape(maps.shape[0], -1).max(1), maps
        if self.kind == "knn":
            grid, z = None, {}
            for m in sc["members"]:
                f = outs[int(m["output"])]
                n, h, w, c = f.shape
                mem = m["memory"]
                d, _ = scoring.knn_distances(f.reshape(-1, c), self.arrays[mem], int(sc["k"]), sc["metric"],
                                             self.memory_sq.get(mem))
                z[m["name"]] = (d.mean(1).reshape(n, h, w) - float(m["loc"])) / float(m["scale"])
                g = float(m["weight"]) * z[m["name"]]
                grid = g if grid is None else grid + g
            scores = scoring.topk_mean(grid, float(sc["top_fraction"]))
            if sc.get("global"):
                scores = scores + self.global_term(outs[int(sc["global"]["output"])])
            map_grid = z[sc["map"]] if sc.get("map", "sum") != "sum" else grid
            return scores, scoring.upsample_blur(map_grid, size, float(sc["sigma"]))
        else:
            f = outs[0]
            n, h, w, c = f.shape
            memory, msq = self.arrays["memory"], self.memory_sq["memory"]
            d, i = scoring.knn_distances(f.reshape(-1, c), memory, 1, "l2", msq)
            grid = d[:, 0].reshape(n, h, w)
            scores = scoring.patchcore_scores(f.reshape(n, h * w, c), grid.reshape(n, -1), i[:, 0].reshape(n, -1),
                                              memory, msq, int(sc["reweight_b"]))
        return scores, scoring.upsample_blur(grid, size, float(sc["sigma"]))

    def global_term(self, feats: np.ndarray) -> np.ndarray:
        """knn's image-level term: each image's mean feature against the references' (nearest,
        Euclidean), as ``unit * max(distance / mean - 1, 0)`` (without ``clip``: not clipped)."""
        g = self.sc["global"]
        n, c = feats.shape[0], feats.shape[-1]
        vec = feats.reshape(n, -1, c).astype(np.float64).mean(1)
        mem = self.arrays[g["memory"]].astype(np.float64)
        d2 = (vec * vec).sum(1)[:, None] - 2 * vec @ mem.T + (mem * mem).sum(1)[None]
        d = np.sqrt(np.maximum(d2, 0.0)).min(1)
        r = d / max(float(g["mean"]), 1e-12) - 1.0
        if g.get("clip", False):
            r = np.maximum(r, 0.0)
        return (float(g["unit"]) * r).astype(np.float32)

    def score_arrays(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images (any sizes) -> ``(scores [N], maps [N, S, S])``."""
        if not images:
            s = int(self.sc["map_size"])
            return np.zeros(0, np.float32), np.zeros((0, s, s), np.float32)
        return self.score_tensors(np.stack([self.preprocess(im) for im in images]))

    def identity(self) -> dict[str, Any]:
        """Resume fingerprint: the bundle (its ``bundle.json`` checksum) and the threshold."""
        return {"engine": "onnxruntime", "bundle": sha256_file(self.directory / "bundle.json"),
                "threshold": self.threshold}

    # -- workflow -----------------------------------------------------------------------------
    def predict(self, targets: Sequence[str | Path], out: str | Path, *, labels: str | Path | None = None,
                chunk_size: int | None = None, overwrite: bool = False, progress: bool = False,
                log: Any = None) -> dict[str, Any]:
        """Score image files / folders into the output folder ``out``; returns ``run.json``'s content."""
        from fsiad.fewshot.data.io import read_image
        from fsiad.fewshot.fileio import check_out_not_input
        from fsiad.fewshot.workflow.targets import collect_images, output_names, read_labels_csv

        log = log or (lambda _line: None)
        t0 = time.perf_counter()
        if not targets:
            raise OptionError("no TARGET given: pass image files or folders to score")
        check_out_not_input(out, [*targets, labels, self.directory])
        label_of = read_labels_csv(labels) if labels else {}
        paths = collect_images(targets)
        if not paths:
            from fsiad.fewshot.data.base import DatasetError

            raise DatasetError(f"no images found in {', '.join(map(str, targets))}")
        names = output_names(paths)
        chunk = chunk_size or int(self.meta.get("chunk_size") or 32)
        rows: dict[str, Row] = {}
        errors: list[tuple[str, str]] = []
        with LightOutput(out, "fsiad predict (bundle)", self.threshold) as folder:
            reused = folder.start(self.identity(), [(str(p), n) for p, n in zip(paths, names, strict=True)], overwrite)
            rows.update(reused)
            if reused:
                log(f"resuming: {len(reused)} target(s) already scored in {out} with the same bundle")
            todo = [(p, n) for p, n in zip(paths, names, strict=True) if n not in reused]
            t_pred = time.perf_counter()
            for s in range(0, len(todo), chunk):
                part, imgs = [], []
                for p, n in todo[s : s + chunk]:
                    try:
                        imgs.append(read_image(p))
                        part.append((p, n))
                    except READ_ERRORS as e:
                        errors.append((str(p), str(e).removeprefix(f"{p}: ")))
                scores, maps = self.score_arrays(imgs)
                new = []
                for (p, n), score, amap in zip(part, scores, maps, strict=True):
                    folder.write_map(n, amap)
                    new.append(Row(str(p), n, float(score), label_of.get(p.resolve())))
                folder.append(new)
                rows.update((r.name, r) for r in new)
                if progress:
                    print(f"scoring: {len(rows)}/{len(paths)}", file=sys.stderr, flush=True)
            predict_s = time.perf_counter() - t_pred
            ordered = [rows[n] for n in names if n in rows]
            self.write_overlays(folder, ordered)
            n_new = len(ordered) - len(reused)
            record = {"settings": {"command": "predict", "engine": "onnxruntime", "bundle": str(self.directory),
                                   "targets": [str(t) for t in targets], "n_targets": len(paths), "chunk_size": chunk,
                                   "labels": str(labels) if labels else None},
                      "method": {"method": self.meta["method"], "kind": self.kind, "encoder": self.meta.get("encoder")},
                      "threshold": self.meta.get("threshold"), "resumed": len(reused), "n_rescored": n_new,
                      "predict_s": round(predict_s, 3),
                      "images_per_s": round(n_new / predict_s, 3) if n_new and predict_s > 0 else None,
                      "wall_s": round(time.perf_counter() - t0, 3)}
            return folder.finish(ordered, errors, record)

    def write_overlays(self, folder: LightOutput, rows: Sequence[Row]) -> None:
        """``overlays/<name>.png``: colour scale min..max over this run's maps (as the torch workflow)."""
        from fsiad.fewshot.data.io import read_image

        lo, hi = math.inf, -math.inf
        for r in rows:
            m = np.load(folder.map_path(r.name), allow_pickle=False)
            lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
        (folder.path / "overlays").mkdir(exist_ok=True)
        for r in rows:
            try:
                base = (self.preprocess(read_image(r.path)).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
            except READ_ERRORS:
                continue
            write_overlay(folder.path / "overlays" / f"{r.name}.png", base,
                          np.load(folder.map_path(r.name), allow_pickle=False), lo, hi)


def default_threads() -> int | None:
    """``FSIAD_ORT_THREADS`` (intra-op threads of onnxruntime), else onnxruntime's default."""
    raw = os.environ.get("FSIAD_ORT_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None
