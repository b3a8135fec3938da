"""Shared pytest fixtures: fixed seeds, quiet TensorFlow, the real sample's path, the tiny model built once."""

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


@pytest.fixture(scope="session")
def tiny_config():
    """The `tiny` preset."""
    from isl import presets

    return presets.get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """The untrained tiny model with dynamic spatial dimensions, built once per run; tests must not change it."""
    from isl.model import builder

    return builder.build_model(tiny_config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_config) -> str:
    """A model folder of `tiny_model` (config.json + model.weights.h5); tests must not write into it."""
    from isl.model import saving

    directory = str(tmp_path_factory.mktemp("tiny_model"))
    saving.save_model_dir(tiny_model, tiny_config, directory)
    return directory
