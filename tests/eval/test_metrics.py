"""Metrics on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isl.eval import metrics


def test_pearson_of_an_affine_image_is_one_and_of_its_negation_minus_one():
    x = np.random.default_rng(0).random((20, 30))
    assert metrics.pearson(2 * x + 1, x) == pytest.approx(1.0, abs=1e-12)
    assert metrics.pearson(-x, x) == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(metrics.pearson(np.ones((4, 4)), x[:4, :4]))


def test_mask_restricts_every_metric_to_the_true_pixels():
    truth = np.zeros((12, 12))
    prediction = np.zeros((12, 12))
    prediction[:, 6:] = 0.5  # Wrong only where the mask is off.
    mask = np.zeros((12, 12), bool)
    mask[:, :6] = True
    assert metrics.mae(prediction, truth, mask) == 0
    assert metrics.rmse(prediction, truth) == pytest.approx(math.sqrt(0.125))
    assert metrics.psnr(prediction, truth, mask) == math.inf


def test_mae_rmse_and_psnr_on_a_constant_offset():
    truth = np.full((8, 8), 0.25)
    prediction = truth + 0.1
    assert metrics.mae(prediction, truth) == pytest.approx(0.1)
    assert metrics.rmse(prediction, truth) == pytest.approx(0.1)
    assert metrics.psnr(prediction, truth) == pytest.approx(20.0)


def test_ssim_is_one_for_equal_images_and_matches_tensorflow():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    truth = rng.random((40, 37)).astype(np.float32)
    prediction = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
    expected = float(tf.image.ssim(prediction[..., None], truth[..., None], max_val=1.0))
    assert metrics.ssim(prediction, truth) == pytest.approx(expected, abs=1e-4)


def test_histogram_counts_every_selected_pixel_on_the_diagonal_for_equal_images():
    x = np.random.default_rng(2).random((10, 10))
    counts = metrics.histogram_2d(x, x, bins=16)
    assert counts.sum() == 100
    assert np.trace(counts) == 100


def test_band_by_band_metrics_equal_the_whole_image_ones():
    rng = np.random.default_rng(3)
    truth = rng.random((53, 41)).astype(np.float32)
    prediction = np.clip(truth + rng.normal(0, 0.2, truth.shape), 0, 1).astype(np.float32)
    prediction[4, 7] = np.nan
    mask = rng.random(truth.shape) > 0.2
    for band_rows in (1, 7, 16, 1000):
        banded = metrics.image_metrics(prediction, truth, mask, band_rows=band_rows)
        assert banded["pearson_r"] == pytest.approx(metrics.pearson(prediction, truth, mask), rel=1e-12)
        assert banded["mae"] == pytest.approx(metrics.mae(prediction, truth, mask), rel=1e-12)
        assert banded["rmse"] == pytest.approx(metrics.rmse(prediction, truth, mask), rel=1e-12)
        assert banded["psnr_db"] == pytest.approx(metrics.psnr(prediction, truth, mask), rel=1e-12)
        assert banded["ssim"] == pytest.approx(metrics.ssim(prediction, truth, mask), rel=1e-12)
        assert banded["num_pixels"] == int(mask.sum()) - int(mask[4, 7])
        whole = np.histogram2d(*(np.clip(values, 0, 1) for values in metrics._select(prediction, truth, mask)),
                               bins=128, range=((0, 1), (0, 1)))[0]
        np.testing.assert_array_equal(metrics.histogram_2d(prediction, truth, mask, band_rows=band_rows), whole)
    assert metrics.image_metrics(prediction, truth, None, band_rows=5)["ssim"] == pytest.approx(
        metrics.ssim(prediction, truth), rel=1e-12)
