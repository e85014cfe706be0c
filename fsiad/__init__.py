"""fsiad: zero-shot and few-shot industrial image anomaly detection, with an RGB-D branch.

The repository's folders install under this one name: ``fsiad.fewshot`` (2D core),
``fsiad.pointcloud`` (3D branch), ``fsiad.prompts`` (prompt data files) and ``fsiad.cli``.

Public API (imported lazily: ``import fsiad`` loads no torch)::

    model = fsiad.fit("parts/good", shots=4)      # -> FittedModel
    results = model.predict("parts/incoming")     # iterate: .path .score .decision .anomaly_map
    model.save("models/parts"); fsiad.load("models/parts")
    fsiad.evaluate(method="knn", dataset="mvtec", root="data/mvtec", shots=[4])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["FsiadError", "__version__", "evaluate", "fit", "load"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "load", "evaluate"):
        from fsiad import api

        return getattr(api, name)
    if name == "FsiadError":
        from fsiad.fewshot.errors import FsiadError

        return FsiadError
    raise AttributeError(f"module 'fsiad' has no attribute {name!r}")
