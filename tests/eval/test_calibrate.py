"""`isl calibrate`'s fits: the temperature and spread scale that generated the truth are recovered."""

from __future__ import annotations

import numpy as np
import pytest

from isl.eval import calibrate
from isl.eval import calibration


def test_the_fitted_temperature_recovers_the_one_the_truth_was_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 256)) * 2.0
    logits[np.arange(4000), rng.integers(20, 230, 4000)] += 8.0  # Peaked, as trained heads are.
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    true_temperature = 2.5  # The model is overconfident: the truth is drawn from softmax(logits / 2.5).
    tempered = np.exp(log_probabilities / true_temperature)
    tempered /= tempered.sum(-1, keepdims=True)
    bins = np.array([rng.choice(256, p=row) for row in tempered])
    fitted = calibrate.fit_temperature(log_probabilities.astype(np.float32), bins)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    assert calibrate.tempered_nll(log_probabilities, bins, fitted) < calibrate.tempered_nll(log_probabilities, bins, 1)


def test_the_fitted_spread_scale_recovers_an_overconfident_spread():
    rng = np.random.default_rng(1)
    value = rng.uniform(0.2, 0.8, 20000)
    spread = rng.uniform(0.02, 0.06, 20000)
    truth = np.clip(rng.normal(value, 2.0 * spread), 0, 1)  # The stated spread is half the real one.
    bins = calibration.true_bins(truth)
    assert calibrate.fit_spread_scale(value, spread, bins) == pytest.approx(2.0, rel=0.05)


def test_golden_section_finds_a_minimum_inside_the_range():
    assert calibrate.golden_section(lambda x: (np.log(x) - np.log(3.0)) ** 2, 0.05, 20) == pytest.approx(3.0, 1e-4)
