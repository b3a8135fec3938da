"""Tests for the released augmentation list: dihedral moves and input corruption."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from isl.data import augment


def test_rot90_matches_numpy_for_every_k_and_rank():
    batch = np.arange(2 * 4 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 4, 3, 2)
    for k in range(4):
        assert np.array_equal(augment.rot90(tf.constant(batch), tf.constant(k)).numpy(),
                              np.rot90(batch, k, axes=(1, 2)))
        assert np.array_equal(augment.rot90(tf.constant(batch[..., 0, 0]), tf.constant(k)).numpy(),
                              np.rot90(batch[..., 0, 0], k, axes=(1, 2)))


def test_flip_reverses_columns_of_every_tensor_together():
    image = np.arange(12).reshape(3, 4)
    flipped = augment.flip_left_right([tf.constant(image), tf.constant(image[..., None])], tf.constant(True))
    assert np.array_equal(flipped[0].numpy(), image[:, ::-1]) and np.array_equal(flipped[1].numpy()[..., 0],
                                                                                 image[:, ::-1])
    kept = augment.flip_left_right([tf.constant(image)], tf.constant(False))
    assert np.array_equal(kept[0].numpy(), image)


def test_corruption_changes_values_only_clips_and_is_off_by_default():
    values = np.full((4, 5, 5, 3), 0.5, np.float32)
    masks = np.ones_like(values)
    inputs = tf.constant(np.stack([values, masks], axis=-1).reshape(4, 5, 5, 6))
    seed = tf.constant([1, 2], tf.int64)
    assert augment.corrupt(inputs, seed) is inputs
    changed = [augment.corrupt(inputs, tf.constant([s, 0], tf.int64), 0.1, 0.05, 0.3).numpy() for s in range(8)]
    assert all(np.array_equal(result[..., 1::2], masks) for result in changed)
    assert any(not np.array_equal(result[..., 0::2], values) for result in changed)
    assert all(0.0 <= result.min() and result.max() <= 1.0 for result in changed)
