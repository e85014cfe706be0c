"""Anomaly detection methods. Every module in this package registers its methods on import."""

import importlib
import pkgutil

from fsiad.fewshot.methods.base import (
    AnomalyMethod,
    MethodConfig,
    create_method,
    iter_batches,
    method_class,
    method_names,
    register_method,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "AnomalyMethod",
    "MethodConfig",
    "create_method",
    "iter_batches",
    "method_class",
    "method_names",
    "register_method",
]
