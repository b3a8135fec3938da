"""Fixtures of the model tests: the paper model is built once per session (the tiny one: tests/conftest.py)."""

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
