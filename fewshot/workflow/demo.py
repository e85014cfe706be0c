"""The embedded demo: the textile set of the PyPI package ``conformal-clip-data``.

Normal references come from the nominal training pool of ``load_dataset("textile", None)``;
targets are a seeded mix of its test images: half nominal, the rest split between the
``local`` and ``global`` defect types. The mix uses its own fixed seed, so runs with
different ``--seed`` (reference draws) or methods score the same targets.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from fsiad.fewshot.data.base import Category, DatasetError, Sample

DEMOS = ("textile",)
DEMO_TARGET_SEED = 0
DEFAULT_DEMO_SIZE = 120


def load_demo(name: str) -> Category:
    """The demo category ``name`` (``textile``)."""
    if name not in DEMOS:
        raise DatasetError(f"unknown demo {name!r}; available: {', '.join(DEMOS)}")
    from fsiad.fewshot.data import load_dataset

    cats = load_dataset(name, None)
    if not cats:
        raise DatasetError(f"demo {name!r}: no data found (install the PyPI package conformal-clip-data)")
    return cats[0]


def demo_targets(category: Category, size: int = DEFAULT_DEMO_SIZE, seed: int = DEMO_TARGET_SEED) -> list[Sample]:
    """A seeded mix of ``size`` test images: ``size // 2`` normal, the rest spread over defect types.

    Returns samples in a stable order (normal first, then by defect type, each sorted by path).
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in category.test:
        groups["good" if s.label == 0 else s.defect].append(s)
    defects = sorted(k for k in groups if k != "good")
    if not groups["good"] or not defects:
        raise DatasetError(f"{category.root}: the demo needs normal and anomalous test images")
    want = {"good": size // 2}
    rest = size - want["good"]
    for i, d in enumerate(defects):
        want[d] = rest // len(defects) + (1 if i < rest % len(defects) else 0)
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for key in ["good", *defects]:
        pool = sorted(groups[key], key=lambda s: str(s.path))
        n = min(want[key], len(pool))
        idx = np.sort(rng.choice(len(pool), size=n, replace=False))
        out.extend(pool[i] for i in idx)
    return out
