"""Evaluation harness and results files."""

from fsiad.fewshot.evaluation.harness import ALL, DEFAULT_SHOTS, EvalConfig, default_shots, evaluate
from fsiad.fewshot.evaluation.results import METRICS, ResultsStore, ResumeError

__all__ = ["ALL", "DEFAULT_SHOTS", "METRICS", "EvalConfig", "ResultsStore", "ResumeError", "default_shots",
           "evaluate"]
