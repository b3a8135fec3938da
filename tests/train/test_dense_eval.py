"""Tests for the bounded-memory parts of the in-training evaluation (`isl.train.dense_eval`)."""

from __future__ import annotations

import numpy as np

from isl.eval import metrics
from isl.train import dense_eval
from tests.train.conftest import fast_config


def test_streamed_target_statistics_equal_the_pooled_whole_images(records_dir, monkeypatch):
    config = fast_config()
    images = dense_eval.load_split_images(records_dir, config, split="train")
    expected = dense_eval.pooled_statistics([
        [image.targets[name][0][image.targets[name][1]] for image in images if name in image.targets]
        for name in config.channels.output_target_channels
    ])
    monkeypatch.setattr(dense_eval, "BAND_PIXELS", 1000)  # many bands per 160 x 160 well
    means, stds = dense_eval.target_statistics(records_dir, config)
    np.testing.assert_allclose(means, expected[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stds, expected[1], rtol=1e-9, atol=1e-12)
    assert (0.0, 1.0) in zip(means, stds)  # a channel without labels
    assert any(std not in (1.0,) for std in stds)


def test_pooled_moments_give_the_pearson_of_the_concatenated_pixels():
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=n) + 3, rng.normal(size=n)) for n in (5, 1000, 37)]
    for x, y in parts:
        y += 0.5 * x
    moments = dense_eval.Moments()
    for x, y in parts:
        moments.add(x, y)
    x_all, y_all = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    assert abs(moments.pearson - metrics.pearson(x_all, y_all)) < 1e-12
    assert abs(moments.std_x - x_all.std()) < 1e-12
    constant = dense_eval.Moments()
    constant.add(np.ones(4), np.arange(4.0))
    assert np.isnan(constant.pearson)


def test_the_tiled_regression_prediction_is_assembled_where_each_tile_belongs(monkeypatch):
    """Tiles whose context (the 96-px output side) covers the image see all of it: tiling must equal the whole pass."""
    from isl import presets
    from isl.model import builder

    overrides = ["model.unet_levels=2", "model.unet_filters=4", "model.output_size=96", "channels.num_z_values=2"]
    config = presets.resolve_config("condition_b", recipe="unet_regression", overrides=overrides)
    n = len(config.channels.output_target_channels)
    config = presets.resolve_config("condition_b", recipe="unet_regression", overrides=overrides + [
        f"model.regression_target_mean={[0.2] * n}", f"model.regression_target_std={[0.1] * n}"])
    callback = dense_eval.DensePearson.__new__(dense_eval.DensePearson)
    callback.config = config
    callback._inference_model = builder.build_model(config, input_size=None)
    stack = np.random.default_rng(1).uniform(size=(13, 70, 90)).astype(np.float32)
    whole = callback._regression_prediction(stack)
    monkeypatch.setattr(dense_eval, "REGRESSION_WHOLE_PIXELS", 100)
    monkeypatch.setattr(dense_eval, "REGRESSION_TILE", 32)  # 3 x 3 tiles, the last ones partial
    tiled = callback._regression_prediction(stack)
    assert tiled.shape == whole.shape == (70, 90, n)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert np.ptp(whole) > 0
