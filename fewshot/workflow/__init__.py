"""The inspection workflow behind ``fsiad score`` / ``fit`` / ``predict``.

Public API:
    collect_images, output_names, read_labels_csv, make_samples  (targets.py)
    ThresholdRule, Calibration, calibrate_loo, user_threshold     (thresholds.py)
    fit_references, score_targets, write_outputs, label_metrics   (runner.py)
    save_model, load_model, ModelError                            (model.py)
    load_demo, demo_targets                                       (demo.py)
"""

from fsiad.fewshot.workflow.model import ModelError, load_model, save_model
from fsiad.fewshot.workflow.runner import (
    ScoredImage,
    ScoreRun,
    fit_references,
    label_metrics,
    score_targets,
    write_outputs,
)
from fsiad.fewshot.workflow.targets import collect_images, make_samples, output_names, read_labels_csv
from fsiad.fewshot.workflow.thresholds import Calibration, ThresholdRule, calibrate_loo, user_threshold

__all__ = [
    "Calibration",
    "ModelError",
    "ScoreRun",
    "ScoredImage",
    "ThresholdRule",
    "calibrate_loo",
    "collect_images",
    "fit_references",
    "label_metrics",
    "load_model",
    "make_samples",
    "output_names",
    "read_labels_csv",
    "save_model",
    "score_targets",
    "user_threshold",
    "write_outputs",
]
