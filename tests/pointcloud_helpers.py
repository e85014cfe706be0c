"""Shared fixtures for the point-cloud tests (import the fixtures into a test module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsiad.fewshot.encoders import encoder_status
from fsiad.pointcloud.synthetic import generate_mvtec3d

ENCODER = "tf_efficientnet_lite0"
SIZE = 64  # working side of the methods in tests (FPFH on ~4k points per sample)


def encoder_available() -> bool:
    return bool(encoder_status(ENCODER)["available"])


needs_encoder = pytest.mark.skipif(not encoder_available(),
                                   reason=f"{ENCODER} weights not installed (run scripts/setup.sh)")


@pytest.fixture(scope="session")
def mixed_root(tmp_path_factory) -> Path:
    """One category, 4 normal references; test: 6 good, geometric-only (2 dent, 2 crack) and
    colour-only (3 stains) defects."""
    root = tmp_path_factory.mktemp("mvtec3d_mixed")
    generate_mvtec3d(root, n_train=4, n_validation=1, n_test_good=6,
                     n_test_defect={"dent": 2, "crack": 2, "color": 3}, size=96, seed=0)
    return root
