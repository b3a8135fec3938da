"""Tests for the U-Net baseline core (`model.architecture="unet"`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isl.model import builder
from isl.model import geometry as geometry_lib
from isl.model import losses


def _unet(config, **fields):
    values = dict(architecture="unet", unet_levels=2, unet_filters=4, unet_context=12)
    values.update(fields)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **values))


def test_unet_takes_the_concordance_patches_and_gives_the_same_logit_shape(tiny_config):
    config = _unet(tiny_config)
    geometry = geometry_lib.geometry(config.model)
    reference = geometry_lib.geometry(tiny_config.model)
    assert (geometry.input_size, geometry.output_size) == (reference.input_size, reference.output_size)
    model = builder.build_model(config)
    rng = np.random.default_rng(0)
    for extra in (0, geometry.phase * 2):
        side = geometry.input_size + extra
        inputs = rng.random((2, side, side, config.channels.num_input_features), dtype=np.float32)
        logits = np.asarray(model(inputs, training=False))
        output = geometry.output_size + extra
        assert logits.shape == (2, output, output, config.channels.num_heads, config.model.num_classes)
    # The same loss applies, and it trains: one Adam step lowers it on a fixed batch.
    import keras
    labels = np.zeros((2, geometry.output_size, geometry.output_size, config.channels.num_heads, 2), np.float32)
    labels[..., 0] = rng.integers(0, 256, labels.shape[:-1])
    labels[..., 1] = 1.0
    inputs = rng.random((2, geometry.input_size, geometry.input_size, config.channels.num_input_features),
                        dtype=np.float32)
    # Eagerly: tracing the train and test steps would cost more than these few small steps.
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses.ISLLoss(config.channels), run_eagerly=True)
    before = model.evaluate(inputs, labels, verbose=0)
    model.fit(inputs, labels, epochs=5, verbose=0)
    assert model.evaluate(inputs, labels, verbose=0) < before


def test_unet_reads_only_its_context(tiny_config):
    """Pixels beyond `unet_context` of the output do not change the logits."""
    config = _unet(tiny_config)
    geometry = geometry_lib.geometry(config.model)
    model = builder.build_model(config, input_size=geometry.input_size)
    rng = np.random.default_rng(1)
    inputs = rng.random((1, geometry.input_size, geometry.input_size, config.channels.num_input_features),
                        dtype=np.float32)
    changed = inputs.copy()
    trim = geometry.border - config.model.unet_context
    changed[:, :trim] = 0.0
    changed[:, :, -trim:] = 0.0
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(model(changed)))


@pytest.mark.parametrize("fields, problem", [
    ({"unet_context": 11}, "not a multiple"),
    ({"unet_levels": 3, "unet_context": 12}, "must divide the patch phase"),
    ({"unet_context": 400}, "exceeds the patch border"),
])
def test_invalid_unet_settings_are_explained(tiny_config, fields, problem):
    with pytest.raises(ValueError, match=problem):
        builder.build_model(_unet(tiny_config, **fields))


def test_paper_sized_unet_is_small():
    from isl import presets

    config = _unet(presets.get_preset("condition_b"), unet_levels=4, unet_filters=32, unet_context=60)
    model = builder.build_model(config, input_size=250)
    assert model.output_shape == (None, 8, 8, config.channels.num_heads, 256)
    assert 7_000_000 < model.count_params() < 9_000_000
