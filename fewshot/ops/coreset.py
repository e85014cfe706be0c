"""Approximate greedy (k-center) coreset subsampling, as in PatchCore.

Algorithm (PatchCore, Roth et al. 2022, "approximate greedy coreset"): features are
randomly projected to ``proj_dim`` dimensions (Johnson-Lindenstrauss), then points are
added greedily, each time the point farthest from the current coreset.

Deviations from the official code (documented on purpose):
    * the ``num_starts`` random starting points ARE members of the coreset and the
      distance-to-coreset is initialised with the exact minimum distance to them (the
      official code initialises with the MEAN distance to the starts and does not add
      them; anomalib's single-start variant forgets the start point, anomalib #3459);
    * the projection is a seeded Gaussian matrix ``N(0, 1/proj_dim)`` (the official code
      uses an untrained ``nn.Linear``), and is skipped when ``C <= proj_dim``;
    * the greedy loop is exact but lazy: a pool of the ``pool`` farthest points is kept with
      exact distances while a threshold ``tau`` bounds every point outside it (distances to
      the coreset only shrink as centres are added). Centres are taken from the pool while
      its best point is at least ``tau`` away, which makes it the global farthest point; then
      all points are updated against the new centres in one chunked matrix product and the
      pool is rebuilt. The selected indices are those of the plain greedy loop (up to float
      rounding ties); full passes over the data happen once per batch of centres instead of
      once per centre, so the loop is bound by matrix products, not by memory traffic.
"""

from __future__ import annotations

import math

import torch


def project(features: torch.Tensor, proj_dim: int = 128, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """Seeded Gaussian random projection ``[M, C] -> [M, proj_dim]`` (identity if ``C <= proj_dim``)."""
    m, c = features.shape
    if proj_dim <= 0 or c <= proj_dim:
        return features.float().contiguous()
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, proj_dim, generator=g) / math.sqrt(proj_dim)
    w = w.to(features.device)
    out = torch.empty(m, proj_dim, device=features.device)
    for s in range(0, m, chunk):
        out[s : s + chunk] = features[s : s + chunk].float() @ w
    return out


def coreset_size(m: int, ratio: float | None = None, n: int | None = None) -> int:
    """Number of points kept: ``n`` if given, else ``ceil(ratio * m)``, clipped to ``[1, m]``."""
    if (ratio is None) == (n is None):
        raise ValueError("coreset: give exactly one of ratio or n")
    if ratio is not None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset: ratio must be in (0, 1], got {ratio}")
        n = math.ceil(ratio * m)
    if n < 1:
        raise ValueError(f"coreset: n must be >= 1, got {n}")
    return min(int(n), m)


def approximate_greedy_coreset(
    features: torch.Tensor,
    ratio: float | None = None,
    n: int | None = None,
    proj_dim: int = 128,
    num_starts: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a greedy k-center coreset of ``features``.

    Args:
        features: ``[M, C]`` float.
        ratio: share of points kept (``ceil(ratio * M)``); exclusive with ``n``.
        n: number of points kept; exclusive with ``ratio``.
        proj_dim: random-projection dimension (``0`` = no projection).
        num_starts: random starting points (members of the coreset).
        seed: seed of the projection and the starting points.

    Returns:
        ``[n]`` int64 distinct indices into ``features``, in selection order.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"coreset: features must be a non-empty [M, C] tensor, got {tuple(features.shape)}")
    m = features.shape[0]
    n = coreset_size(m, ratio, n)
    if n == m:
        return torch.arange(m)
    x = project(features, proj_dim, seed)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randperm(m, generator=g)[: max(1, min(num_starts, n))].to(x.device)
    return _greedy(x, starts, n)


def _sq_dist(x: torch.Tensor, xn: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances ``[M, B]`` of ``x [M, d]`` (squared norms ``xn [M]``) to ``c [B, d]``."""
    return torch.addmm(xn[:, None] + (c * c).sum(1)[None], x, c.T, alpha=-2.0).clamp_min_(0.0)


def _update_min(x: torch.Tensor, xn: torch.Tensor, c: torch.Tensor, mind: torch.Tensor, chunk: int,
                block_elems: int = 1 << 22) -> None:
    """``mind = min(mind, squared distance of every row of x to its nearest row of c)`` in place.

    ``min_j ||x_i - c_j||^2 = ||x_i||^2 + min_j (||c_j||^2 - 2 x_i . c_j)``: one matrix product per
    row block into a reused buffer of at most ``block_elems`` floats (16 MiB), so no block of
    hundreds of MiB is allocated, page-faulted and freed for every chunk of every pass.
    """
    m, b = x.shape[0], c.shape[0]
    rows = max(1, min(chunk, block_elems // max(b, 1)))
    cn = (c * c).sum(1)[None]
    ct = c.T.contiguous()
    buf = torch.empty(min(rows, m), b, dtype=x.dtype, device=x.device)
    for s in range(0, m, rows):
        e = min(s + rows, m)
        blk = torch.addmm(cn, x[s:e], ct, alpha=-2.0, out=buf[: e - s])
        best = blk.amin(1).add_(xn[s:e]).clamp_min_(0.0)
        torch.minimum(mind[s:e], best, out=mind[s:e])


def _greedy(x: torch.Tensor, starts: torch.Tensor, n: int, pool: int = 2048, chunk: int = 65536) -> torch.Tensor:
    """Lazy exact farthest-point selection on ``x [M, d]`` starting from ``starts`` (see module doc)."""
    m = x.shape[0]
    xn = (x * x).sum(1)
    sel = torch.empty(n, dtype=torch.long, device=x.device)
    mind = torch.full((m,), float("inf"), dtype=x.dtype, device=x.device)  # squared distance to the coreset
    new = starts
    t = 0
    while True:
        sel[t : t + new.numel()] = new
        t += new.numel()
        c = x[new]
        _update_min(x, xn, c, mind, chunk)
        mind[new] = 0.0
        if t >= n:
            return sel
        k = min(pool, m)
        top, idx = torch.topk(mind, k, sorted=False)
        if float(top.max()) <= 0.0:  # every remaining point duplicates a centre: fill arbitrarily
            taken = torch.zeros(m, dtype=torch.bool, device=x.device)
            taken[sel[:t]] = True
            sel[t:] = torch.nonzero(~taken).squeeze(1)[: n - t]
            return sel
        tau = float(top.min()) if k < m else -1.0
        px, pxn = x[idx], xn[idx]
        # pool-to-pool distances once per rebuild (one matrix product), then each pick is a
        # column read instead of a small product per centre (tiny parallel ops stall on a loaded machine)
        pool_d = _sq_dist(px, pxn, px)
        picked: list[int] = []
        while t + len(picked) < n:
            j = int(torch.argmax(top))
            if float(top[j]) < tau or float(top[j]) <= 0.0:
                break
            picked.append(int(idx[j]))
            torch.minimum(top, pool_d[:, j], out=top)
            top[j] = 0.0
        new = torch.tensor(picked, dtype=torch.long, device=x.device)
