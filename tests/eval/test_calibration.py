"""Calibration: a calibrated predictor gets honest coverage; a sharp wrong one does not."""

from __future__ import annotations

import numpy as np
import pytest

from isl.eval import calibration


def _distributions(rng, count: int, classes: int = 256, spread: float = 12.0):
    centres = rng.uniform(40, 215, count)
    grid = np.arange(classes)
    weights = np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / spread) ** 2)
    return weights / weights.sum(-1, keepdims=True)


def test_truth_drawn_from_the_predicted_distributions_gives_nominal_coverage():
    rng = np.random.default_rng(0)
    probabilities = _distributions(rng, 20000)
    bins = np.array([rng.choice(256, p=row) for row in probabilities])
    p, below = calibration.bin_statistics(probabilities, bins / 255)
    result = calibration.calibration_metrics(p, below)
    assert result["coverage_50"] == pytest.approx(0.5, abs=0.02)
    assert result["coverage_90"] == pytest.approx(0.9, abs=0.02)
    assert result["pit_max_deviation"] < 0.02


def test_overconfident_predictions_under_cover_and_have_a_higher_nll():
    rng = np.random.default_rng(1)
    wide = _distributions(rng, 5000, spread=12.0)
    truth_bins = np.array([rng.choice(256, p=row) for row in wide])
    sharp = _distributions(np.random.default_rng(1), 5000, spread=2.0)  # Same centres, too narrow.
    honest = calibration.calibration_metrics(*calibration.bin_statistics(wide, truth_bins / 255))
    overconfident = calibration.calibration_metrics(*calibration.bin_statistics(sharp, truth_bins / 255))
    assert overconfident["coverage_90"] < 0.5 < honest["coverage_90"]
    assert overconfident["nll_nats"] > honest["nll_nats"]


def test_masked_and_nan_pixels_are_ignored_and_empty_input_gives_nan():
    p = np.array([0.5, np.nan, 0.2])
    below = np.array([0.25, 0.1, 0.7])
    result = calibration.calibration_metrics(p, below, mask=np.array([True, True, False]))
    assert result["num_pixels"] == 1
    assert result["nll_nats"] == pytest.approx(-np.log(0.5))
    empty = calibration.calibration_metrics(p, below, mask=np.zeros(3, bool))
    assert empty["num_pixels"] == 0 and np.isnan(empty["coverage_50"])
