"""Shared pytest fixtures: fixed seeds, quiet TensorFlow, the real sample's path."""

from __future__ import annotations

import os
import pathlib
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPOSITORY_ROOT.parent / "shared" / "data" / "condition_b_sample"


@pytest.fixture(autouse=True)
def fixed_seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def sample_dir() -> pathlib.Path:
    """The real Condition B sample well; skips when ../shared is absent."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip("../shared/data/condition_b_sample is not present")
    return SAMPLE_DIR
