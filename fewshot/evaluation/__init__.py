"""Evaluation harness and results files."""

from fewshot.evaluation.harness import ALL, EvalConfig, evaluate
from fewshot.evaluation.results import METRICS, ResultsStore

__all__ = ["ALL", "METRICS", "EvalConfig", "ResultsStore", "evaluate"]
