"""Micro-architecture blocks and custom layers (isl_reference.md §1.2-§1.5)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from isl.model import blocks
from isl.model import layers as isl_layers


def test_next_even_and_depth_schedule():
    assert [blocks.next_even(value) for value in (1, 2, 2.1, 3, 10.5)] == [2, 2, 4, 4, 12]
    factor = 211 / 39
    # §1.5: the up block to 36 -> deconv with base 396 (r = 11), in-scale with 400 (r = 12).
    assert blocks.module_depths(396, 36, factor) == (60, 12)
    assert blocks.module_depths(400, 36, factor) == (66, 12)
    assert blocks.module_depths(400, 8, factor) == (272, 50)
    assert blocks.module_depths(400, 6, factor) == (364, 68)
    # The released expression (211/39)*r, not 211*r/39: they first differ at r = 741.
    assert blocks.size_to_depth(741, 1, factor, is_expand=True) == 4010
    with pytest.raises(ValueError):
        blocks.size_to_depth(400, 0, factor, is_expand=False)


def test_dual_activation_relu_first():
    values = np.array([[[[-1.0, 2.0]]]], np.float32)
    out = np.asarray(isl_layers.DualActivation()(values))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 2.0, np.tanh(-1.0), np.tanh(2.0)], rtol=1e-6)


def test_mismatched_depth_add_pads_at_end_or_crops_to_first():
    first = np.ones((1, 2, 2, 2), np.float32)
    second = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4) * np.ones((1, 2, 2, 4), np.float32)
    padded = np.asarray(isl_layers.MismatchedDepthAdd(pad=True)([first, second]))
    np.testing.assert_array_equal(padded[0, 0, 0], [1.0, 2.0, 2.0, 3.0])
    cropped = np.asarray(isl_layers.MismatchedDepthAdd(pad=False)([first, second]))
    np.testing.assert_array_equal(cropped[0, 0, 0], [1.0, 2.0])


def test_symmetric_pad_replicates_edges():
    values = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    out = np.asarray(isl_layers.SymmetricPad2D(1)(values))[0, :, :, 0]
    np.testing.assert_array_equal(out[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(out[:, 0], [0, 0, 2, 2])


def _apply(builder_fn, inputs_array):
    inputs = keras.Input(inputs_array.shape[1:])
    outputs = builder_fn(inputs)
    model = keras.Model(inputs, outputs)
    return model, np.asarray(model(inputs_array, training=False))


@pytest.mark.parametrize(
    "kernel, stride, transpose, size, expected",
    [(3, 1, False, 10, 8), (4, 2, False, 10, 4), (2, 2, True, 5, 10), (4, 2, True, 5, 12)],
)
def test_passthrough_sizes(kernel, stride, transpose, size, expected):
    values = np.random.rand(1, size, size, 3).astype(np.float32)
    _, out = _apply(
        lambda x: blocks.passthrough(
            x, kernel_size=kernel, stride=stride, transpose=transpose, settings=blocks.BlockSettings(), name="p"
        ),
        values,
    )
    assert out.shape == (1, expected, expected, 3)


def test_passthrough_values():
    values = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1)
    settings = blocks.BlockSettings()
    _, down = _apply(lambda x: blocks.passthrough(x, kernel_size=4, stride=2, transpose=False, settings=settings,
                                                  name="d"), values)
    # Crop 1 -> rows/cols 1..4, then 2x2 average: mean of [[7, 8], [13, 14]] = 10.5.
    assert down[0, 0, 0, 0] == pytest.approx(10.5)
    small = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    _, up = _apply(lambda x: blocks.passthrough(x, kernel_size=4, stride=2, transpose=True, settings=settings,
                                                name="u"), small)
    np.testing.assert_array_equal(up[0, :, 0, 0], [0, 0, 0, 2, 2, 2])
    np.testing.assert_array_equal(up[0, 0, :, 0], [0, 0, 0, 1, 1, 1])


def test_residual_unit_max_pool_after_conv_channels():
    values = np.random.rand(2, 9, 9, 3).astype(np.float32)
    model, out = _apply(
        lambda x: blocks.residual_v2_conv(
            x, kernel_size=3, stride=1, depth=5, add_max_pool=True, settings=blocks.BlockSettings(), name="u"
        ),
        values,
    )
    assert out.shape == (2, 7, 7, 8)
    pooled = np.asarray(keras.layers.MaxPooling2D(3, 1)(values))
    np.testing.assert_allclose(out[..., 5:], pooled)
    batch_norm = model.get_layer("u_bn")
    assert batch_norm.momentum == 0.999 and batch_norm.epsilon == 1e-3
    assert not model.get_layer("u_conv").use_bias
    assert model.get_layer("u_conv").kernel.shape == (3, 3, 6, 5)


def test_module_depth_floor_and_output_depth():
    values = np.random.rand(1, 12, 12, 20).astype(np.float32)
    records = []
    settings = blocks.BlockSettings(records=records)
    _, out = _apply(
        lambda x: blocks.minception_module(
            x,
            expansion_kernel=3,
            expansion_stride=1,
            expansion_depth=8,
            reduction_depth=6,
            transpose=False,
            depth_floor=True,
            settings=settings,
            name="m",
        ),
        values,
    )
    assert out.shape == (1, 10, 10, 20)
    record = records[0]
    assert (record.expansion_depth, record.reduction_depth, record.expand_output_depth) == (20, 20, 40)
    _, up = _apply(
        lambda x: blocks.minception_module(
            x,
            expansion_kernel=4,
            expansion_stride=2,
            expansion_depth=8,
            reduction_depth=6,
            transpose=True,
            depth_floor=False,
            settings=blocks.BlockSettings(),
            name="u",
        ),
        values,
    )
    assert up.shape == (1, 26, 26, 6)


def test_fused_batch_norm_matches_stock_layer():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 3.0, size=(4, 5, 5, 6)).astype(np.float32)
    fused = isl_layers.FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
    stock = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    for layer in (fused, stock):
        layer.build(values.shape)
        layer.gamma.assign(rng.normal(size=6).astype(np.float32))
        layer.beta.assign(rng.normal(size=6).astype(np.float32))
    stock.set_weights(fused.get_weights())
    np.testing.assert_allclose(fused(values, training=True), stock(values, training=True), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, stock.moving_mean, rtol=1e-5)
    count = 4 * 5 * 5
    # TF's fused kernel (as TF1's slim) updates with the Bessel-corrected variance.
    expected_variance = 0.9 + 0.1 * values.reshape(-1, 6).var(axis=0) * count / (count - 1)
    np.testing.assert_allclose(fused.moving_variance, expected_variance, rtol=1e-4)
    stock.set_weights(fused.get_weights())
    np.testing.assert_allclose(fused(values, training=False), stock(values, training=False), rtol=1e-4, atol=1e-4)
