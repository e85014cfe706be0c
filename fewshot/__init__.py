"""fsiad 2D core: encoders, methods, data, metrics and evaluation.

Imports are lazy: ``import fsiad.fewshot`` (and light modules such as ``fsiad.fewshot.errors``
and ``fsiad.fewshot.fileio``) load no torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnomalyResult"]


def __getattr__(name: str) -> Any:
    if name == "AnomalyResult":
        from fsiad.fewshot.result import AnomalyResult

        return AnomalyResult
    raise AttributeError(f"module 'fsiad.fewshot' has no attribute {name!r}")
