"""Evaluation harness and results files."""

from fsiad.fewshot.evaluation.harness import ALL, EvalConfig, evaluate
from fsiad.fewshot.evaluation.results import METRICS, ResultsStore

__all__ = ["ALL", "METRICS", "EvalConfig", "ResultsStore", "evaluate"]
