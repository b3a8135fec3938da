"""Real (randomly initialised) models: dense == patch-wise, tiled == untiled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isl import presets
from isl.infer import predict
from isl.model import builder
from isl.model import geometry as geometry_lib


def _config(phase_like_paper: bool, output_size: int = 8):
    config = presets.get_preset("tiny")
    if phase_like_paper:
        # Five scales (phase 16) and output 8, like the paper model: two
        # phase classes (shifts 0 and 8) per axis, but tiny depths. With
        # output 24 (the shipped checkpoint's): one class, 16-px blocks.
        model = dataclasses.replace(
            config.model, num_scales=5, lower_modules_scale_0=4, lower_modules_step=1, upper_tower_modules=6,
            output_size=output_size,
        )
        config = dataclasses.replace(config, model=model)
    return config


@pytest.fixture(scope="module")
def tiny():
    config = _config(False)
    return config, builder.build_model(config)


@pytest.fixture(scope="module")
def paper_like():
    config = _config(True)
    return config, builder.build_model(config)


@pytest.fixture(scope="module")
def paper_like_24():
    config = _config(True, output_size=24)
    return config, builder.build_model(config)


def _stack(num_z: int, height: int, width: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((num_z, height, width), dtype=np.float32)


def _target_heads(config) -> list[int]:
    return list(range(config.channels.num_input_heads, config.channels.num_heads))[:2]


@pytest.mark.parametrize("which", ["tiny", "paper_like", "paper_like_24"])
def test_dense_prediction_equals_the_patchwise_reference(which, request):
    config, model = request.getfixturevalue(which)
    geometry = geometry_lib.geometry(config.model)
    if which == "paper_like":
        assert (geometry.phase, geometry.output_size) == (16, 8)
    heads = _target_heads(config)
    logits_fn = predict.Network.from_keras(model, heads)
    shape = {"tiny": (21, 35), "paper_like": (16, 20), "paper_like_24": (40, 37)}[which]
    stack = _stack(13, *shape)
    run = predict.make_run_function(logits_fn, ("median", "mean"), with_distributions=True)
    dense = predict.predict_image(
        logits_fn, stack, geometry, config.channels.num_z_values, statistics=("median", "mean"), run_function=run
    )
    reference = predict.predict_patchwise(
        logits_fn, stack, geometry, config.channels.num_z_values, statistics=("median", "mean"),
        run_function=run, batch_size=64,
    )
    assert dense.statistics["distribution"].shape == shape + (2, config.model.num_classes)
    if which == "paper_like_24":  # Stride-16 patches, 16 of each 24-px output; one run.
        assert dense.info["num_runs"] == 1 and dense.info["block"] == 16
    difference = np.abs(dense.statistics["distribution"] - reference["distribution"]).max()
    assert difference <= 1e-5
    np.testing.assert_allclose(dense.statistics["mean"], reference["mean"], atol=1e-5)
    # Medians are bin indices / 255: equal unless a cumulative sum sits at 0.5.
    assert np.mean(dense.statistics["median"] == reference["median"]) > 0.999


def test_paper_like_dense_run_without_the_second_phase_class_would_be_wrong(paper_like):
    """Guards the test above: the 8-px shifted blocks really differ."""
    config, model = paper_like
    geometry = geometry_lib.geometry(config.model)
    size = geometry.input_size + geometry.phase
    inputs = np.random.default_rng(0).random((1, size, size, 2 * config.channels.num_z_values), dtype=np.float32)
    dense = np.asarray(model(inputs, training=False))
    shifted = np.asarray(model(inputs[:, 8 : 8 + geometry.input_size, 8 : 8 + geometry.input_size], training=False))
    aligned = np.asarray(model(inputs[:, 16 : 16 + geometry.input_size, 16 : 16 + geometry.input_size], training=False))
    np.testing.assert_allclose(dense[:, 16:24, 16:24], aligned, atol=1e-4)
    assert np.abs(dense[:, 8:16, 8:16] - shifted).max() > 1e-3


@pytest.mark.parametrize("border_mode", ["reflect", "valid"])
def test_tiled_prediction_equals_untiled(tiny, border_mode):
    config, model = tiny
    geometry = geometry_lib.geometry(config.model)
    heads = _target_heads(config)
    logits_fn = predict.Network.from_keras(model, heads)
    stack = _stack(13, 83, 70, seed=5)
    statistics = ("median", "mean", "std", "q05", "q95")
    run = predict.make_run_function(logits_fn, ("median", "mean", "std"), (0.05, 0.95))
    whole = predict.predict_image(
        logits_fn, stack, geometry, config.channels.num_z_values, statistics=statistics,
        border_mode=border_mode, run_function=run,
    )
    tiled = predict.predict_image(
        logits_fn, stack, geometry, config.channels.num_z_values, statistics=statistics,
        border_mode=border_mode, tile_size=geometry.input_size + 3 * geometry.phase, batch_size=3, run_function=run,
    )
    assert tiled.info["num_runs"] > whole.info["num_runs"] == 1
    assert whole.statistics["median"].shape == (whole.region.height, whole.region.width, 2)
    for name in ("mean", "std"):
        np.testing.assert_allclose(tiled.statistics[name], whole.statistics[name], atol=1e-5)
    for name in ("median", "q05", "q95"):
        assert np.mean(tiled.statistics[name] == whole.statistics[name]) > 0.999
    assert np.all(whole.statistics["q05"] <= whole.statistics["median"])
    assert np.all(whole.statistics["median"] <= whole.statistics["q95"])


def test_calibration_values_match_a_numpy_reference(tiny):
    from isl.eval import calibration

    config, model = tiny
    geometry = geometry_lib.geometry(config.model)
    heads = _target_heads(config)
    logits_fn = predict.Network.from_keras(model, heads)
    stack = _stack(13, 16, 24, seed=7)
    truth = np.random.default_rng(8).random((16, 24, 2)).astype(np.float32)
    masks = np.ones_like(truth)
    masks[:4, :, 1] = 0
    run = predict.make_run_function(logits_fn, ("median",), with_truth=True, with_distributions=True)
    result = predict.predict_image(
        logits_fn, stack, geometry, config.channels.num_z_values, run_function=run, truth=(truth, masks),
    )
    probability, below = calibration.bin_statistics(result.statistics["distribution"], truth)
    got = result.calibration
    assert np.isnan(got["true_bin_probability"][:4, :, 1]).all()
    keep = masks > 0
    np.testing.assert_allclose(got["true_bin_probability"][keep], probability[keep], atol=1e-6)
    np.testing.assert_allclose(got["cdf_below_true"][keep], below[keep], atol=1e-5)
    crps = calibration.discrete_crps(result.statistics["distribution"], truth)
    np.testing.assert_allclose(got["crps"][keep], crps[keep], atol=1e-5)


def test_temperatures_divide_each_heads_logits_before_the_softmax(tiny):
    config, model = tiny
    geometry = geometry_lib.geometry(config.model)
    network = predict.Network.from_keras(model, _target_heads(config))
    stack = _stack(13, 16, 24, seed=9)
    plain = predict.predict_image(network, stack, geometry, config.channels.num_z_values, statistics=(),
                                  run_function=predict.make_run_function(network, (), with_log_probabilities=True))
    tempered = predict.predict_image(
        network, stack, geometry, config.channels.num_z_values, statistics=("mean",),
        run_function=predict.make_run_function(network, ("mean",), with_distributions=True, temperatures=(2.0, 0.5)))
    log_probabilities = plain.statistics["log_probabilities"]
    for head, temperature in enumerate((2.0, 0.5)):
        scaled = log_probabilities[..., head, :] / temperature
        expected = np.exp(scaled - scaled.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(tempered.statistics["distribution"][..., head, :], expected, atol=1e-5)


def test_grouped_quantiles_equal_the_reference_median_rule():
    from isl.model import statistics as statistics_lib

    logits = np.random.default_rng(11).normal(size=(4000, 256)).astype(np.float32) * 3
    logits[:1000, 40] += 12  # Peaked distributions, as trained models give.
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    got = np.asarray(predict.quantile_indices(probabilities, (0.5, 0.05, 0.95)))
    median = np.asarray(statistics_lib.distribution_statistics(probabilities, ("median",))["median"]) * 255
    np.testing.assert_array_equal(got[:, 0], median)
    cumulative = np.cumsum(probabilities.astype(np.float64), axis=-1)
    for column, quantile in enumerate((0.05, 0.95)):
        np.testing.assert_array_equal(got[:, column + 1], np.minimum((cumulative < quantile).sum(-1), 255))
