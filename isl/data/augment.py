"""Augmentation, exactly the released list (isl_reference.md §3.6), as pure tf functions.

1. Flip: left-right with p = 0.5, drawn independently per example (crop).
2. Rotation: k * 90 degrees, k uniform in {0, 1, 2, 3}, one k per batch.
   Flip and rotation move inputs, targets and masks together (the
   8-element dihedral group).
3. Corruption of the input *values* only (not masks, not targets), each part
   switched on with p = 0.5 per batch: a gain N(1, sigma_mult) and an offset
   N(0, sigma_off) per (image, z value), per-pixel noise N(0, sigma_noise),
   then clipping to [0, 1]. Off by default (all sigmas 0).

Randomness is stateless: every function takes a `[2]` int seed, so a seeded
pipeline is reproducible.
"""

from __future__ import annotations

import tensorflow as tf


def sub_seed(seed: tf.Tensor, index: int) -> tf.Tensor:
    """An independent `[2]` seed derived from `seed` for draw number `index`."""
    return tf.random.experimental.stateless_fold_in(seed, index)


def random_flip(seed: tf.Tensor) -> tf.Tensor:
    """A boolean scalar, True with p = 0.5."""
    return tf.random.stateless_uniform([], seed) < 0.5


def flip_left_right(tensors: list[tf.Tensor], flip: tf.Tensor) -> list[tf.Tensor]:
    """Reverses axis 1 (columns) of every `[height, width, ...]` tensor when `flip`."""
    return [tf.cond(flip, lambda t=t: tf.reverse(t, axis=[1]), lambda t=t: t) for t in tensors]


def random_rotation(seed: tf.Tensor) -> tf.Tensor:
    """k in {0, 1, 2, 3} (int32 scalar), uniform."""
    return tf.random.stateless_uniform([], seed, minval=0, maxval=4, dtype=tf.int32)


def rot90(tensor: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Rotates axes (1, 2) of `[batch, size, size, ...]` by k * 90 degrees.

    The same convention as `np.rot90(x, k, axes=(1, 2))` (counter-clockwise).
    The two spatial axes must have equal length.
    """
    rank = tensor.shape.rank
    swap = [0, 2, 1] + list(range(3, rank))

    def rotate_1():
        return tf.transpose(tf.reverse(tensor, axis=[2]), swap)

    def rotate_2():
        return tf.reverse(tensor, axis=[1, 2])

    def rotate_3():
        return tf.reverse(tf.transpose(tensor, swap), axis=[2])

    return tf.switch_case(tf.math.floormod(k, 4), [lambda: tensor, rotate_1, rotate_2, rotate_3])


def random_rotations(seed: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """`[count]` int32 k in {0, 1, 2, 3}, uniform and independent."""
    return tf.random.stateless_uniform(tf.reshape(count, [1]), seed, minval=0, maxval=4, dtype=tf.int32)


def rotate_examples(tensors: list[tf.Tensor], ks: tf.Tensor) -> list[tf.Tensor]:
    """Rotates example i of every `[batch, size, size, ...]` tensor by ks[i] * 90 degrees.

    Same convention as `rot90`; `ks` is `[batch]` int32.
    """
    rotated = []
    for tensor in tensors:
        candidates = tf.stack([rot90(tensor, tf.constant(k)) for k in range(4)], axis=0)
        index = tf.stack([tf.math.floormod(ks, 4), tf.range(tf.shape(tensor)[0], dtype=ks.dtype)], axis=1)
        rotated.append(tf.gather_nd(candidates, index))
    return rotated


def rotate_batch(tensors: list[tf.Tensor], k: tf.Tensor) -> list[tf.Tensor]:
    """Rotates every `[batch, size, size, ...]` tensor by the same k * 90 degrees."""
    return [rot90(tensor, k) for tensor in tensors]


def corrupt(
    inputs: tf.Tensor,
    seed: tf.Tensor,
    offset_std: float = 0.0,
    multiplier_std: float = 0.0,
    noise_std: float = 0.0,
) -> tf.Tensor:
    """Gain, offset and noise on the values of network inputs, then clip to [0, 1].

    Args:
        inputs: `[batch, height, width, 2 * z]` interleaved value/mask pairs;
            only the value channels (even indices) are changed.
        seed: `[2]` int seed.
        offset_std, multiplier_std, noise_std: sigmas; 0 switches a part off.

    Each part with a nonzero sigma is applied with p = 0.5 (one coin per
    call, i.e. per batch); gain and offset are drawn per (image, z value),
    noise per pixel. With every sigma 0 the input is returned as is.
    """
    if not (offset_std or multiplier_std or noise_std):
        return inputs
    shape = tf.shape(inputs)
    num_z = inputs.shape[-1] // 2
    per_image_z = tf.stack([shape[0], 1, 1, num_z])
    coins = tf.random.stateless_uniform([3], sub_seed(seed, 0)) < 0.5

    def on_values(per_z: tf.Tensor, fill: float) -> tf.Tensor:
        """`[batch, 1, 1, z]` -> `[batch, 1, 1, 2z]` with `fill` on the mask channels."""
        interleaved = tf.stack([per_z, tf.fill(tf.shape(per_z), fill)], axis=-1)
        return tf.reshape(interleaved, tf.stack([shape[0], 1, 1, 2 * num_z]))

    result = inputs
    if multiplier_std:
        gain = 1.0 + multiplier_std * tf.random.stateless_normal(per_image_z, sub_seed(seed, 1))
        result = tf.where(coins[0], result * on_values(gain, 1.0), result)
    if offset_std:
        offset = offset_std * tf.random.stateless_normal(per_image_z, sub_seed(seed, 2))
        result = tf.where(coins[1], result + on_values(offset, 0.0), result)
    if noise_std:
        value_channels = tf.constant([1.0, 0.0] * num_z)
        noise = noise_std * tf.random.stateless_normal(shape, sub_seed(seed, 3)) * value_channels
        result = tf.where(coins[2], result + noise, result)
    return tf.clip_by_value(result, 0.0, 1.0)
