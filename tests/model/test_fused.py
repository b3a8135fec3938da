"""`train.fused_elementwise`: XLA-fused element-wise layers give the same model."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from isl.model import builder
from isl.model import layers as isl_layers
from isl.model import losses


def _fused_config(config, fused: bool, precision: str = ""):
    """`fused` turns on both speed options: fused_elementwise and fast_batch_norm."""
    return dataclasses.replace(
        config,
        train=dataclasses.replace(
            config.train, fused_elementwise=fused, fast_batch_norm=fused, mixed_precision=precision
        ),
    )


@pytest.mark.parametrize("precision, tolerance", [("", 1e-5), ("bfloat16", 3e-2)])
def test_fused_model_matches_the_faithful_model(tiny_config, precision, tolerance):
    models = []
    for fused in (False, True):
        keras.utils.set_random_seed(0)
        models.append(builder.build_model(_fused_config(tiny_config, fused, precision)))
    plain, fused = models
    fused.set_weights(plain.get_weights())
    assert [layer.name for layer in plain.layers] == [layer.name for layer in fused.layers]
    assert any(getattr(layer, "fused", False) for layer in fused.layers)
    assert any(getattr(layer, "eigen_odd_depths", False) for layer in fused.layers)
    rng = np.random.default_rng(0)
    from isl.model import geometry

    geo = geometry.geometry(tiny_config.model)
    inputs = tf.constant(
        rng.random((2, geo.input_size, geo.input_size, tiny_config.channels.num_input_features), np.float32)
    )
    labels = rng.random((2, geo.output_size, geo.output_size, tiny_config.channels.num_heads, 2), np.float32)
    labels[..., 1] = 1.0
    loss = losses.ISLLoss(tiny_config.channels)
    results = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            value = loss(labels, logits)
        gradients = tape.gradient(value, model.trainable_variables)
        results.append((logits.numpy(), float(value), [g.numpy() for g in gradients]))
    (plain_logits, plain_loss, plain_grads), (fused_logits, fused_loss, fused_grads) = results
    np.testing.assert_allclose(fused_logits, plain_logits, atol=tolerance * 10, rtol=tolerance)
    assert abs(fused_loss - plain_loss) <= tolerance * abs(plain_loss)
    # Per variable, against the largest gradient of the model (some gradients,
    # e.g. of a bias before batch norm, are zero up to rounding).
    largest = max(np.abs(grad).max() for grad in plain_grads)
    for plain_grad, fused_grad in zip(plain_grads, fused_grads):
        assert np.abs(fused_grad - plain_grad).max() <= 20 * tolerance * largest
    plain_vector = np.concatenate([grad.ravel() for grad in plain_grads])
    fused_vector = np.concatenate([grad.ravel() for grad in fused_grads])
    assert np.linalg.norm(fused_vector - plain_vector) <= 10 * tolerance * np.linalg.norm(plain_vector)


def test_fused_layers_values_and_gradients():
    rng = np.random.default_rng(1)
    values = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))
    extra = tf.constant(rng.normal(size=(2, 3, 3, 3)).astype(np.float32))
    for make in (
        lambda fused: isl_layers.DualActivation(fused=fused),
        lambda fused: (lambda pair: isl_layers.MismatchedDepthAdd(pad=True, fused=fused)(pair)),
        lambda fused: (lambda pair: isl_layers.ChannelConcat(fused=fused)(pair)),
    ):
        outputs = []
        for fused in (False, True):
            layer = make(fused)
            with tf.GradientTape() as tape:
                tape.watch([values, extra])
                result = layer(values) if isinstance(layer, isl_layers.DualActivation) else layer([values, extra])
                weighted = tf.reduce_sum(result * tf.range(result.shape[-1], dtype=tf.float32))
            gradients = tape.gradient(weighted, [values, extra])
            outputs.append([result.numpy()] + [g.numpy() if g is not None else 0 for g in gradients])
        for plain, fused in zip(*outputs):
            np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-6)


def test_fused_flag_survives_keras_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = isl_layers.DualActivation(fused=True, name="act")(inputs)
    outputs = isl_layers.ChannelConcat(fused=True, name="cat")([outputs, inputs])
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("act").fused and loaded.get_layer("cat").fused
    array = np.random.default_rng(2).normal(size=(1, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(array).numpy(), model(array).numpy(), rtol=1e-6)


def test_eigen_batch_norm_matches_onednn_and_updates_moving_statistics():
    rng = np.random.default_rng(3)
    values = tf.constant(rng.normal(2.0, 3.0, size=(4, 5, 5, 6)).astype(np.float32))  # depth 6: odd for oneDNN
    layers = [isl_layers.FusedBatchNormalization(momentum=0.9, eigen_odd_depths=flag) for flag in (False, True)]
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = layer(values, training=True)
            weighted = tf.reduce_sum(out * tf.range(6, dtype=tf.float32))
        results.append((out.numpy(), tape.gradient(weighted, values).numpy(),
                        layer.moving_mean.numpy(), layer.moving_variance.numpy(),
                        layer(values, training=False).numpy()))
    for plain, eigen in zip(*results):
        np.testing.assert_allclose(eigen, plain, rtol=1e-5, atol=1e-5)
    assert layers[1].get_config()["eigen_odd_depths"] is True
