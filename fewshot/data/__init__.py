"""Dataset readers, robust image IO and K-shot sampling.

Readers register themselves by kind; use :func:`load_dataset`. Kinds: ``mvtec`` (also
MPDD, BTAD), ``visa``, ``folder``, ``textile`` (plus kinds registered by other packages,
e.g. ``mvtec3d`` from ``pointcloud``).
"""

from fsiad.fewshot.data import folder, mvtec, textile, visa  # noqa: F401  (register readers)
from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.io import load_sample, read_image, read_mask
from fsiad.fewshot.data.registry import dataset_kinds, load_dataset, register_dataset
from fsiad.fewshot.data.sampling import sample_shots

__all__ = [
    "Category",
    "DatasetError",
    "Sample",
    "dataset_kinds",
    "load_dataset",
    "load_sample",
    "read_image",
    "read_mask",
    "register_dataset",
    "sample_shots",
]
