"""The ridge read-out's model: box means, the linear map, the file, and the tiled core runner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isl import errors
from isl.eval import calibration as calibration_lib
from isl.model import readout as readout_lib


def _readout(embedding_size=3, radii=(1, 2), targets=("DAPI_CONFOCAL", "MAP2_CONFOCAL"), seed=0):
    rng = np.random.default_rng(seed)
    features = embedding_size * (1 + len(radii))
    return readout_lib.Readout(
        targets=targets, radii=radii, feature_mean=rng.normal(size=features),
        feature_scale=rng.uniform(0.5, 2.0, size=features), weights=rng.normal(size=(features, len(targets))) * 0.1,
        intercept=np.array([0.4, 0.6])[: len(targets)], penalty=3.0,
        spread_weights=rng.normal(size=(features, len(targets))) * 0.1, spread_intercept=np.array([-6.0, -5.0]),
        record={"pixels": 12},
    )


def test_box_mean_is_the_reflect_padded_window_mean():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(9, 11, 2)).astype(np.float32)
    radius = 2
    padded = np.pad(images, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    expected = np.zeros_like(images)
    for row in range(9):
        for column in range(11):
            expected[row, column] = padded[row : row + 2 * radius + 1, column : column + 2 * radius + 1].mean((0, 1))
    np.testing.assert_allclose(readout_lib.box_mean(images, radius), expected, atol=1e-6)


def test_predict_equals_standardized_features_times_weights():
    readout = _readout()
    embedding = np.random.default_rng(2).normal(size=(10, 7, 3)).astype(np.float32)
    features = readout_lib.features(embedding, readout.radii)
    assert features.shape == (70, 9)
    expected = readout.intercept + ((features - readout.feature_mean) / readout.feature_scale) @ readout.weights
    predicted = readout.predict(embedding)
    assert predicted.shape == (10, 7, 2) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted.reshape(-1, 2), np.clip(expected, 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        readout.predict(embedding[..., :2])
    value, spread = readout.predict_distribution(embedding)
    np.testing.assert_allclose(np.clip(value, 0, 1), predicted, atol=1e-6)
    log_square = readout.spread_intercept + ((features - readout.feature_mean) / readout.feature_scale) @ (
        readout.spread_weights)
    np.testing.assert_allclose(spread.reshape(-1, 2), np.exp((log_square + readout_lib.LOG_SQUARE_OFFSET) / 2),
                               rtol=1e-4)


def test_statistics_of_the_clipped_normal_distribution():
    value = np.array([[[0.5, 0.98, -0.2]]], np.float32)
    spread = np.array([[[0.1, 0.1, 0.05]]], np.float32)
    images = readout_lib.statistic_images(value, spread, ["median", "std", "q05", "q95", "mean"])
    assert list(images) == ["median", "std", "q05", "q95", "mean"]
    np.testing.assert_allclose(images["median"][0, 0], [0.5, 0.98, 0.0])
    np.testing.assert_allclose(images["q05"][0, 0], [0.5 - 0.1644854, 0.98 - 0.1644854, 0.0], atol=1e-6)
    np.testing.assert_allclose(images["q95"][0, 0], [0.5 + 0.1644854, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(images["std"][0, 0], [0.1, 0.1, 0.05])
    with pytest.raises(errors.InputError, match="not entropy"):
        readout_lib.statistic_images(value, spread, ["median", "entropy"])


def test_interval_coverage_of_a_calibrated_normal_is_its_level():
    rng = np.random.default_rng(4)
    value, spread = np.full(200_000, 0.5), rng.uniform(0.01, 0.1, 200_000)
    truth = value + spread * rng.normal(size=200_000)
    assert abs(readout_lib.interval_coverage(value, spread, truth, 0.5) - 0.5) < 0.01
    assert abs(readout_lib.interval_coverage(value, spread, truth, 0.9) - 0.9) < 0.01
    assert readout_lib.interval_coverage(value, spread / 4, truth, 0.9) < 0.5


def test_the_file_round_trips_and_a_damaged_one_names_itself(tmp_path):
    readout = _readout()
    path = str(tmp_path / "readout.json")
    readout_lib.save(readout, path)
    loaded = readout_lib.load(path)
    assert loaded.targets == readout.targets and loaded.radii == readout.radii and loaded.record == {"pixels": 12}
    np.testing.assert_array_equal(loaded.weights, readout.weights)
    np.testing.assert_array_equal(loaded.feature_scale, readout.feature_scale)
    np.testing.assert_array_equal(loaded.spread_weights, readout.spread_weights)
    np.testing.assert_array_equal(loaded.spread_intercept, readout.spread_intercept)
    data = json.load(open(path))
    data["weights"] = data["weights"][:-1]
    with open(path, "w") as file:
        json.dump(data, file)
    with pytest.raises(errors.InputError, match=r"readout\.json: not a valid read-out"):
        readout_lib.load(path)


@pytest.mark.parametrize("radii", [(0, 2), (4, 2), (2, 2)])
def test_radii_must_be_distinct_positive_and_increasing(radii):
    with pytest.raises(errors.InputError, match="--radii"):
        readout_lib.check_radii(radii)


def test_statistics_of_a_calibrated_readout_come_from_its_bins_by_the_heads_rules():

    # Two groups by value (edge 0.5), one by spread; the dark group's histogram is all at level 50, weight 0.6.
    histograms = np.full((2, 256), 1e-9)
    histograms[0, 50] = 1.0
    histograms[1] = 1 / 256
    histograms /= histograms.sum(axis=1, keepdims=True)
    parameters = {"spread_scale": 1.0, "value_edges": [0.5], "spread_edges": [], "histogram_weights": [0.6, 0.0],
                  "histograms": histograms.tolist()}
    value, spread = np.array([[0.4, 0.7]]), np.array([[0.02, 0.05]])
    distribution = calibration_lib.ReadoutDistribution.of(parameters, value, spread)
    images = readout_lib.bin_statistic_images(distribution, ["median", "q05", "q95", "mean", "std"], chunk=1)
    probabilities = distribution.bin_probabilities(np.arange(2))
    levels = np.arange(256) / 255
    for name, quantile in (("q05", 0.05), ("q95", 0.95)):  # The number of bins whose cumulative sum is < q.
        np.testing.assert_allclose(images[name][0], (np.cumsum(probabilities, -1) < quantile).sum(-1) / 255)
    assert images["q05"][0, 0] == pytest.approx(50 / 255)  # 60% of the dark pixel's mass sits on level 50.
    np.testing.assert_allclose(images["median"], value)  # The read-out's own value (the better Pearson r).
    np.testing.assert_allclose(images["mean"][0], probabilities @ levels, rtol=1e-6)
    np.testing.assert_allclose(images["std"][0, 1], 0.05, rtol=0.02)  # The bright pixel: its normal curve alone.
