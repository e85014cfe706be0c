"""Anomaly detection methods.

Methods are found by name through the catalogue (``fsiad.fewshot.registry``): ``method_class``
imports only the module that defines the method. Importing this package loads nothing heavy;
the names below come from ``fsiad.fewshot.methods.base`` (torch) on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AnomalyMethod",
    "MethodConfig",
    "Option",
    "create_method",
    "iter_batches",
    "method_class",
    "method_names",
    "register_method",
]


def __getattr__(name: str) -> Any:
    if name == "Option":
        from fsiad.fewshot.methods.options import Option

        return Option
    if name in __all__:
        from fsiad.fewshot.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'fsiad.fewshot.methods' has no attribute {name!r}")
