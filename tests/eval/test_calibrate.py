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


def _spiked_readout(seed: int, count: int = 40000, level: int = 50, fraction: float = 0.4):
    """A read-out whose normal curve is honest off the background, and a stain with a spike at `level`.

    Pixels predicted dark (value < 0.3) are at the background level with probability `fraction`.
    """
    rng = np.random.default_rng(seed)
    value = rng.uniform(0.1, 0.6, count)
    spread = rng.uniform(0.02, 0.04, count)
    truth = np.clip(rng.normal(value, spread), 0, 1)
    spike = (value < 0.3) & (rng.random(count) < fraction)
    truth[spike] = level / 255
    return value, spread, calibration.true_bins(truth)


def test_the_fitted_mixture_weight_recovers_the_fraction_drawn_from_the_histogram():
    rng = np.random.default_rng(2)
    histogram = rng.dirichlet(np.ones(256))
    normal = calibration.gaussian_bin_probabilities(np.full(30000, 0.5), np.full(30000, 0.05))
    from_histogram = rng.random(30000) < 0.3
    bins = np.where(from_histogram, rng.choice(256, 30000, p=histogram),
                    calibration.true_bins(np.clip(rng.normal(0.5, 0.05, 30000), 0, 1)))
    weight = calibrate.fit_mixture_weight(normal[np.arange(30000), bins], histogram[bins])
    assert weight == pytest.approx(0.3, abs=0.02)
    # A histogram that explains nothing gets no weight; one that explains everything gets all of it.
    assert calibrate.fit_mixture_weight(np.full(100, 0.5), np.full(100, 0.01)) == 0.0
    assert calibrate.fit_mixture_weight(np.full(100, 0.01), np.full(100, 0.5)) == 1.0


def test_conditional_histograms_turn_a_background_spike_into_a_positive_information_gain():

    level = 50
    value, spread, bins = _spiked_readout(3, level=level)
    test_value, test_spread, test_bins = _spiked_readout(4, level=level)  # Fitted on one draw, scored on another.
    marginal = np.bincount(bins, minlength=256) + 1.0
    marginal /= marginal.sum()
    parameters = calibrate.fit_readout(value, spread, bins)
    gains = {}
    for name, fitted in (("normal", {}), ("histograms", parameters)):
        distribution = calibration.ReadoutDistribution.of(fitted, test_value, test_spread)
        probability, below, crps = distribution.bin_statistics(test_bins / 255)
        gains[name] = calibration.calibration_metrics(probability, below, crps=crps, true_bins=test_bins,
                                                      marginal=marginal)
    assert gains["histograms"]["information_gain_bits"] > max(0.0, gains["normal"]["information_gain_bits"]) + 0.3
    assert 0.85 <= gains["histograms"]["coverage_90"] <= 0.95 and 0.4 <= gains["histograms"]["coverage_50"] <= 0.6
    # The spike's fraction is recovered by the dark pixels' histogram (0.4 at the level, none in the bright ones'),
    # and the mixture gives a dark pixel many times the normal curve's probability of the background level.
    pixels = calibration.ReadoutDistribution.of(parameters, np.array([0.15, 0.55]), np.array([0.03, 0.03]))
    histograms = np.asarray(parameters["histograms"])
    members = int((calibration.histogram_group(parameters, value, spread) == pixels.group[0]).sum())
    pseudo = calibrate.HISTOGRAM_PSEUDO_COUNT * 256  # The add-one smoothing's share of the group's mass.
    assert histograms[pixels.group[0], level] == pytest.approx(0.4 * members / (members + pseudo), abs=0.03)
    assert histograms[pixels.group[1], level] < 0.01
    mixed = pixels.bin_probabilities(np.arange(2))
    normal = calibration.gaussian_bin_probabilities(np.array([0.15, 0.55]), pixels.spread)
    assert mixed[0, level] > 5 * normal[0, level] and mixed[1, level] < 0.02


def test_an_old_record_with_a_spread_scale_only_is_a_scaled_normal_curve():
    from isl.io import calibration_file

    old = {"format_version": 1, "route": "readout", "channels": {"DAPI": {"spread_scale": 1.5}},
           "marginal": {"DAPI": [1 / 256] * 256}}
    record = calibration_file.Calibration.from_json(old)
    value, spread = np.array([0.3, 0.6]), np.array([0.02, 0.05])
    distribution = calibration.ReadoutDistribution.of(record.channels["DAPI"], value, spread)
    assert not distribution.mixed
    truth = np.array([0.31, 0.5])
    expected = calibration.gaussian_bin_statistics(value, spread * 1.5, truth)
    for got, want in zip(distribution.bin_statistics(truth), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_record_with_malformed_histograms_is_refused():
    from isl.io import calibration_file

    value, spread, bins = _spiked_readout(5, count=4000)
    parameters = calibrate.fit_readout(value, spread, bins, value_groups=4, spread_groups=2)
    record = {"format_version": 1, "route": "readout", "channels": {"DAPI": parameters},
              "marginal": {"DAPI": [1 / 256] * 256}}
    assert calibration.ReadoutDistribution.of(
        calibration_file.Calibration.from_json(record).channels["DAPI"], value, spread).mixed
    for key, broken in (("histograms", parameters["histograms"][:-1]), ("histogram_weights", [2.0] * 8),
                        ("value_edges", parameters["value_edges"][::-1])):
        with pytest.raises(ValueError, match=key):
            calibration_file.Calibration.from_json({**record, "channels": {"DAPI": {**parameters, key: broken}}})
    missing = {key: value for key, value in parameters.items() if key != "histograms"}
    with pytest.raises(ValueError, match="need all"):
        calibration_file.Calibration.from_json({**record, "channels": {"DAPI": missing}})
