"""Exact k-nearest-neighbour search with a bounded memory footprint.

Distances:
    * ``l2``: Euclidean distance (NOT squared), ``||q - m||``.
    * ``cosine``: ``1 - cos(q, m)`` in ``[0, 2]`` (rows are L2-normalised internally).

The torch path computes query-chunk x memory-chunk score blocks with one matmul each and
keeps a running top-k, so no block larger than ``max_bytes`` is ever materialised. On CPU,
when ``faiss`` is importable and the problem is large, an exact flat faiss index is used
instead (faiss blocks its BLAS calls internally, so memory stays bounded too).
"""

from __future__ import annotations

import torch

METRICS = ("l2", "cosine")
DEFAULT_MAX_BYTES = 256 << 20
#: ``backend="auto"`` switches to faiss above this many query x memory pairs.
FAISS_MIN_PAIRS = 50_000_000

try:  # optional dependency
    import faiss  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


def faiss_available() -> bool:
    """Whether the optional faiss backend can be used."""
    return faiss is not None


def _check(queries: torch.Tensor, memory: torch.Tensor, k: int, metric: str) -> None:
    if queries.ndim != 2 or memory.ndim != 2:
        raise ValueError(f"knn_search: queries and memory must be 2-D, got {tuple(queries.shape)} and {tuple(memory.shape)}")
    if queries.shape[1] != memory.shape[1]:
        raise ValueError(f"knn_search: feature sizes differ ({queries.shape[1]} vs {memory.shape[1]})")
    if metric not in METRICS:
        raise ValueError(f"knn_search: unknown metric {metric!r}; use one of {METRICS}")
    if not 1 <= k <= memory.shape[0]:
        raise ValueError(f"knn_search: k={k} must be in [1, {memory.shape[0]}] (memory size)")


def knn_search(
    queries: torch.Tensor,
    memory: torch.Tensor,
    k: int = 1,
    metric: str = "l2",
    max_bytes: int = DEFAULT_MAX_BYTES,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of each query in ``memory``.

    Args:
        queries: ``[Q, C]`` float.
        memory: ``[M, C]`` float.
        k: neighbours per query (``1 <= k <= M``).
        metric: ``l2`` (Euclidean, not squared) or ``cosine`` (``1 - cos``).
        max_bytes: budget for one score block of the torch path.
        backend: ``auto`` (faiss on CPU for large problems when installed), ``torch`` or ``faiss``.

    Returns:
        ``(dist [Q, k] float32, idx [Q, k] int64)``, ascending distance per row.
    """
    _check(queries, memory, k, metric)
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"knn_search: unknown backend {backend!r}; use auto, torch or faiss")
    if backend == "faiss" and faiss is None:
        raise RuntimeError("knn_search: backend='faiss' but faiss is not installed (pip install faiss-cpu)")
    q = queries.detach().float()
    m = memory.detach().float().to(q.device)
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
        m = torch.nn.functional.normalize(m, dim=1)
    if q.shape[0] == 0:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    use_faiss = backend == "faiss" or (
        backend == "auto" and faiss is not None and q.device.type == "cpu"
        and q.shape[0] * m.shape[0] >= FAISS_MIN_PAIRS
    )
    if use_faiss:
        return _faiss_search(q.cpu(), m.cpu(), k, metric)
    return _torch_search(q, m, k, metric, max_bytes)


def _faiss_search(q: torch.Tensor, m: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    index = faiss.IndexFlatIP(m.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(m.shape[1])
    index.add(m.contiguous().numpy())
    d, i = index.search(q.contiguous().numpy(), k)
    dist = torch.from_numpy(d)
    dist = (1.0 - dist) if metric == "cosine" else dist.clamp_min_(0.0).sqrt_()
    return dist.clamp_min_(0.0), torch.from_numpy(i).long()


def _torch_search(
    q: torch.Tensor, m: torch.Tensor, k: int, metric: str, max_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    n_q, n_m = q.shape[0], m.shape[0]
    budget = max(1, max_bytes // 4)  # float32 elements per score block
    q_chunk = min(n_q, 4096)
    m_chunk = max(k, min(n_m, budget // q_chunk))
    q_chunk = max(1, min(q_chunk, budget // m_chunk))
    m_sq = (m * m).sum(1) if metric == "l2" else None
    out_d, out_i = [], []
    for qs in range(0, n_q, q_chunk):
        qb = q[qs : qs + q_chunk]
        q_sq = (qb * qb).sum(1, keepdim=True) if metric == "l2" else None
        best_s = best_i = None
        for ms in range(0, n_m, m_chunk):
            mb = m[ms : ms + m_chunk]
            if metric == "l2":
                # score = -||q - m||^2 so that larger is closer for both metrics
                s = torch.addmm(m_sq[ms : ms + m_chunk].unsqueeze(0), qb, mb.T, beta=-1.0, alpha=2.0).sub_(q_sq)
            else:
                s = qb @ mb.T
            kk = min(k, s.shape[1])
            sv, si = s.topk(kk, dim=1)
            si += ms
            if best_s is None:
                best_s, best_i = sv, si
            else:
                cat_s, cat_i = torch.cat([best_s, sv], 1), torch.cat([best_i, si], 1)
                best_s, pos = cat_s.topk(k, dim=1)
                best_i = cat_i.gather(1, pos)
        out_d.append(best_s)
        out_i.append(best_i)
    s, idx = torch.cat(out_d), torch.cat(out_i)
    dist = (-s).clamp_min_(0.0).sqrt_() if metric == "l2" else (1.0 - s).clamp_min_(0.0)
    return dist, idx
