"""fsiad: zero-shot and few-shot industrial image anomaly detection, with an RGB-D branch.

The repository's folders install under this one name: ``fsiad.fewshot`` (2D core),
``fsiad.pointcloud`` (3D branch), ``fsiad.prompts`` (prompt data files) and ``fsiad.cli``.
"""

__version__ = "0.2.0"
