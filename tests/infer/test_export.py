"""SavedModel export of the real tiny model: signatures, parity, reload without isl, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from isl.data import assemble
from isl.infer import export
from isl.infer import predict as predict_lib
from isl.io.model_dir import ModelDir
from isl.model import geometry as geometry_lib
from isl.model import statistics

STATISTICS = ("median", "mean", "std", "mode")
# predict_image's run input side: 42 + 2 * 4, several runs per axis on small images.
TILE_SIZE = 50


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_model, tiny_config):
    """(Keras model, config, export directory) of the session's tiny model with distributions."""
    model, config = tiny_model, tiny_config
    export_dir = str(tmp_path_factory.mktemp("export") / "tiny")
    export.export_keras_model(model, config, export_dir, statistics=STATISTICS, with_distributions=True,
                              tile_size=TILE_SIZE)
    return model, config, export_dir


@pytest.fixture(scope="module")
def loaded(tiny_export):
    return tf.saved_model.load(tiny_export[2])


def _random_stack(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=shape).astype(dtype)


def _expected(model, config, stack_float):
    """What isl predict computes per tile: network input -> softmax -> statistics."""
    inputs = np.stack([
        assemble.network_input(np.moveaxis(tile, -1, 0), config.channels.num_z_values) for tile in stack_float])
    logits = model(inputs, training=False)
    first_target = config.channels.num_input_heads
    probabilities = tf.nn.softmax(logits[:, :, :, first_target:], axis=-1)
    values = statistics.distribution_statistics(probabilities, STATISTICS)
    expected = {}
    for index, channel in enumerate(config.channels.output_target_channels):
        for name in STATISTICS:
            expected[f"{channel}_{name}"] = np.asarray(values[name][..., index])
        expected[f"{channel}_distribution"] = np.asarray(probabilities[..., index, :])
    return expected


def _assert_matches(actual, expected, name, tolerance=1e-5):
    """Within `tolerance`; median/mode may flip one bin only where float rounding decides.

    A median (first bin with cumulative probability >= 0.5) or a mode
    (argmax) is a step function: two float32 graphs that agree to 1e-7 can
    still pick neighbouring bins where the cumulative probability is within
    rounding of 0.5 or two bins tie. Those pixels are allowed to differ.
    """
    value, reference = np.asarray(actual[name]), expected[name]
    statistic = name.rsplit("_", 1)[1]
    if statistic not in ("median", "mode"):
        np.testing.assert_allclose(value, reference, atol=tolerance, err_msg=name)
        return
    probabilities = expected[name.rsplit("_", 1)[0] + "_distribution"]
    if statistic == "median":
        cumulative = np.cumsum(probabilities, axis=-1)
        undecided = np.any(np.abs(cumulative - 0.5) < tolerance, axis=-1)
    else:
        top_two = np.sort(probabilities, axis=-1)[..., -2:]
        undecided = top_two[..., 1] - top_two[..., 0] < tolerance
    differs = np.abs(value - reference) > tolerance
    assert not np.any(differs & ~undecided), f"{name}: {np.sum(differs & ~undecided)} pixels differ"


def test_in_graph_z_mapping_and_masks_equal_the_training_assembly(tiny_model, tiny_config):
    config = tiny_config
    functions = export.ServingFunctions(tiny_model, config)
    for num_source_z in (1, 7, 13, 26, 40):
        stack = _random_stack((6, 5, num_source_z), np.float32, seed=num_source_z) / 65535
        result = functions.network_input(tf.constant(stack[None]))[0].numpy()
        np.testing.assert_array_equal(result, assemble.network_input(np.moveaxis(stack, -1, 0), 26))


def test_signatures_names_dtypes_and_shapes(tiny_export, loaded):
    _, config, export_dir = tiny_export
    assert set(loaded.signatures) == set(export.SIGNATURES)
    for name, dtype in ((export.SERVING_DEFAULT, tf.uint16), (export.SERVING_FLOAT32, tf.float32)):
        _, inputs = loaded.signatures[name].structured_input_signature
        assert inputs["z_stack"].dtype == dtype
        assert inputs["z_stack"].shape.as_list() == [None, None, None, None]  # [batch, y, x, z]
        outputs = loaded.signatures[name].structured_outputs
        assert outputs["DAPI_CONFOCAL_median"].shape.as_list() == [None, None, None]
        assert outputs["NEURITE_CONFOCAL_distribution"].shape.as_list() == [None, None, None, 256]
        assert len(outputs) == 9 * (len(STATISTICS) + 1)
    _, logits_inputs = loaded.signatures[export.LOGITS_SIGNATURE].structured_input_signature
    assert logits_inputs["network_input"].shape.as_list() == [None, None, None, 52]
    info = json.loads(open(os.path.join(export_dir, export.EXPORT_INFO_FILE)).read())
    assert info["input_size"] == 42 and info["phase"] == 4 and info["border"] == 17
    assert os.path.exists(os.path.join(export_dir, export.KERAS_ARCHIVE))
    assert os.path.exists(ModelDir(export_dir).config)
    assert not [name for name in os.listdir(os.path.dirname(export_dir)) if name.startswith(".tmp")]


def test_outputs_match_the_keras_model_within_1e5(tiny_export, loaded):
    model, config, _ = tiny_export
    stack = _random_stack((2, 46, 50, 13))
    expected = _expected(model, config, stack.astype(np.float32) / 65535)

    from_uint16 = loaded.signatures[export.SERVING_DEFAULT](z_stack=tf.constant(stack))
    from_float = loaded.signatures[export.SERVING_FLOAT32](z_stack=tf.constant(stack.astype(np.float32) / 65535))

    assert set(from_uint16) == set(expected)
    for name, value in expected.items():
        assert from_uint16[name].shape == (2, 12, 16) + value.shape[3:]
        _assert_matches(from_uint16, expected, name)
        _assert_matches(from_float, expected, name)


@pytest.mark.parametrize("shape", [(1, 45, 46, 13), (1, 38, 42, 13), (1, 42, 42, 0)])
def test_invalid_size_or_z_count_fails_with_a_clear_message(loaded, shape):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"isl: z_stack .*(42 \+ 4k|z slices)"):
        loaded.signatures[export.SERVING_DEFAULT](z_stack=tf.zeros(shape, tf.uint16))


def test_wrong_rank_or_dtype_is_refused(loaded):
    for shape in ((42, 42, 13), (1, 1, 42, 42, 13)):
        with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError),
                           match=r"rank|shape|\[\?,\?,\?,\?\]"):
            loaded.signatures[export.SERVING_DEFAULT](z_stack=tf.zeros(shape, tf.uint16))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        loaded.signatures[export.SERVING_DEFAULT](z_stack=tf.zeros((1, 42, 42, 13), tf.float32))


def test_predict_image_equals_isl_predict_on_a_multi_tile_image(tiny_export, loaded):
    """Whole uint16 stacks of any size in, full-size statistics out: `isl predict`'s exact plan in the graph."""
    model, config, _ = tiny_export
    geometry = geometry_lib.geometry(config.model)
    signature = loaded.signatures[export.PREDICT_IMAGE]
    _, inputs = signature.structured_input_signature
    assert inputs["z_stack"].shape.as_list() == [None, None, None, None] and inputs["z_stack"].dtype == tf.uint16
    stack = _random_stack((2, 61, 75, 13), seed=5)  # Not 42 + 4k: any size works.
    outputs = signature(z_stack=tf.constant(stack))
    channels = config.channels.output_target_channels
    assert set(outputs) == {f"{channel}_{name}" for channel in channels for name in STATISTICS}
    network = predict_lib.Network.from_keras(model,
                                             [config.channels.num_input_heads + 1, config.channels.num_input_heads + 3])
    for item in range(2):
        expected = predict_lib.predict_image(
            network, np.moveaxis(stack[item], -1, 0).astype(np.float32) / np.float32(65535), geometry,
            config.channels.num_z_values, statistics=STATISTICS, tile_size=TILE_SIZE)
        assert expected.info["num_runs"] >= 9  # Several tiles.
        for index, channel in ((0, channels[1]), (1, channels[3])):
            for name in STATISTICS:
                value = outputs[f"{channel}_{name}"].numpy()[item]
                assert value.shape == (61, 75)
                np.testing.assert_allclose(value, expected.statistics[name][..., index], atol=1e-6,
                                           err_msg=f"{channel}_{name}")


_RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, input_path, output_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    outputs = loaded.signatures["serving_default"](z_stack=tf.constant(np.load(input_path)))
    np.savez(output_path, **{name: value.numpy() for name, value in outputs.items()})
    leaked = sorted(name for name in sys.modules if name == "isl" or name.startswith("isl."))
    print("ISL_MODULES", leaked)
    """
)


def test_reload_in_a_fresh_process_without_isl(tiny_export, tmp_path):
    model, config, export_dir = tiny_export
    stack = _random_stack((1, 42, 46, 26), seed=3)
    np.save(tmp_path / "input.npy", stack)
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, export_dir, str(tmp_path / "input.npy"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "ISL_MODULES []" in completed.stdout
    outputs = np.load(tmp_path / "out.npz")
    expected = _expected(model, config, stack.astype(np.float32) / 65535)
    for name in expected:
        _assert_matches(outputs, expected, name)

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(cli):
        shown = subprocess.run([cli, "show", "--dir", export_dir, "--all"], env=environment,
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr[-2000:]
        for name in export.SIGNATURES:
            assert f"signature_def['{name}']" in shown.stdout
        assert "DT_UINT16" in shown.stdout


def test_keras_archive_reloads_for_fine_tuning(tiny_export):
    import keras

    model, _, export_dir = tiny_export
    reloaded = keras.saving.load_model(os.path.join(export_dir, export.KERAS_ARCHIVE), compile=False)
    inputs = np.random.default_rng(1).random((1, 42, 42, 52)).astype(np.float32)
    np.testing.assert_allclose(reloaded(inputs, training=False), model(inputs, training=False), atol=1e-6)


def test_a_calibrated_models_signatures_divide_the_target_logits_by_their_temperatures(tiny_model, tiny_config):
    from isl.io import calibration_file

    config, model = tiny_config, tiny_model
    channels = config.channels
    target = channels.output_target_channels[1]
    calibration = calibration_file.Calibration(route="heads", channels={target: {"temperature": 4.0}}, marginal={})
    plain = export.ServingFunctions(model, config, ("mean",), with_distributions=True)
    calibrated = export.ServingFunctions(model, config, ("mean",), with_distributions=True, calibration=calibration)
    network_input = tf.constant(np.random.default_rng(0).random((1, 42, 42, channels.num_input_features)),
                                tf.float32)
    logits, tempered = (functions.logits(network_input)["logits"].numpy() for functions in (plain, calibrated))
    head = channels.num_input_heads + 1
    np.testing.assert_allclose(tempered[..., head, :], logits[..., head, :] / 4.0, rtol=1e-5, atol=1e-6)
    others = [index for index in range(channels.num_heads) if index != head]
    np.testing.assert_allclose(tempered[..., others, :], logits[..., others, :], rtol=1e-6)
    stack = tf.constant(_random_stack((1, 42, 42, 13), np.float32) / 65535)
    name = export.output_name(target, "distribution")
    wider, sharper = calibrated.outputs(stack)[name].numpy(), plain.outputs(stack)[name].numpy()
    assert (wider.max(-1) < sharper.max(-1)).all()  # T = 4 flattens every pixel's distribution.
