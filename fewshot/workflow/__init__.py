"""The inspection workflow behind ``fsiad score`` / ``fit`` / ``predict``.

Public API (imported lazily, so ``fsiad.fewshot.workflow.render`` costs no method import):
    InspectionSession, FittedModel, Results, Prediction, resolve_targets  (session.py)
    OutputFolder, OutputExistsError, check_output                       (outputs.py: the OUT contract)
    select_references, check_shots, min_references                      (references.py)
    collect_images, collect_samples, output_names, read_labels_csv, make_samples  (targets.py)
    ThresholdRule, Calibration, calibrate_loo, user_threshold           (thresholds.py)
    fit_references, score_chunks, label_metrics                         (runner.py)
    save_model, load_model, ModelError                                  (model.py)
    load_demo, demo_targets                                             (demo.py)
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys(("InspectionSession", "FittedModel", "Results", "Prediction", "resolve_targets"), "session"),
    **dict.fromkeys(("OutputFolder", "OutputExistsError", "check_output"), "outputs"),
    **dict.fromkeys(("select_references", "check_shots", "min_references"), "references"),
    **dict.fromkeys(("collect_images", "collect_samples", "output_names", "read_labels_csv", "make_samples"),
                    "targets"),
    **dict.fromkeys(("ThresholdRule", "Calibration", "calibrate_loo", "user_threshold"), "thresholds"),
    **dict.fromkeys(("ScoredImage", "fit_references", "score_chunks", "label_metrics"), "runner"),
    **dict.fromkeys(("save_model", "load_model", "ModelError"), "model"),
    **dict.fromkeys(("load_demo", "demo_targets"), "demo"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
