"""``fsiad export``: a fitted model folder -> a bundle that runs with onnxruntime + numpy only.

What goes where (see ``bundle.py`` for the layout):

* the encoder forward and the method's feature plumbing (layer fusion, local aggregation,
  per-layer L2 normalisation, PaDiM's channel subset) are traced into ``features.onnx`` with
  ``torch.onnx.export`` at the model's fixed input side (dynamic batch axis);
* the fitted state becomes ``.npy`` arrays (no pickle);
* scoring (kNN distances, PatchCore's reweighting, Mahalanobis, bilinear upsampling, Gaussian
  blur, image score) runs in numpy in ``runner.py`` / ``scoring.py``.

Supported: ``knn``, ``patchcore``, ``padim`` and their subclasses; anything else is refused with
one line (``OptionError``) naming why.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.export.bundle import BUNDLE_FILE, FORMAT, GRAPH_FILE, sha256_file
from fsiad.fewshot.fileio import atomic_write_json, check_out_not_input
from torch import nn

DEFAULT_OPSET = 17


class _Features(nn.Module):
    """``[N, 3, S, S]`` in [0, 1] -> the features the method scores (traced into ONNX)."""

    def __init__(self, method: Any, kind: str) -> None:
        super().__init__()
        self.method, self.kind = method, kind
        self.encoder = method.encoder

    def forward(self, images: torch.Tensor) -> Any:
        if self.kind == "knn":  # one output per memory member (one forward for all their layers)
            members = knn_members(self.method)
            layers: list[Any] = []
            for _, (lay, *_rest) in members.items():
                layers += [x for x in lay if x not in layers]
            feats = [f.float() for f in self.encoder._patch_features(images, layers)]
            return tuple(self.method._fuse([feats[layers.index(x)] for x in lay]) for lay, *_ in members.values())
        from fsiad.fewshot.ops.features import fuse_layers

        feats = [f.float() for f in self.encoder._patch_features(images, self.method.layers)]
        if self.kind == "patchcore":
            return fuse_layers(feats, r=int(self.method.opts["patch_size"]))
        f = fuse_layers(feats)  # padim: the fitted channel subset
        self.grid = [int(f.shape[1]), int(f.shape[2])]
        return f[..., self.method.channels].reshape(f.shape[0], -1, int(self.method.channels.numel()))


def knn_members(method: Any) -> dict[str, tuple[list[Any], torch.Tensor, float, float, float]]:
    """knn's memories: name -> (layers, memory, weight, loc, scale); grid = sum weight * (d - loc) / scale.

    A knn fitted with one fixed memory (``memory``, ``layers``) is one member of weight 1;
    self-configured knn models (``members`` / ``memories`` / ``weights`` / ``norm``) give one
    member per active memory.
    """
    memories = getattr(method, "memories", None)
    if not memories:
        return {"default": (list(method.layers), method.memory, 1.0, 0.0, 1.0)}
    norm = getattr(method, "norm", {}) or {}
    return {n: (list(method.members[n]), memories[n], float(w), *map(float, norm.get(n, (0.0, 1.0))))
            for n, w in method.weights.items()}


def method_kind(method: Any) -> str:
    """``knn`` / ``patchcore`` / ``padim`` for exportable methods, else ``OptionError`` (one line)."""
    from fsiad.fewshot.methods.knn import PatchKNN
    from fsiad.fewshot.methods.padim import PaDiM
    from fsiad.fewshot.methods.patchcore import PatchCore

    hooks = ("predict", "_predict_batch", "score_features", "features", "_fuse", "prepare", "preprocess")
    for cls, kind in ((PatchKNN, "knn"), (PatchCore, "patchcore"), (PaDiM, "padim")):
        if isinstance(method, cls):
            changed = [h for h in hooks if getattr(type(method), h, None) is not getattr(cls, h, None)]
            if changed:  # a variant whose inference is not the parent's fixed graph
                raise OptionError(f"fsiad export: method {method.name!r} changes {kind}'s inference "
                                  f"({', '.join(changed)}); only the fixed {kind} graph can be exported")
            if getattr(method, "native", False):
                raise OptionError(f"fsiad export: {method.name} with geometry=native keeps each image's aspect "
                                  "ratio (no fixed input geometry); refit with -o geometry=square to export it")
            return kind
    raise OptionError(f"fsiad export: method {method.name!r} cannot be exported (only knn, patchcore and padim "
                      "run as a fixed encoder graph plus arrays; prompt-based, transductive and 3D methods do not)")


def _arrays(method: Any, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """State arrays and the scoring settings of ``method``."""
    opts = method.opts
    if kind == "padim":
        chol = method.stats.chol.double()
        eye = torch.eye(chol.shape[-1], dtype=torch.float64).expand_as(chol)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        return ({"mean": method.stats.mean.float().numpy(), "chol_inv": chol_inv.float().numpy()},
                {"sigma": float(opts["sigma"])})
    if kind == "knn":
        metric, arrays, members = method.metric, {}, []
        for i, (name, (layers, memory, weight, loc, scale)) in enumerate(knn_members(method).items()):
            memory = memory.detach().float()
            if metric == "cosine":
                memory = torch.nn.functional.normalize(memory, dim=1)
            arrays[f"memory_{i}"] = memory.numpy()
            members.append({"name": name, "output": i, "memory": f"memory_{i}", "layers": [str(x) for x in layers],
                            "weight": weight, "loc": loc, "scale": scale})
        settings = {"metric": metric, "k": int(opts["k"]), "top_fraction": float(opts["top_fraction"]),
                    "sigma": float(opts["sigma"]), "members": members}
        if getattr(method, "global_memory", None) is not None:  # the image-level term (knn_auto.global_adjust)
            arrays["global_memory"] = method.global_memory.detach().float().numpy()
            names = [m["name"] for m in members]
            unit, mean, clip = method.global_norm
            settings["global"] = {"output": names.index(method._map_member()), "memory": "global_memory",
                                  "unit": float(unit), "mean": float(mean), "clip": bool(clip)}
        return arrays, settings
    return ({"memory": method.memory.detach().float().numpy()},
            {"metric": "l2", "reweight_b": int(opts["reweight_b"]), "sigma": float(opts["sigma"])})


def _self_check(folder: Path, bundle: dict[str, Any], method: Any, images: torch.Tensor) -> dict[str, Any]:
    """Score ``images`` with the torch method and with the bundle in ``folder``; the bundle must agree.

    knn models that combine several memories may take their map from one member's normalised
    grid rather than the weighted sum: the rule that reproduces the torch maps is recorded
    (``scoring.map``). Raises ``OptionError`` when no rule agrees within 1e-4 (relative above 1).
    """
    from fsiad.fewshot.export.runner import BundleModel

    with torch.no_grad():
        want = method.predict(images)
    ws, wm = want.image_scores.float().numpy(), want.anomaly_maps.float().numpy()
    rules = ["sum"] + ([m["name"] for m in bundle["scoring"]["members"]] if bundle["kind"] == "knn" else [])
    if len(rules) == 2:
        rules = ["sum"]  # one member: its grid is the sum
    worst = None
    for rule in rules:
        bundle["scoring"]["map"] = rule
        runner = BundleModel(folder, bundle, _session(folder / GRAPH_FILE), {
            k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in bundle["arrays"]})
        scores, maps = runner.score_tensors(images.numpy())
        ds = float(np.max(np.abs(scores - ws) / np.maximum(1.0, np.abs(ws))))
        dm = float(np.abs(maps - wm).max() / max(1.0, float(np.abs(wm).max())))
        if ds <= 1e-4 and dm <= 1e-4:
            return {"images": int(images.shape[0]), "input": "uniform noise", "max_score_diff": ds,
                    "max_map_diff": dm, "map_rule": rule, "tolerance": "1e-4 (relative above 1)"}
        worst = (ds, dm)
    raise OptionError(f"fsiad export: the exported graph does not reproduce {method.name} (score difference "
                      f"{worst[0]:.2g}, map difference {worst[1]:.2g} relative); the method's inference changed "
                      "beyond what the exporter knows")


def _session(path: Path) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_model(model_dir: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
                 overwrite: bool = False, log: Any = None) -> dict[str, Any]:
    """Export the model folder ``model_dir`` to the bundle folder ``out``; returns ``bundle.json``'s content.

    The folder is written under a temporary name next to ``out`` and renamed at the end, so a
    failed export leaves no half bundle.

    Raises:
        ModelError: the model folder is invalid. OptionError: method not exportable, ``out``
            exists (without ``overwrite``) or overlaps the model folder.
    """
    from fsiad.fewshot.workflow.model import load_model

    import fsiad

    log = log or (lambda _line: None)
    model_dir, out = Path(model_dir), Path(out)
    check_out_not_input(out, [model_dir], "--out")
    if out.exists() and not overwrite:
        raise OptionError(f"--out {out}: already exists; pass --overwrite to replace it, or choose another folder")
    t0 = time.perf_counter()
    method, meta = load_model(model_dir, device="cpu", precision="fp32")
    kind = method_kind(method)
    pre = method.preprocess
    arrays, scoring = _arrays(method, kind)
    graph = _Features(method, kind).eval()
    dummy = torch.rand(2, 3, pre.size, pre.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = graph(dummy)
    outputs = list(expected) if isinstance(expected, tuple) else [expected]
    out_names = ["features"] if len(outputs) == 1 and kind != "knn" else [f"features_{i}" for i in range(len(outputs))]
    if kind == "padim":
        scoring["grid"] = graph.grid
    buf = io.BytesIO()
    log(f"exporting {method.name} ({kind}) features to ONNX (opset {opset}, input {pre.size}x{pre.size}) ...")
    with torch.no_grad():
        torch.onnx.export(graph, (dummy,), buf, input_names=["images"], output_names=out_names,
                          dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in out_names}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    enc = method.encoder
    bundle = {
        "format": FORMAT,
        "method": method.name,
        "kind": kind,
        "versions": {"fsiad": fsiad.__version__, "torch": torch.__version__, "onnx_opset": opset},
        "graph": {"file": GRAPH_FILE, "opset": opset, "input": "images", "outputs": out_names,
                  "input_shape": ["batch", 3, pre.size, pre.size],
                  "output_shapes": [["batch", *o.shape[1:]] for o in outputs],
                  "input_range": "float32 RGB in [0, 1], normalised inside the graph"},
        "preprocess": {"size": pre.size, "resize": pre.resize, "interpolation": pre.interpolation,
                       "antialias": True, "crop": "centre", "mean": [float(v) for v in enc.mean.flatten()],
                       "std": [float(v) for v in enc.std.flatten()], "normalisation": "inside the graph"},
        "scoring": {**scoring, "map_size": pre.size},
        "encoder": {"name": enc.name, "weights_checksum": enc.weights.checksum, "layers": [str(x) for x in method.layers]},
        "threshold": meta.get("threshold"),
        "chunk_size": meta.get("chunk_size"),
        "source_model": {"path": str(model_dir.resolve()), "model_json_sha256": sha256_file(model_dir / "model.json")},
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)
    try:
        (tmp / GRAPH_FILE).write_bytes(buf.getvalue())
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        bundle["arrays"] = {name: f"{name}.npy" for name in arrays}
        bundle["check"] = _self_check(tmp, bundle, method, dummy)
        bundle["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        bundle["export_s"] = round(time.perf_counter() - t0, 3)
        atomic_write_json(tmp / BUNDLE_FILE, bundle)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle
