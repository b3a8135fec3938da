"""Tests for `isl.eval.evaluate` helpers (the CLI flow is in tests/cli/test_evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from isl import errors
from isl.eval import evaluate


def test_region_mask_reads_the_convert_region_form_with_open_ends():
    predicted = {"row_offset": 0, "column_offset": 0, "height": 10, "width": 8}
    mask = evaluate.region_mask("6:,2:5", (10, 8), predicted)
    expected = np.zeros((10, 8), bool)
    expected[6:, 2:5] = True
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(errors.InputError, match="Or all, interior, original"):
        evaluate.region_mask("top", (10, 8), predicted)
