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


def _scores(probabilities, bins, marginal=None):
    p, below = calibration.bin_statistics(probabilities, bins / 255)
    crps = calibration.discrete_crps(probabilities, bins / 255)
    return calibration.calibration_metrics(p, below, crps=crps, true_bins=bins, marginal=marginal)


def test_a_perfect_forecaster_has_zero_log_score_zero_crps_and_gains_the_marginals_surprise():
    rng = np.random.default_rng(2)
    bins = rng.integers(0, 256, 3000)
    marginal, _ = calibration.marginal_histogram(bins / 255)
    perfect = np.eye(256)[bins]
    result = _scores(perfect, bins, marginal)
    assert result["log_score_bits"] == pytest.approx(0.0, abs=1e-6)
    assert result["crps"] == pytest.approx(0.0, abs=1e-12)
    expected = float(np.mean(-np.log2(marginal[bins])))
    assert result["information_gain_bits"] == pytest.approx(expected) and expected > 7


def test_predicting_the_marginal_gains_exactly_zero_bits():
    rng = np.random.default_rng(3)
    marginal, _ = calibration.marginal_histogram(rng.beta(2, 8, 50000))
    bins = rng.choice(256, 4000, p=marginal)
    result = _scores(np.tile(marginal, (4000, 1)), bins, marginal)
    assert result["information_gain_bits"] == pytest.approx(0.0, abs=1e-9)
    assert result["coverage_90"] == pytest.approx(0.9, abs=0.02)  # The marginal is calibrated, just uninformative.


def test_crps_of_a_point_forecast_is_the_absolute_error():
    bins = np.array([10, 200, 128])
    forecast = np.eye(256)[[30, 190, 128]]
    np.testing.assert_allclose(calibration.discrete_crps(forecast, bins / 255), np.array([20, 10, 0]) / 255)


def test_too_narrow_too_wide_and_biased_forecasts_lose_gain_and_show_in_coverage_and_pit():
    rng = np.random.default_rng(4)
    count = 6000
    centres = rng.uniform(60, 195, count)
    truth = np.clip(np.round(rng.normal(centres, 12.0)), 0, 255).astype(int)
    marginal, _ = calibration.marginal_histogram(truth / 255)

    def gaussian(centre, spread):
        return calibration.gaussian_bin_probabilities(centre / 255, np.full(count, spread / 255))

    honest = _scores(gaussian(centres, 12.0), truth, marginal)
    narrow = _scores(gaussian(centres, 4.0), truth, marginal)
    wide = _scores(gaussian(centres, 36.0), truth, marginal)
    biased = _scores(gaussian(centres - 15.0, 12.0), truth, marginal)  # Predicts too dark: truth above.
    assert honest["coverage_50"] == pytest.approx(0.5, abs=0.03)
    assert honest["coverage_90"] == pytest.approx(0.9, abs=0.02)
    assert narrow["coverage_90"] < 0.5 and wide["coverage_50"] > 0.85
    assert biased["pit_histogram"][-1] > 0.2 and biased["pit_histogram"][0] < 0.05
    for other in (narrow, wide, biased):
        assert other["information_gain_bits"] < honest["information_gain_bits"]
        assert other["log_score_bits"] > honest["log_score_bits"]
    assert biased["crps"] > honest["crps"] and wide["crps"] > honest["crps"]
    assert honest["information_gain_bits"] > 0


def test_the_discretised_gaussian_sums_to_one_and_matches_its_bin_statistics():
    mean = np.array([0.5, -0.2, 1.3, 5 / 255])
    std = np.array([0.05, 0.1, 0.1, 0.0005])
    probabilities = calibration.gaussian_bin_probabilities(mean, std)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-12)
    assert probabilities[1, 0] > 0.97 and probabilities[2, -1] > 0.99  # Clipped tails fall into the edge bins.
    assert probabilities[3, 5] > 0.99  # Bin 5 holds [4.5, 5.5) / 255.
    truth = np.array([0.5, 0.0, np.nan, 6 / 255])
    p, below, crps = calibration.gaussian_bin_statistics(mean, std, truth, chunk=2)
    reference_p, reference_below = calibration.bin_statistics(probabilities, np.nan_to_num(truth))
    keep = np.isfinite(truth)
    np.testing.assert_allclose(p[keep], reference_p[keep], atol=1e-6)
    np.testing.assert_allclose(below[keep], reference_below[keep], atol=1e-6)
    np.testing.assert_allclose(crps[keep], calibration.discrete_crps(probabilities, np.nan_to_num(truth))[keep],
                               atol=1e-6)
    assert np.isnan(p[2]) and np.isnan(crps[2])


def test_the_marginal_histogram_is_add_one_smoothed():
    histogram, count = calibration.marginal_histogram(np.array([0.0, 0.0, 1.0, np.nan]))
    assert count == 3 and histogram.shape == (256,)
    assert histogram[0] == pytest.approx(3 / 259) and histogram[255] == pytest.approx(2 / 259)
    assert histogram[100] == pytest.approx(1 / 259)


def _whole_image_reference(probability, below, mask, crps, bins, marginal):
    """The figures as computed on the whole arrays at once (the code before the band-by-band accumulation)."""
    probability, below = np.asarray(probability, np.float64), np.asarray(below, np.float64)
    values = calibration.pit(probability, below)
    keep = np.isfinite(probability) & np.isfinite(below) & mask
    nll = -np.log(np.maximum(probability[keep], calibration.PROBABILITY_FLOOR))
    marginal_bits = -np.log2(marginal[bins[keep]])
    values = values[keep]
    histogram = np.histogram(values, bins=10, range=(0.0, 1.0))[0] / keep.sum()
    return {"nll_nats": nll.mean(), "crps": crps[keep].astype(np.float64).mean(),
            "information_gain_bits": marginal_bits.mean() - nll.mean() / np.log(2),
            "coverage_50": ((values >= 0.25) & (values <= 0.75)).mean(),
            "coverage_90": ((values >= 0.05) & (values <= 0.95)).mean(), "pit_histogram": list(histogram),
            "num_pixels": int(keep.sum())}


@pytest.mark.parametrize("band_pixels", [1, 40, 1 << 20])
def test_calibration_metrics_band_by_band_equal_the_whole_arrays(monkeypatch, band_pixels):
    monkeypatch.setattr(calibration, "BAND_PIXELS", band_pixels)
    rng = np.random.default_rng(5)
    shape = (37, 23)
    probability = rng.random(shape).astype(np.float32) * 0.3
    below = (rng.random(shape) * (1 - probability)).astype(np.float32)
    probability[3, 4] = np.nan
    mask = rng.random(shape) > 0.3
    crps = rng.random(shape).astype(np.float32)
    bins = rng.integers(0, 256, shape).astype(np.uint8)
    marginal = rng.random(256) + 0.1
    marginal /= marginal.sum()
    result = calibration.calibration_metrics(probability, below, mask, crps=crps, true_bins=bins, marginal=marginal)
    expected = _whole_image_reference(probability, below, mask, crps, bins.astype(np.int64), marginal)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12), key
