"""Shared numerical primitives (kNN, coreset, Gaussian, aggregation, smoothing, pooling)."""

from fsiad.fewshot.ops.aggregate import local_aggregate
from fsiad.fewshot.ops.coreset import approximate_greedy_coreset
from fsiad.fewshot.ops.gaussian import GaussianAccumulator, GaussianStats, fit_gaussian, mahalanobis
from fsiad.fewshot.ops.knn import faiss_available, knn_search
from fsiad.fewshot.ops.pooling import topk_mean
from fsiad.fewshot.ops.smoothing import gaussian_blur, upsample_blur

__all__ = [
    "GaussianAccumulator",
    "GaussianStats",
    "approximate_greedy_coreset",
    "faiss_available",
    "fit_gaussian",
    "gaussian_blur",
    "knn_search",
    "local_aggregate",
    "mahalanobis",
    "topk_mean",
    "upsample_blur",
]
