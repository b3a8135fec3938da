"""Distribution statistics on hand-made distributions (isl_reference.md §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from isl.model import statistics


def _distribution(pairs, num_classes=256):
    probabilities = np.zeros(num_classes, np.float32)
    for index, probability in pairs:
        probabilities[index] = probability
    return probabilities


def test_point_mass():
    result = statistics.distribution_statistics(_distribution([(51, 1.0)])[None])
    for name in ("mode", "median", "mean"):
        assert float(result[name][0]) == pytest.approx(51 / 255)
    assert float(result["std"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(result["p_nonzero"][0]) == pytest.approx(1.0)
    assert float(result["entropy"][0]) == pytest.approx(0.0, abs=1e-5)


def test_two_point_distribution_and_median_rule():
    # Cumulative probability reaches exactly 0.5 at class 0: the median is 0.
    result = statistics.distribution_statistics(_distribution([(0, 0.5), (255, 0.5)]))
    assert float(result["median"]) == 0.0
    assert float(result["mean"]) == pytest.approx(0.5)
    assert float(result["std"]) == pytest.approx(0.5)
    assert float(result["p_nonzero"]) == pytest.approx(0.5)
    assert float(result["entropy"]) == pytest.approx(math.log(2) / math.log(256), rel=1e-5)
    # Just below 0.5 at class 10: the median is the next class with mass.
    skewed = statistics.distribution_statistics(_distribution([(10, 0.4), (20, 0.2), (200, 0.4)]))
    assert float(skewed["median"]) == pytest.approx(20 / 255)
    assert float(skewed["mode"]) == pytest.approx(10 / 255)  # argmax: the first of the ties


def test_uniform_distribution_and_graph_mode():
    probabilities = np.full((2, 3, 256), 1 / 256, np.float32)

    @tf.function
    def compute(values):
        return statistics.distribution_statistics(values, names=("entropy", "mean", "median"))

    result = compute(probabilities)
    assert list(result) == ["entropy", "mean", "median"]
    np.testing.assert_allclose(result["entropy"], np.ones((2, 3)), rtol=1e-4)
    np.testing.assert_allclose(result["mean"], np.full((2, 3), 0.5), rtol=1e-5)
    np.testing.assert_allclose(result["median"], np.full((2, 3), 127 / 255), rtol=1e-6)


def test_unknown_statistic_is_rejected():
    with pytest.raises(ValueError, match="Unknown statistic"):
        statistics.distribution_statistics(np.ones((1, 4), np.float32) / 4, names=("average",))
