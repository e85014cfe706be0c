"""The public Python API: ``fsiad.fit``, ``fsiad.load``, ``fsiad.evaluate``.

A thin layer over the inspection session (``fsiad.fewshot.workflow.session``) and the
evaluation harness (``fsiad.fewshot.evaluation``), which the command line uses too: the
Python API and ``fsiad score`` / ``fit`` / ``predict`` / ``eval`` give the same numbers.

Example::

    import fsiad

    model = fsiad.fit("parts/good", shots=4)          # K=4 normal references, method knn
    results = model.predict("parts/incoming")         # a folder, a file, or a list of paths
    for r in results:
        print(r.path, r.score, r.decision, r.anomaly_map.shape)
    model.save("models/parts")
    model = fsiad.load("models/parts")

Errors are ``fsiad.FsiadError`` subclasses with one-line messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PathLike = str | Path


def _config(encoder: str | None, device: str, image_size: int | None, options: dict[str, Any] | None,
            **extra: Any):
    from fsiad.fewshot.methods.base import MethodConfig

    return MethodConfig(encoder=encoder, device=device, image_size=image_size, options=dict(options or {}), **extra)


def fit(normal: PathLike | None = None, shots: int = 4, method: str = "knn", *, seed: int = 0,
        threshold: float | None = None, threshold_rule: str | None = None, target_fpr: float | None = None,
        encoder: str | None = None,
        device: str = "auto", image_size: int | None = None, options: dict[str, Any] | None = None,
        demo: str | None = None, **config: Any):
    """Fit ``method`` on ``shots`` normal images drawn (seeded) from the folder ``normal``.

    Args:
        normal: folder of normal images (searched recursively); ``None`` with ``demo``.
        shots: K references (0 for zero-shot methods). method: see ``fsiad methods``.
        seed: seed of the reference draw. threshold: a fixed decision threshold, else
            calibrated on the references: ``threshold_rule`` (default ``tail``: a robust tail fit
            of the references' leave-one-out scores at ``target_fpr``, odd references left out;
            or ``max`` / ``mean+<k>std``), ``target_fpr`` (default 0.05).
        encoder, device, image_size: encoder settings (``device="auto"``: CUDA, MPS, CPU).
        options: method options (``fsiad methods NAME`` lists them), e.g. ``{"layers": [11]}``.
        demo: ``"textile"`` to draw references from the embedded demo set instead.
        config: other ``MethodConfig`` fields (``weights``, ``precision``, ``batch_size``,
            ``class_name``, ``prompts``).

    Returns:
        A fitted model (``FittedModel``): ``predict(targets)``, ``save(dir)``, ``threshold``.
    """
    from fsiad.fewshot.workflow.session import InspectionSession

    rule = {k: v for k, v in {"threshold_rule": threshold_rule, "target_fpr": target_fpr}.items() if v is not None}
    session = InspectionSession(method, _config(encoder, device, image_size, options, **config), shots=shots,
                                seed=seed, threshold=threshold, **rule)
    return session.fit(normal, demo=demo)


def load(directory: PathLike, *, device: str | None = None, threshold: float | None = None,
         weights: PathLike | None = None):
    """Load a model folder written by ``model.save`` or ``fsiad fit`` (checksums verified).

    ``device`` (default: the machine's best, see ``fit``), ``threshold`` and ``weights`` (an
    encoder weight file that moved) override what the folder recorded.
    """
    from fsiad.fewshot.workflow.session import FittedModel

    return FittedModel.load(directory, threshold=threshold, device=device or "auto",
                            weights=str(weights) if weights is not None else None)


def evaluate(method: str, dataset: str, root: PathLike | None = None, *, shots: Sequence[int | str] | None = None,
             seeds: Sequence[int] = (0,), categories: Sequence[str] | None = None, out: PathLike = "runs/eval",
             encoder: str | None = None, device: str = "auto", image_size: int | None = None,
             options: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    """Benchmark ``method`` on ``dataset`` over categories x shots x seeds, as ``fsiad eval``.

    ``shots=None`` uses the method's regime default (``all`` for full-data methods, ``1,2,4,8``
    for few-shot ones, ``0`` for zero-shot ones). Results go to ``out`` (``results.csv``,
    ``results.md``, ``results.json``; a rerun resumes); returns ``results.json``'s content.
    """
    from fsiad.fewshot.evaluation import EvalConfig
    from fsiad.fewshot.evaluation import evaluate as run

    cfg = EvalConfig(method=method, dataset=dataset, root=Path(root) if root is not None else None, out=Path(out),
                     categories=list(categories) if categories else None,
                     shots=list(shots) if shots is not None else None, seeds=list(seeds),
                     method_config=_config(encoder, device, image_size, options, **config))
    return run(cfg, progress=lambda _line: None)
