"""Normal references: the ONE shots-versus-regime rule and the seeded draw of K references.

Rule (``check_shots``): zero-shot methods take K >= 0 references, few-shot and full-data
methods need K >= 1, transductive methods take none (K = 0: they score the set of targets).
Leave-one-out calibration (``thresholds.py``) needs one reference more than a fit does
(``min_references(cls) + 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.errors import OptionError


def min_references(method_cls: type) -> int:
    """Fewest references a fit of ``method_cls`` needs: 0 for zero-shot regimes, else 1."""
    return 0 if str(method_cls.regime).startswith("zero-shot") else 1


def check_shots(method_cls: type, shots: int) -> None:
    """Refuse a number of shots the method's regime cannot use.

    Raises:
        OptionError: negative K, K > 0 for a transductive method, K below ``min_references``.
    """
    name, regime = method_cls.name, method_cls.regime
    if shots < 0:
        raise OptionError(f"--shots {shots}: must be >= 0")
    if method_cls.transductive and shots > 0:
        raise OptionError(f"--shots {shots}: {name} is {regime} (it uses no references); use --shots 0")
    if shots < min_references(method_cls):
        raise OptionError(f"--shots {shots}: {name} is a {regime} method and needs K >= "
                          f"{min_references(method_cls)} references")


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
