"""Saving and loading models: `.keras` files, model directories, TF1 names."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.io.model_dir import ModelDir
from isl.model import builder
from isl.model import saving


def _inputs(size=38, seed=0):
    return np.random.default_rng(seed).random((2, size, size, 52), dtype=np.float32)


def test_keras_file_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    restored = keras.models.load_model(path)
    inputs = _inputs()
    np.testing.assert_array_equal(tiny_model(inputs, training=False), restored(inputs, training=False))


def test_model_dir_round_trip(tiny_model, tiny_config, tmp_path):
    paths = saving.save_model_dir(tiny_model, tiny_config, tmp_path / "model")
    assert json.loads(open(paths["config"]).read())["name"] == "tiny"
    restored, config = saving.load_model_dir(tmp_path / "model", input_size=42)
    assert config == tiny_config
    assert restored.input_shape == (None, 42, 42, 52)
    inputs = _inputs(42)
    np.testing.assert_allclose(tiny_model(inputs, training=False), restored(inputs, training=False), rtol=1e-6)


def test_model_dir_errors(tiny_model, tiny_config, tmp_path):
    with pytest.raises(errors.InputError, match="not found"):
        saving.load_model_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.InputError, match="model.weights.h5"):
        saving.load_model_dir(tmp_path / "empty")
    saving.save_model_dir(tiny_model, tiny_config, tmp_path / "model")
    with pytest.raises(errors.InputError, match="not valid"):
        saving.load_model_dir(tmp_path / "model", input_size=40)
    # A config that does not describe the saved weights.
    config_path = tmp_path / "model" / "config.json"
    values = json.loads(config_path.read_text())
    values["model"]["base_depth"] = 48
    config_path.write_text(json.dumps(values))
    with pytest.raises(errors.InputError, match="do not match"):
        saving.load_model_dir(tmp_path / "model")


def test_tf1_variable_names_cover_every_weight(tiny_model, tiny_config):
    names = saving.tf1_variable_names(tiny_model, tiny_config)
    assert len(names) == len(tiny_model.weights)
    assert len(set(names.values())) == len(names)
    assert names["Conv/weights"] == ("projection", 0)
    assert names["downscale_1_0/expand_rv2/BatchNorm/moving_variance"] == ("downscale_1_0_expand_rv2_bn", 3)
    assert names["upscale_1_0/expand_rv2/Conv2d_transpose/weights"] == ("upscale_1_0_expand_rv2_conv", 0)
    assert names["head/0.04/TRANSMISSION/residual_v2_conv/Conv/biases"] == ("head_0.04_TRANSMISSION_conv", 1)
    assert names["head/MAXPROJECT/DAPI_CONFOCAL/residual_v2_conv/BatchNorm/gamma"] == (
        "head_MAXPROJECT_DAPI_CONFOCAL_bn",
        0,
    )


def test_load_tf1_checkpoint(tiny_model, tiny_config, tmp_path):
    import tensorflow as tf

    names = saving.tf1_variable_names(tiny_model, tiny_config)
    rng = np.random.default_rng(3)
    variables = {}
    for tf1_name, (layer_name, index) in names.items():
        shape = tiny_model.get_layer(layer_name).weights[index].shape
        variables[tf1_name] = rng.normal(size=shape).astype(np.float32)
    prefix = str(tmp_path / "model.ckpt")
    with tf.Graph().as_default():
        graph_variables = {name: tf.compat.v1.Variable(value, name=name) for name, value in variables.items()}
        saver = tf.compat.v1.train.Saver(graph_variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, prefix)
    model = builder.build_model(presets.get_preset("tiny"))
    report = saving.load_tf1_checkpoint(model, tiny_config, prefix)
    assert report == {"restored": len(names), "missing": []}
    layer_name, index = names["upper_recursion_1/reduce_rv2/Conv/weights"]
    np.testing.assert_array_equal(
        model.get_layer(layer_name).weights[index].numpy(), variables["upper_recursion_1/reduce_rv2/Conv/weights"]
    )


def test_model_dir_weights_leave_out_the_optimizer_state(tmp_path):
    import keras
    import numpy as np

    from isl import presets
    from isl.model import builder, losses, saving

    config = presets.get_preset("tiny")
    model = builder.build_model(config, input_size=42)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.ISLLoss(config.channels))
    inputs = np.random.default_rng(0).random((2, 42, 42, 52), dtype=np.float32)
    # The optimizer's slots, as after training, without tracing a training step (about 25 s for this model).
    model.optimizer.build(model.trainable_variables)
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)
    saving.save_model_dir(model, config, tmp_path / "compiled")
    saving.save_model_dir(builder.build_model(config, input_size=42), config, tmp_path / "plain")
    sizes = [os.path.getsize(ModelDir(tmp_path / name).weights) for name in ("compiled", "plain")]
    assert abs(sizes[0] - sizes[1]) < 0.05 * sizes[1]  # No Adam slots (they would double it).
    loaded, _ = saving.load_model_dir(tmp_path / "compiled", input_size=42)
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(model(inputs)))
