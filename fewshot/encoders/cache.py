"""Per-image memoisation of encoder outputs, keyed by image content."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def image_keys(images: torch.Tensor) -> list[str]:
    """Content hash of each image of ``[N, 3, H, W]`` (dtype and shape included)."""
    x = images.detach().cpu().contiguous()
    head = f"{x.dtype}{tuple(x.shape[1:])}".encode()
    return [hashlib.blake2b(head + x[i].numpy().tobytes(), digest_size=16).hexdigest() for i in range(x.shape[0])]


class FeatureCache:
    """LRU cache of per-image lists of tensors, bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()

    def get_or_compute(
        self, tag: Hashable, images: torch.Tensor, compute: Callable[[torch.Tensor], list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Return per-layer ``[N, ...]`` tensors, computing only the images not cached yet."""
        keys = [(tag, k) for k in image_keys(images)]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        local: dict[tuple, list[torch.Tensor]] = {}
        for k in keys:
            if k in self._store:
                local[k] = self._store[k]
                self._store.move_to_end(k)
        if missing:
            fresh = compute(images[missing])
            for j, i in enumerate(missing):
                local[keys[i]] = [f[j].clone() for f in fresh]
                self._put(keys[i], local[keys[i]])
        rows = [local[k] for k in keys]
        return [torch.stack([r[layer] for r in rows]) for layer in range(len(rows[0]))]

    def _put(self, key: tuple, value: list[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in value)
        if size > self.max_bytes:
            return
        self._store[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in old)
