"""fsiad 2D core: encoders, methods, data, metrics and evaluation."""

from fewshot.result import AnomalyResult

__all__ = ["AnomalyResult"]
__version__ = "0.1.0"
