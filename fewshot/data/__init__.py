"""Dataset readers, robust image IO and K-shot sampling."""

from fewshot.data.base import Category, DatasetError, Sample

__all__ = ["Category", "DatasetError", "Sample"]
