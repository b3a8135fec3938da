"""Fixtures of the model tests: the paper model is built once per session."""

from __future__ import annotations

import pytest

from isl import presets


@pytest.fixture(scope="session")
def paper_model_and_records():
    """The paper model at its 250-px input, with its per-module records."""
    from isl.model import builder

    records = []
    model = builder.build_model(presets.get_preset("paper"), input_size=250, records=records)
    return model, records


@pytest.fixture(scope="session")
def tiny_config():
    return presets.get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """The tiny model with dynamic spatial dimensions."""
    from isl.model import builder

    return builder.build_model(tiny_config)
