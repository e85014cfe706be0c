"""numpy twins of the torch preprocessing and scoring ops, for the torch-free bundle runner.

Each function reproduces one torch op of the fitted-model path closely enough that an exported
bundle matches ``fsiad predict`` to 1e-4 (``tests/test_export.py`` checks it):

* ``resize_crop``: ``Preprocess.images`` (``F.interpolate`` bicubic/bilinear with
  ``antialias=True``, i.e. PIL's separable filters with torch's support and weights, then the
  centre crop and the clamp to [0, 1]);
* ``knn_distances``: ``fewshot.ops.knn`` (same ``-||q||^2 + 2 q.m - ||m||^2`` formula for l2,
  ``1 - cos`` for cosine);
* ``upsample_blur``: ``fewshot.ops.smoothing.upsample_blur`` (bilinear, ``align_corners=False``,
  then the separable Gaussian with reflect / replicate padding);
* ``topk_mean``, ``patchcore_scores`` (paper eq. 7 reweighting), ``mahalanobis`` (with the
  inverse Cholesky factor precomputed at export time).

Imports numpy only.
"""

from __future__ import annotations

import math

import numpy as np

_CUBIC_A = -0.5  # torch's antialiased bicubic uses PIL's a = -0.5


def _filter(name: str, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if name == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = _CUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def aa_weights(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Taps of torch's antialiased resize along one axis: ``(index [out, K], weight [out, K])``.

    Support ``interp_size / 2 * scale`` when shrinking (``interp_size`` 4 bicubic, 2 bilinear),
    each row normalised to sum 1; padded taps have weight 0.
    """
    interp = 4 if mode == "bicubic" else 2
    scale = in_size / out_size
    support = interp * 0.5 * scale if scale >= 1.0 else interp * 0.5
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = _filter(mode, (j - center + 0.5) * inv)
        total = w.sum()
        rows.append((j, w / total if total != 0 else w))
    k = max(len(j) for j, _ in rows)
    idx = np.zeros((out_size, k), np.int64)
    wts = np.zeros((out_size, k), np.float64)
    for i, (j, w) in enumerate(rows):
        idx[i, : len(j)], idx[i, len(j):] = j, j[0]
        wts[i, : len(w)] = w
    return idx, wts.astype(np.float32)


def _resize_axis(x: np.ndarray, out: int, axis: int, mode: str) -> np.ndarray:
    if x.shape[axis] == out:
        return x
    idx, w = aa_weights(x.shape[axis], out, mode)
    shape = [1] * x.ndim
    shape[axis] = out
    acc = np.zeros(x.shape[:axis] + (out,) + x.shape[axis + 1:], np.float32)
    for t in range(idx.shape[1]):
        acc += np.take(x, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return acc


def _resize_nearest(x: np.ndarray, side: int) -> np.ndarray:
    h, w = x.shape[:2]
    ri = np.minimum((np.arange(side) * (h / side)).astype(np.int64), h - 1)
    ci = np.minimum((np.arange(side) * (w / side)).astype(np.int64), w - 1)
    return x[ri][:, ci]


def resize_crop(image: np.ndarray, size: int, resize: int | None, interpolation: str) -> np.ndarray:
    """uint8 ``HxWx3`` -> float32 ``[3, S, S]`` in [0, 1] (``Preprocess.images`` for one image)."""
    side = resize or size
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if interpolation == "nearest":
        x = _resize_nearest(x, side)
    else:  # torch resizes the contiguous (width) axis first, then the height
        x = _resize_axis(_resize_axis(x, side, 1, interpolation), side, 0, interpolation)
    off = (side - size) // 2
    x = x[off : off + size, off : off + size]
    return np.clip(x, 0.0, 1.0).transpose(2, 0, 1).copy()


def knn_distances(queries: np.ndarray, memory: np.ndarray, k: int, metric: str, memory_sq: np.ndarray | None = None,
                  chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest memory rows of each query: ``(dist [Q, k] ascending, idx [Q, k])``.

    ``memory`` must already be L2-normalised for ``cosine``; ``memory_sq`` (``||m||^2``) may
    be passed to save its computation.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    elif memory_sq is None:
        memory_sq = (memory * memory).sum(1)
    dists, idxs = [], []
    for s in range(0, q.shape[0], chunk):
        qb = q[s : s + chunk]
        sim = qb @ memory.T
        if metric == "l2":
            sim = 2.0 * sim - memory_sq[None, :] - (qb * qb).sum(1, keepdims=True)
        if k == 1:
            i = sim.argmax(1)[:, None]
        else:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
            i = np.take_along_axis(part, order, 1)
        best = np.take_along_axis(sim, i, 1)
        d = np.sqrt(np.clip(-best, 0.0, None)) if metric == "l2" else np.clip(1.0 - best, 0.0, None)
        dists.append(d.astype(np.float32))
        idxs.append(i)
    return np.concatenate(dists), np.concatenate(idxs)


def topk_mean(grid: np.ndarray, fraction: float) -> np.ndarray:
    """``fewshot.ops.pooling.topk_mean``: mean of the top ``ceil(fraction * n)`` values per image."""
    flat = grid.reshape(grid.shape[0], -1).astype(np.float32)
    k = min(flat.shape[1], max(1, math.ceil(fraction * flat.shape[1])))
    top = -np.sort(-flat, axis=1)[:, :k]
    return top.mean(1, dtype=np.float32)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis."""
    scale = np.float32(in_size / out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.arange(out_size), i0), 1.0 - l1)
    np.add.at(m, (np.arange(out_size), i1), l1)
    return m


def gaussian_kernel1d(sigma: float, radius_factor: float = 4.0) -> np.ndarray:
    radius = max(1, math.ceil(radius_factor * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(np.float32(-0.5) * (x / np.float32(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable blur of ``[N, H, W]`` (radius 4 sigma; reflect padding, replicate on tiny maps)."""
    if sigma <= 0:
        return maps.astype(np.float32)
    k = gaussian_kernel1d(sigma)
    r = (k.size - 1) // 2
    h, w = maps.shape[-2:]
    mode = "reflect" if min(h, w) > r else "edge"
    x = np.pad(maps.astype(np.float32), ((0, 0), (0, 0), (r, r)), mode=mode)
    out = np.zeros(maps.shape, np.float32)
    for t in range(k.size):
        out += k[t] * x[:, :, t : t + w]
    x = np.pad(out, ((0, 0), (r, r), (0, 0)), mode=mode)
    out = np.zeros(maps.shape, np.float32)
    for t in range(k.size):
        out += k[t] * x[:, t : t + h, :]
    return out


def upsample_blur(grid: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """``[N, h, w]`` patch maps -> ``[N, size, size]`` (bilinear upsampling, then Gaussian blur)."""
    n, h, w = grid.shape
    ay, ax = bilinear_matrix(h, size), bilinear_matrix(w, size)
    up = np.einsum("sh,nhw,tw->nst", ay, grid.astype(np.float32), ax, optimize=True).astype(np.float32)
    return gaussian_blur(up, sigma)


def patchcore_scores(flat: np.ndarray, grid: np.ndarray, nn_idx: np.ndarray, memory: np.ndarray,
                     memory_sq: np.ndarray, b: int) -> np.ndarray:
    """PatchCore image scores (``fewshot.methods.patchcore.reweighted_scores``) from patch distances.

    Args:
        flat: ``[N, P, C]`` patch features; grid: ``[N, P]`` nearest distances; nn_idx: ``[N, P]``.
    """
    n = grid.shape[0]
    best = grid.argmax(1)
    d_star = grid[np.arange(n), best]
    b = min(int(b), memory.shape[0])
    if b <= 1:
        return d_star.astype(np.float32)
    m_star = nn_idx[np.arange(n), best]
    q = flat[np.arange(n), best]  # [N, C]
    _, nb = knn_distances(memory[m_star], memory, b, "l2", memory_sq)  # [N, b]
    d = np.linalg.norm(memory[nb] - q[:, None, :], axis=-1).astype(np.float32)
    is_star = nb == m_star[:, None]
    is_star[:, -1] |= ~is_star.any(1)
    d = np.where(is_star, -np.inf, d)
    logits = np.concatenate([d_star[:, None], d], 1).astype(np.float32)
    e = np.exp(logits - logits.max(1, keepdims=True))
    weight = 1.0 - e[:, 0] / e.sum(1)
    return (weight * d_star).astype(np.float32)


def mahalanobis(features: np.ndarray, mean: np.ndarray, chol_inv: np.ndarray) -> np.ndarray:
    """``[N, P, C]`` -> ``[N, P]`` distances, ``|| L^-1 (x - mu) ||`` per position."""
    d = features.astype(np.float32) - mean[None]
    y = np.einsum("pcd,npd->npc", chol_inv, d, optimize=True)
    return np.sqrt((y * y).sum(-1)).astype(np.float32)
