"""fsiad 2D core: encoders, methods, data, metrics and evaluation."""

from fsiad.fewshot.result import AnomalyResult

__all__ = ["AnomalyResult"]
