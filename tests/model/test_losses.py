"""The loss on hand-made cases (isl_reference.md §2)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from isl import config as config_lib
from isl.model import losses

NUM_CLASSES = 256


def _labels(values, masks):
    return np.stack([values, masks], axis=-1).astype(np.float32)


def test_all_zero_mask_gives_zero_loss_and_zero_gradient():
    rng = np.random.default_rng(0)
    logits = tf.Variable(rng.normal(size=(2, 3, 3, 3, NUM_CLASSES)).astype(np.float32))
    values = rng.random((2, 3, 3, 3)).astype(np.float32)
    masks = np.ones((2, 3, 3, 3), np.float32)
    masks[..., 1] = 0.0
    labels = _labels(values, masks)
    with tf.GradientTape() as tape:
        head_losses = losses.per_head_losses(labels, logits)
        total = tf.reduce_sum(head_losses)
    gradient = tape.gradient(total, logits).numpy()
    assert float(head_losses[1]) == 0.0
    assert np.all(gradient[..., 1, :] == 0.0)
    assert np.any(gradient[..., 0, :] != 0.0)
    assert float(losses.ISLLoss(num_input_heads=2, num_target_heads=1)(_labels(values, 0 * masks), logits)) == 0.0


def test_uniform_logits_give_one():
    labels = _labels(np.random.rand(2, 4, 4, 5), np.ones((2, 4, 4, 5)))
    head_losses = losses.per_head_losses(labels, np.zeros((2, 4, 4, 5, NUM_CLASSES), np.float32))
    np.testing.assert_allclose(head_losses, np.ones(5), rtol=1e-6)


def test_confident_correct_logits_give_almost_zero():
    values = np.array([0.0, 0.5, 1.0, 100 / 255], np.float32).reshape(1, 1, 1, 4)
    bins = [0, 128, 255, 100]  # round(0.5 * 255) = round(127.5) = 128 (half to even)
    logits = np.full((1, 1, 1, 4, NUM_CLASSES), -20.0, np.float32)
    for head, index in enumerate(bins):
        logits[0, 0, 0, head, index] = 20.0
    head_losses = losses.per_head_losses(_labels(values, np.ones_like(values)), logits)
    assert np.all(np.asarray(head_losses) < 1e-6)


def test_mean_over_nonzero_weight_pixels_and_ln256():
    logits = np.zeros((1, 2, 1, 1, NUM_CLASSES), np.float32)
    logits[0, 0, 0, 0, 7] = 5.0  # Pixel 0: a confident, correct prediction of bin 7.
    values = np.array([7 / 255, 3 / 255], np.float32).reshape(1, 2, 1, 1)
    # Only pixel 1 (uniform prediction) counts: its loss is ln 256 / ln 256.
    masks = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1)
    assert float(losses.per_head_losses(_labels(values, masks), logits)[0]) == pytest.approx(1.0, rel=1e-6)
    # Weights scale the numerator; the denominator counts nonzero weights.
    masks = np.array([1.0, 0.5], np.float32).reshape(1, 2, 1, 1)
    pixel0 = -math.log(math.exp(5) / (math.exp(5) + 255)) / math.log(256)
    expected = (pixel0 + 0.5 * 1.0) / 2
    assert float(losses.per_head_losses(_labels(values, masks), logits)[0]) == pytest.approx(expected, rel=1e-5)


def test_total_is_half_input_mean_half_target_mean_over_all_heads():
    channels = config_lib.ChannelConfig(num_z_values=2, target_channels=("DAPI_CONFOCAL", "MAP2_CONFOCAL"),
                                        synthetic_channels=())
    loss = losses.ISLLoss(channels)
    logits = np.zeros((1, 1, 1, 4, NUM_CLASSES), np.float32)
    masks = np.array([1, 0, 1, 0], np.float32).reshape(1, 1, 1, 4)  # one present head per group
    labels = _labels(np.zeros((1, 1, 1, 4), np.float32), masks)
    # Each group: mean over its 2 heads, (1 + 0) / 2; total 0.5 * 0.5 + 0.5 * 0.5.
    assert float(loss(labels, logits)) == pytest.approx(0.5, rel=1e-6)
    restored = losses.ISLLoss.from_config(loss.get_config())
    assert (restored.num_input_heads, restored.num_target_heads) == (2, 2)
    assert isinstance(keras.losses.deserialize(keras.losses.serialize(loss)), losses.ISLLoss)


def test_class_labels_round_half_to_even_and_clip():
    values = np.array([-0.1, 0.5, 1.5, 1 / 510, 3 / 510], np.float32)
    np.testing.assert_array_equal(losses.class_labels(values, 256), [0, 128, 255, 0, 2])
