"""Normal references: the seeded draw of K references.

The shots-versus-regime rule (``check_shots``, ``min_references``) lives in
``fsiad.fewshot.methods.regime`` (shared with the evaluation harness) and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods.regime import check_shots, min_references

__all__ = ["check_shots", "min_references", "select_references"]


def select_references(method_cls: type, shots: int, seed: int = 0, normal: str | Path | None = None,
                      demo: Any = None) -> list[Sample]:
    """Draw ``shots`` normal references (seeded) from ``normal`` (a folder) or a demo category.

    The pool of ``normal`` goes through ``targets.collect_samples`` (the method's own collector
    for multi-modal inputs, else image files; fsiad output folders are never read).

    Raises:
        OptionError: the rule of ``check_shots``; ``normal`` and ``demo`` together; no source.
        DatasetError: ``normal`` is not a folder, holds no images, or fewer than ``shots``.
    """
    from fsiad.fewshot.data.sampling import sample_shots
    from fsiad.fewshot.workflow.targets import collect_samples

    check_shots(method_cls, shots)
    if shots == 0:
        return []
    if demo is not None:
        if normal is not None:
            raise OptionError("--normal and --demo are exclusive (the demo brings its own normal images)")
        pool: Sequence[Sample] = list(demo.train)
    else:
        if normal is None:
            raise OptionError(f"--shots {shots} needs --normal DIR (a folder of normal images)")
        if not Path(normal).is_dir():
            raise DatasetError(f"--normal {normal}: not a folder")
        pool = collect_samples(method_cls, [normal], normal=True)
        if not pool:
            raise DatasetError(f"--normal {normal}: no images found (extensions .png .jpg .bmp .tif ...)")
    if shots > len(pool):
        raise DatasetError(f"--shots {shots}: only {len(pool)} normal images available")
    return list(sample_shots(list(pool), shots, seed)) if shots < len(pool) else list(pool)
