"""Seeded K-shot sampling of normal references.

The pool is first sorted by path, then every position ``i`` gets the key
``sha256(f"{seed}:{i}")``; the ``k`` positions with the smallest keys are the shots, in
key order. This is identical on every platform and Python/numpy version, independent of
the order the files were listed in, and nested: for a fixed seed the K-shot set is a
prefix of the (K+1)-shot set.
"""

from __future__ import annotations

import hashlib

from fsiad.fewshot.data.base import DatasetError, Sample


def _key(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"{seed}:{i}".encode()).digest()


def sample_shots(pool: list[Sample], k: int, seed: int) -> list[Sample]:
    """Choose ``k`` reference samples from ``pool`` deterministically.

    Args:
        pool: candidate normal samples (e.g. ``Category.train``).
        k: number of shots (0 -> ``[]``).
        seed: integer seed.

    Returns:
        The chosen samples (in selection order).

    Raises:
        DatasetError: ``k`` negative or larger than the pool.
    """
    if k < 0:
        raise DatasetError(f"number of shots must be >= 0, got {k}")
    if k > len(pool):
        raise DatasetError(f"cannot sample {k} shots from a pool of {len(pool)} normal images")
    if k == 0:
        return []
    ordered = sorted(pool, key=lambda s: str(s.path))
    ranked = sorted(range(len(ordered)), key=lambda i: _key(seed, i))
    return [ordered[i] for i in ranked[:k]]
